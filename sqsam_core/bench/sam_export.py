"""Export of the SAM baselines to ONNX, run in a subprocess so torch never enters the bench process.

    python -m sqsam_core.bench.sam_export VARIANT [--cache-dir DIR]

Builds ``VARIANT`` (:data:`sqsam_core.bench.sam.VARIANTS`) with random weights (seed 0) and writes
its image encoder (1x3x1024x1024 -> embeddings) and prompt decoder to ``DIR`` (opset 17), with a
JSON stamp. ``torchvision`` / ``timm`` helpers the export never calls get inert stand-ins when
those packages are absent (:func:`stub_missing`).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import sys
import time
import types
from pathlib import Path
from typing import Sequence

from sqsam_core.bench.sam import (
    EXPORT_FORMAT,
    OPSET,
    SAM_SIZE,
    TRACE_IMAGE_SIZE,
    VARIANTS,
    default_cache_dir,
    variant_paths,
)


class _Unavailable:
    """A stand-in for a function of a missing module: fails loudly if anything calls it."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{self.name} is a stand-in registered by sqsam bench (package not installed)")


def stub_missing(spec: dict[str, dict[str, object]]) -> list[str]:
    """Register modules of ``spec`` (name -> attributes) that cannot be imported; returns them."""
    stubbed = []
    for name, attrs in spec.items():
        root = name.split(".")[0]
        if root not in stubbed and importlib.util.find_spec(root) is not None:
            continue
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            sub = ".".join(parts[:i])
            if sub not in sys.modules:
                sys.modules[sub] = types.ModuleType(sub)
                if i > 1:
                    setattr(sys.modules[".".join(parts[:i - 1])], parts[i - 1], sys.modules[sub])
        for attr, value in attrs.items():
            setattr(sys.modules[name], attr, value)
        if root not in stubbed:
            stubbed.append(root)
    return stubbed


def _torch_stubs() -> dict[str, dict[str, object]]:
    import torch

    class DropPath(torch.nn.Module):  # timm's DropPath is the identity at inference
        def __init__(self, drop_prob=None):
            super().__init__()
            self.drop_prob = drop_prob

        def forward(self, x):
            return x

    def to_2tuple(x):
        return tuple(x) if isinstance(x, (tuple, list)) else (x, x)

    return {
        "torchvision.transforms.functional": {"resize": _Unavailable("resize"),
                                              "to_pil_image": _Unavailable("to_pil_image")},
        "torchvision.ops.boxes": {"batched_nms": _Unavailable("batched_nms"), "box_area": _Unavailable("box_area")},
        "timm.models.layers": {"DropPath": DropPath, "to_2tuple": to_2tuple,
                               "trunc_normal_": torch.nn.init.trunc_normal_},
        "timm.models.registry": {"register_model": lambda fn: fn},
    }


def _build(variant: str):
    """(sam, SamOnnxModel class) with random weights (seed 0)."""
    import torch

    torch.manual_seed(0)
    if variant == "mobilesam":
        from mobile_sam import sam_model_registry
        from mobile_sam.utils.onnx import SamOnnxModel

        return sam_model_registry["vit_t"](checkpoint=None), SamOnnxModel
    from segment_anything.utils.onnx import SamOnnxModel

    if variant == "tiny":
        from segment_anything.build_sam import _build_sam

        return _build_sam(encoder_embed_dim=48, encoder_depth=2, encoder_num_heads=2,
                          encoder_global_attn_indexes=[1], checkpoint=None), SamOnnxModel
    from segment_anything import sam_model_registry

    return sam_model_registry[variant](checkpoint=None), SamOnnxModel


def _export_main(variant: str, cache_dir: Path) -> None:
    import torch

    stubbed = stub_missing(_torch_stubs())
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    start = time.perf_counter()
    sam, SamOnnxModel = _build(variant)
    sam.eval()
    paths = variant_paths(variant, cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = {k: p.with_name(p.name + ".tmp") for k, p in paths.items()}

    with torch.no_grad():
        image = torch.randn(1, 3, SAM_SIZE, SAM_SIZE)
        torch.onnx.export(sam.image_encoder, (image,), str(tmp["encoder"]), input_names=["image"],
                          output_names=["image_embeddings"], opset_version=OPSET, do_constant_folding=True,
                          dynamo=False)
        print(f"encoder exported ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)

        decoder = SamOnnxModel(sam, return_single_mask=True)
        embed_dim = sam.prompt_encoder.embed_dim
        embed_size = sam.prompt_encoder.image_embedding_size
        dummy = {
            "image_embeddings": torch.randn(1, embed_dim, *embed_size, dtype=torch.float),
            "point_coords": torch.randint(low=0, high=SAM_SIZE, size=(1, 5, 2), dtype=torch.float),
            "point_labels": torch.randint(low=0, high=4, size=(1, 5), dtype=torch.float),
            "mask_input": torch.randn(1, 1, *[4 * x for x in embed_size], dtype=torch.float),
            "has_mask_input": torch.tensor([1], dtype=torch.float),
            # SamOnnxModel crops to this size's padded extent at trace time (an int() in its
            # mask_postprocessing): trace with the bench's 1 MP 4:3 image size.
            "orig_im_size": torch.tensor(list(TRACE_IMAGE_SIZE), dtype=torch.float),
        }
        torch.onnx.export(decoder, tuple(dummy.values()), str(tmp["decoder"]), input_names=list(dummy),
                          output_names=["masks", "iou_predictions", "low_res_masks"], opset_version=OPSET,
                          do_constant_folding=True, dynamic_axes={"point_coords": {1: "num_points"},
                                                                  "point_labels": {1: "num_points"}},
                          dynamo=False)

    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    stamp = {
        "format": EXPORT_FORMAT,
        "variant": variant,
        "description": VARIANTS[variant][1],
        "parameters": int(sum(p.numel() for p in sam.parameters())),
        "encoder_parameters": int(sum(p.numel() for p in sam.image_encoder.parameters())),
        "torch": torch.__version__,
        "segment_anything": version("segment-anything"),
        "mobilesam_mirror": version("mobilesam-mirror"),
        "opset": OPSET,
        "seed": 0,
        "decoder_trace_size": list(TRACE_IMAGE_SIZE),
        "stubbed_modules": stubbed,
        "export_seconds": round(time.perf_counter() - start, 1),
    }
    tmp["stamp"].write_text(json.dumps(stamp, indent=2) + "\n")
    for key in ("encoder", "decoder", "stamp"):
        os.replace(tmp[key], paths[key])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sqsam_core.bench.sam_export",
                                     description="export a SAM variant's encoder and decoder to ONNX")
    parser.add_argument("variant", choices=sorted(VARIANTS))
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    args = parser.parse_args(argv)
    _export_main(args.variant, args.cache_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())

