"""Export a training checkpoint to an ONNX file that follows docs/model-contract.md.

    python -m sqsam_train.export runs/v1/last.ckpt models/weights/squeezesam.onnx --version squeezesam-v1

BatchNorm is folded into the convolutions (``torch.onnx`` in eval mode does it, and ONNX
Runtime fuses what remains); the contract's metadata is written; the exported model is checked
against PyTorch on real-looking inputs and the max absolute logit difference is printed; the
file's sha256 is written beside it.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np
import torch

from sqsam_core.contract import (
    CONTRACT_VERSION,
    DEFAULT_CLICK_RADIUS,
    DEFAULT_INPUT_SIZE,
    DEFAULT_MEAN,
    DEFAULT_STD,
    HYPOTHESES,
    INPUT_NAMES,
    OUTPUT_NAMES,
    ModelSpec,
)
from sqsam_train.network import SqueezeSAMNet, build_network, has_refine_stage, read_weights


class TorchBackend:
    """A PyTorch network behind the same interface as the runtime's ONNX backend."""

    def __init__(self, net: SqueezeSAMNet):
        self.net = net.eval()

    def __call__(self, inputs: dict[str, np.ndarray]):
        with torch.no_grad():
            masks, iou = self.net(*(torch.from_numpy(inputs[name]) for name in INPUT_NAMES))
        return masks.numpy(), iou.numpy()


def spec_for(net: SqueezeSAMNet, version: str, input_size: int = DEFAULT_INPUT_SIZE,
             hypotheses: tuple[str, ...] = HYPOTHESES) -> ModelSpec:
    """The metadata of an export; ``hypotheses=()`` for weights trained best-of-K (up to v22)."""
    return ModelSpec(input_size=input_size, click_radius=DEFAULT_CLICK_RADIUS, num_masks=net.num_masks,
                     stride=net.output_stride, mean=DEFAULT_MEAN, std=DEFAULT_STD,
                     contract_version=CONTRACT_VERSION, model_version=version, hypotheses=hypotheses)


def load_checkpoint(path: Path) -> SqueezeSAMNet:
    """A trained network from a ``.ckpt`` or weights-only ``.pt``, with or without a refinement stage."""
    state = read_weights(path)
    net = build_network(pretrained=None, refine=has_refine_stage(state))
    net.load_state_dict(state)  # float16 weights-only files are cast on copy
    return net.eval()


def export(net: SqueezeSAMNet, out: Path, spec: ModelSpec) -> float:
    """Write the ONNX file with metadata; return max |onnx - torch| over the logits."""
    import onnx
    import onnxruntime as ort

    size = spec.input_size
    rng = np.random.default_rng(0)
    example = {
        "image": rng.normal(size=(1, 3, size, size)).astype(np.float32),
        "clicks": np.zeros((1, 2, size, size), np.float32),
        "prev_mask": np.zeros((1, 1, size, size), np.float32),
        "box": np.zeros((1, 1, size, size), np.float32),
    }
    example["clicks"][0, 0, size // 2 - 5 : size // 2 + 5, size // 2 - 5 : size // 2 + 5] = 1
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.onnx")
    torch.onnx.export(net.eval(), tuple(torch.from_numpy(example[n]) for n in INPUT_NAMES), str(tmp),
                      input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES), opset_version=17,
                      dynamo=False, do_constant_folding=True)
    model = onnx.load(str(tmp))
    for key, value in spec.to_metadata().items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name = "sqsam"
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    tmp.unlink()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    onnx_masks, onnx_iou = session.run(list(OUTPUT_NAMES), example)
    torch_masks, torch_iou = TorchBackend(net)(example)
    diff = float(max(np.abs(onnx_masks - torch_masks).max(), np.abs(onnx_iou - torch_iou).max()))
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    out.with_suffix(".sha256").write_text(f"{digest}  {out.name}\n")
    return diff


def save_weights_only(net: SqueezeSAMNet, path: Path) -> None:
    """A float16 ``{"net": state_dict}`` file (half the size; ``train --init`` continues from it)."""
    state = {k: v.half() if v.is_floating_point() else v for k, v in net.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"net": state}, path)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--version", default="squeezesam-v22", help="model_version written into the metadata")
    p.add_argument("--input-size", type=int, default=DEFAULT_INPUT_SIZE)
    p.add_argument("--best-of-k", action="store_true",
                   help="weights trained best-of-K (squeezesam-v22 and earlier): declare no hypothesis meanings")
    p.add_argument("--weights-out", type=Path, default=None,
                   help="also write a float16 weights-only checkpoint here (to commit, for continued training)")
    args = p.parse_args(argv)
    net = load_checkpoint(args.checkpoint)
    if args.weights_out:
        save_weights_only(net, args.weights_out)
        print(f"wrote {args.weights_out} ({args.weights_out.stat().st_size / 1e6:.1f} MB, float16)")
    diff = export(net, args.out, spec_for(net, args.version, args.input_size, () if args.best_of_k else HYPOTHESES))
    size_mb = args.out.stat().st_size / 1e6
    params = sum(p.numel() for p in net.parameters()) / 1e6
    print(f"wrote {args.out} ({size_mb:.1f} MB, {params:.2f} M parameters); max |onnx - torch| = {diff:.2e}")


if __name__ == "__main__":
    main()
