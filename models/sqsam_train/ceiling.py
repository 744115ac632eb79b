"""The output grid's resolution ceiling: how well the ground truth itself survives the model's output.

    python -m sqsam_train.ceiling ../shared/data/eval/Berkeley ../shared/data/eval/GrabCut [--input-size 320]

A network whose ``(s, s)`` logits (``s = S / stride``) were perfect could still not present a
mask finer than that grid. This scores such a perfect output: the ground truth is letterboxed
into the view exactly as the image is, area-averaged onto the output cells, turned into logits,
and mapped back to the image by the serving code (:func:`geometry.logits_to_image`, threshold 0,
and with :func:`edges.refine_mask`). The view is the whole image, or the zoom-in window a
converged interaction sees (:func:`geometry.zoom_window` around the object, :class:`ZoomIn`'s
rule). When this ceiling is far above 0.90, the output grid is not what keeps NoC@90 up: the
network's logits are. Reads ground truth only; no model is run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from sqsam_core import edges, geometry
from sqsam_core.contract import DEFAULT_INPUT_SIZE
from sqsam_core.evaluation import iter_dataset
from sqsam_core.predictor import ZoomIn

STRIDE = 2
LOGIT_CLIP = 1e-3  # cell probabilities kept in [1e-3, 1 - 1e-3]: logits within about +-6.9


def grid_logits(window_gt: np.ndarray, box: geometry.Letterbox, stride: int = STRIDE) -> np.ndarray:
    """``(s, s)`` float32 logits of the best output: ``(h, w)`` bool ``window_gt`` area-averaged per cell.

    ``box``: how the ``h x w`` window sits in the ``S x S`` model input (``S`` divisible by ``stride``).
    """
    model = geometry.resize_top_left(window_gt.astype(np.float32), box)  # (S, S), area-averaged when shrinking
    cells = box.size // stride
    prob = model.reshape(cells, stride, cells, stride).mean(axis=(1, 3))
    prob = np.clip(prob, LOGIT_CLIP, 1.0 - LOGIT_CLIP)
    return np.log(prob / (1.0 - prob)).astype(np.float32)


def ceiling_view(gt: np.ndarray, size: int, zoom: ZoomIn | None) -> geometry.View:
    """The view a converged interaction on ``(H, W)`` bool ``gt`` sees: zoom-in window or whole image."""
    height, width = gt.shape
    full = geometry.full_view(height, width, size)
    window = geometry.zoom_window(gt, [], None, zoom.expansion, zoom.min_side) if zoom is not None else None
    if window is None:
        return full
    view = geometry.View(height, width, size, *window)
    return view if view.letterbox.scale / full.letterbox.scale >= zoom.min_gain else full


def ceiling_iou(image: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None, size: int = DEFAULT_INPUT_SIZE,
                zoom: ZoomIn | None = ZoomIn(), refine: edges.EdgeRefine | None = None) -> float:
    """IoU of ``gt`` ((H, W) bool) after a round trip through the output grid of its view.

    ``image``: ``(H, W, 3)`` uint8 RGB (the edge-refinement guide). ``ignore``: pixels left out
    of the IoU, or None. ``refine``: apply the serving edge refinement to the round trip.
    """
    view = ceiling_view(gt, size, zoom)
    logits = geometry.logits_to_image(grid_logits(view.crop(gt), view.letterbox), view.letterbox, STRIDE)
    if refine is None:
        window_mask = logits > 0
    else:
        grey = cv2.cvtColor(np.ascontiguousarray(view.crop(image)), cv2.COLOR_RGB2GRAY)
        window_mask = edges.refine_mask(logits, grey, 1.0, refine)
    return geometry.mask_iou(view.paste(window_mask), gt, ignore)


def dataset_ceiling(dataset_dir: Path, size: int) -> dict:
    """Mean ceiling IoU over a data set's objects, whole-image and zoom-in views, plain and refined."""
    variants = {"whole": (None, None), "whole_refined": (None, edges.EdgeRefine()),
                "zoom": (ZoomIn(), None), "zoom_refined": (ZoomIn(), edges.EdgeRefine())}
    names, table = [], []
    for obj in iter_dataset(dataset_dir):
        names.append(obj.name)
        table.append([ceiling_iou(obj.image, obj.gt, obj.ignore, size, zoom, refine)
                      for zoom, refine in variants.values()])
    ious = np.array(table).reshape(-1, len(variants))
    worst = np.argsort(ious[:, 2])[:5]
    return {"dataset": Path(dataset_dir).name, "input_size": size, "objects": len(names),
            "mean_iou": dict(zip(variants, np.round(ious.mean(axis=0), 4).tolist())),
            "below_0.90": dict(zip(variants, (ious < 0.9).sum(axis=0).tolist())),
            "lowest_zoom": [[names[i], round(float(ious[i, 2]), 3)] for i in worst]}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("datasets", type=Path, nargs="+", help="folders holding images/ and masks/")
    p.add_argument("--input-size", type=int, default=DEFAULT_INPUT_SIZE, help="S (a multiple of the stride, 2)")
    args = p.parse_args(argv)
    if args.input_size % STRIDE:
        raise SystemExit(f"--input-size must be a multiple of {STRIDE}")
    for dataset in args.datasets:
        try:
            print(json.dumps(dataset_ceiling(dataset, args.input_size)), flush=True)
        except FileNotFoundError as exc:
            raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
