"""Multiply-accumulates of one forward pass of an ONNX model, counted from tensor shapes."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

MAC_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm", "Einsum")
UNCOUNTED_HEAVY_OPS = ("Attention", "MultiHeadAttention", "FusedMatMul", "QLinearConv", "QLinearMatMul",
                       "ConvInteger", "MatMulInteger", "Loop", "Scan", "If")


def _mac_tensors(node) -> list[str]:
    """The tensors whose shapes give a MAC-op node's cost."""
    op = node.op_type
    if op == "Conv":
        return [node.output[0], node.input[1]]
    if op == "ConvTranspose":
        return [node.input[0], node.input[1]]
    if op in ("MatMul", "Gemm"):
        return [node.input[0], node.output[0]]
    return list(node.input)  # Einsum


def _node_macs(node, shapes: dict) -> int | None:
    def known(shape):
        return shape is not None and all(isinstance(v, int) and v > 0 for v in shape)

    op = node.op_type
    names = _mac_tensors(node)
    got = [shapes.get(n) for n in names]
    if not all(known(g) for g in got):
        return None
    prod = lambda values: int(np.prod(values, dtype=np.int64))  # noqa: E731
    if op == "Conv":  # prod(output) * Cin/groups * kH * kW
        return prod(got[0]) * prod(got[1][1:])
    if op == "ConvTranspose":  # prod(input) * Cout/groups * kH * kW
        return prod(got[0]) * prod(got[1][1:])
    if op == "MatMul":  # prod(output) * K
        return prod(got[1]) * int(got[0][-1])
    if op == "Gemm":
        trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
        return prod(got[1]) * int(got[0][0] if trans_a else got[0][1]) if len(got[0]) == 2 else None
    # Einsum without ellipsis: one multiply-add per point of the product space of all indices
    equation = next((attr.s.decode() for attr in node.attribute if attr.name == "equation"), "")
    lhs = equation.replace(" ", "").split("->")[0].split(",")
    if "." in equation or len(lhs) != len(got):
        return None
    sizes: dict[str, int] = {}
    for letters, shape in zip(lhs, got):
        if len(letters) != len(shape):
            return None
        for letter, size in zip(letters, shape):
            sizes[letter] = max(sizes.get(letter, 1), int(size))
    return prod(list(sizes.values())) if len(lhs) > 1 else 0


def _runtime_shapes(model, names: Sequence[str], feeds: dict) -> dict[str, list[int]]:
    """Shapes of ``names`` from one ONNX Runtime run with ``Shape`` nodes appended as outputs."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.value_info[:]
    outputs = []
    for i, name in enumerate(names):
        out = f"__sqsam_shape_{i}"
        probe.graph.node.append(helper.make_node("Shape", [name], [out]))
        probe.graph.output.append(helper.make_tensor_value_info(out, TensorProto.INT64, None))
        outputs.append(out)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    values = session.run(outputs, {k: v for k, v in feeds.items() if k in {i.name for i in session.get_inputs()}})
    return {name: [int(v) for v in value] for name, value in zip(names, values)}


def count_macs(model_or_path, input_shapes: dict[str, Sequence[int]] | None = None,
               feeds: dict[str, np.ndarray] | None = None) -> dict:
    """Multiply-accumulates of one forward pass, from tensor shapes.

    Shapes come from ``onnx.shape_inference`` (``input_shapes`` fixes dynamic inputs); where it
    cannot resolve them (reshapes computed at run time, as in SAM's window attention) and
    ``feeds`` are given, from one ONNX Runtime run that outputs ``Shape`` of those tensors.
    Conv: ``prod(output) * Cin/groups * kH * kW``; ConvTranspose: ``prod(input) * Cout/groups *
    kH * kW``; MatMul: ``prod(output) * K``; Gemm: ``M * N * K``; Einsum: the product of all
    index sizes. Elementwise, normalisation, softmax, resize and pooling ops are not counted.
    """
    import onnx
    from onnx import shape_inference

    if isinstance(model_or_path, (str, os.PathLike)):
        model = onnx.load(str(model_or_path), load_external_data=False)
    else:
        model = onnx.ModelProto()
        model.CopyFrom(model_or_path)
    for inp in model.graph.input:
        shape = input_shapes.get(inp.name) if input_shapes else None
        if shape is None and feeds is not None and inp.name in feeds:
            shape = feeds[inp.name].shape
        if shape is not None:
            for dim, value in zip(inp.type.tensor_type.shape.dim, shape):
                dim.Clear()
                dim.dim_value = int(value)
    inferred = shape_inference.infer_shapes(model, data_prop=True)
    g = inferred.graph

    shapes: dict[str, list[int | None]] = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    for init in g.initializer:
        shapes[init.name] = list(init.dims)
    for node in g.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    shapes[node.output[0]] = list(attr.t.dims)

    mac_nodes = [n for n in g.node if n.op_type in MAC_OPS]
    resolved_at_runtime = 0
    missing = sorted({t for n in mac_nodes if _node_macs(n, shapes) is None for t in _mac_tensors(n)
                      if t and not (shapes.get(t) and all(isinstance(v, int) and v > 0 for v in shapes[t]))})
    if missing and feeds is not None:
        shapes.update(_runtime_shapes(model, missing, feeds))
        resolved_at_runtime = len(missing)

    by_op: dict[str, int] = {}
    unresolved: list[str] = []
    for node in mac_nodes:
        try:
            macs = _node_macs(node, shapes)
        except (IndexError, TypeError, ValueError):
            macs = None
        if macs is None:
            unresolved.append(node.name or node.op_type)
            continue
        by_op[node.op_type] = by_op.get(node.op_type, 0) + macs
    uncounted: dict[str, int] = {}
    for node in g.node:
        if node.op_type in UNCOUNTED_HEAVY_OPS:
            uncounted[node.op_type] = uncounted.get(node.op_type, 0) + 1
    total = sum(by_op.values())
    return {
        "method": "MACs of Conv/ConvTranspose/MatMul/Gemm/Einsum from tensor shapes (onnx.shape_inference, "
                  "unresolved shapes from one onnxruntime run); FLOPs = 2 x MACs; elementwise, normalisation, "
                  "softmax, resize and pooling not counted",
        "macs": total,
        "gflops": round(2 * total / 1e9, 4),
        "by_op_gmacs": {k: round(v / 1e9, 4) for k, v in sorted(by_op.items())},
        "shapes_resolved_at_runtime": resolved_at_runtime,
        "unresolved": unresolved[:20],
        "unresolved_count": len(unresolved),
        "uncounted_ops": uncounted,
    }

