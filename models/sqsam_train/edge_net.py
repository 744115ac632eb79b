"""The learned edge refiner: collect its training patches, train it, export it to ONNX.

The SqueezeSAM network's logits come out at stride 2 of its view and are upsampled bilinearly,
so the mask's boundary is smooth and often sits a pixel or two off the object's edge. On the
held-out split, fixing only the pixels within 1 px of the presented mask's boundary (with the
ground truth, an oracle) takes NoC@90 from 5.26 to 3.79: the last per cent are boundary pixels.
This small full-resolution network (:func:`build_edge_net`) sees the image and the upsampled
logits and corrects the logits in that band (``sqsam_train.learned_edges.LearnedEdgeRefine`` runs it).
An experiment, not adopted: it helps ECSSD's NoC@90 (2.75 -> 2.61) but not the whole split's
(models/EXPERIMENTS.md, *Learned edge refiner*); no weights are shipped.

    python -m sqsam_train.edge_net collect ../shared/data runs/edge/patches-0.npz --shard 0/2
    python -m sqsam_train.edge_net train runs/edge/patches-*.npz --out runs/edge/edge_net.pt
    python -m sqsam_train.edge_net export runs/edge/edge_net.pt runs/edge/edge_net.onnx

Patches are cut from exactly what serving computes: the shipped SqueezeSAM (ONNX), the RITM
click loop on training objects (never the held-out split, never ``eval/``), the zoom-in view,
its window logits in image pixels. Patch arrays are ``(N, P, P)`` planes (RGB ``(N, P, P, 3)``),
row = y, column = x, in the window's image pixels.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np

from sqsam_core import geometry
from sqsam_core.evaluation import EvalObject, evaluate_object
from sqsam_core.predictor import OnnxBackend, SqueezeSAM, default_model_path
from sqsam_train import learned_edges
from sqsam_train.data import load_training_data

PATCH = 48  # training patch side, image pixels; the loss is taken on its centre (see MARGIN)
MARGIN = learned_edges.EDGE_NET_REACH  # the network's reach: the centre's values do not see the padding
CLICKS = 10  # click states collected per object (the RITM loop's first clicks)
PATCHES_PER_STATE = 4
COLLECT_SETS = ("ECSSD", "Human", "COCO_MVal")  # COCO128's small polygon objects add little boundary


# ---------------------------------------------------------------------------------------------
# Collection
# ---------------------------------------------------------------------------------------------


class _Recorder(SqueezeSAM):
    """SqueezeSAM that keeps band patches of every pass with clicks (serving's own window logits)."""

    def __init__(self, *args, rng: np.random.Generator, **kwargs):
        super().__init__(*args, **kwargs)
        self.rng = rng
        self.gt: np.ndarray | None = None
        self.patches: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def _presented_mask(self, prepared, view, logits, refine):
        if refine and prepared.source_scale == 1.0 and self.gt is not None:
            window_logits = geometry.logits_to_image(logits, view.letterbox, self.spec.stride)
            self.patches += cut_band_patches(view.crop(prepared.source), window_logits, view.crop(self.gt),
                                             self.rng, PATCHES_PER_STATE)
        return super()._presented_mask(prepared, view, logits, refine)


def cut_band_patches(rgb: np.ndarray, logits: np.ndarray, gt: np.ndarray, rng: np.random.Generator,
                     count: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Up to ``count`` ``PATCH x PATCH`` patches centred on random band pixels of one window.

    ``rgb``: ``(h, w, 3)`` uint8; ``logits``: ``(h, w)`` float32; ``gt``: ``(h, w)`` bool.
    Returns ``(rgb uint8 (P, P, 3), logits float16 (P, P), gt bool (P, P))`` tuples.
    """
    height, width = logits.shape
    if height < PATCH or width < PATCH:
        return []
    band = learned_edges.boundary_band(logits)
    rows, cols = np.nonzero(band)
    if rows.size == 0:
        return []
    out = []
    for i in rng.choice(rows.size, size=min(count, rows.size), replace=False):
        top = int(np.clip(rows[i] - PATCH // 2, 0, height - PATCH))
        left = int(np.clip(cols[i] - PATCH // 2, 0, width - PATCH))
        window = (slice(top, top + PATCH), slice(left, left + PATCH))
        out.append((rgb[window].copy(), logits[window].astype(np.float16), gt[window].copy()))
    return out


def collect_patches(objects: list[EvalObject], model_path: Path, seed: int) -> dict[str, np.ndarray]:
    """Run the click loop (``CLICKS`` clicks) on each object; its band patches as arrays.

    Returns ``rgb`` ``(N, P, P, 3)`` uint8, ``logits`` ``(N, P, P)`` float16, ``gt`` ``(N, P, P)``
    bool and ``source`` ``(N,)``: the object's name.
    """
    backend = OnnxBackend(model_path, 1)
    model = _Recorder(backend=backend, spec=backend.spec, rng=np.random.default_rng(seed))
    sources = []
    start = time.time()
    for number, obj in enumerate(objects):
        before = len(model.patches)
        model.gt = obj.gt
        evaluate_object(model, obj, CLICKS, zero_click=False)
        sources += [obj.name] * (len(model.patches) - before)
        if number % 100 == 0:
            print(json.dumps({"objects": number, "of": len(objects), "patches": len(model.patches),
                              "s": round(time.time() - start)}), flush=True)
    rgb, logits, gt = (np.stack(column) for column in zip(*model.patches))
    return {"rgb": rgb, "logits": logits, "gt": gt, "source": np.array(sources)}


def collect(data_root: Path, out: Path, shard: tuple[int, int], cache: Path | None, seed: int) -> int:
    """:func:`collect_patches` over this shard of the training objects (first mask of each entry) -> ``out`` (npz)."""
    sets = load_training_data(data_root, cache=cache)
    index, count = shard
    objects = [EvalObject(entry.name, entry.image, entry.masks[0], None)
               for name in COLLECT_SETS for entry in sets[name][0] if entry.masks]
    patches = collect_patches(objects[index::count], default_model_path(), seed + index)
    np.savez_compressed(out, **patches)
    return len(patches["source"])


# ---------------------------------------------------------------------------------------------
# Network and training (torch imported lazily: collection and serving never need it)
# ---------------------------------------------------------------------------------------------


def build_edge_net(width: int = learned_edges.EDGE_NET_WIDTH):
    """:class:`EdgeNet`: ``(N, 4, h, w)`` [RGB in [-1, 1], logit / 8] -> ``(N, 1, h, w)`` logit change.

    Four 3x3 convolutions with dilations 1, 2, 4, 1 (reach ``EDGE_NET_REACH`` = 8 px), ReLU,
    then a 1x1 to one channel, zero-initialised so an untrained net changes nothing.
    """
    import torch
    from torch import nn

    class EdgeNet(nn.Module):
        def __init__(self):
            super().__init__()
            layers, channels = [], 4
            for dilation in learned_edges.EDGE_NET_DILATIONS:
                layers += [nn.Conv2d(channels, width, 3, padding=dilation, dilation=dilation), nn.ReLU(inplace=True)]
                channels = width
            self.body = nn.Sequential(*layers)
            self.head = nn.Conv2d(width, 1, 1)
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.body(x))

    return EdgeNet()


def load_patches(paths: list[Path], sets: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Concatenate collected npz files, keeping patches of the given training sets."""
    parts = [np.load(path) for path in paths]
    merged = {key: np.concatenate([part[key] for part in parts]) for key in ("rgb", "logits", "gt", "source")}
    keep = np.array([name.split("/")[0] in sets for name in merged["source"]])
    return {key: value[keep] for key, value in merged.items()}


def train(paths: list[Path], out: Path, steps: int, batch: int, lr: float, sets: tuple[str, ...],
          seed: int, threads: int, width: int = learned_edges.EDGE_NET_WIDTH) -> None:
    """Train on the band pixels of the patches' centres; BCE of ``logit + change`` against gt."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    data = load_patches(paths, sets)
    total = len(data["gt"])
    stems = np.array([hashlib.sha1(name.encode()).digest()[1] for name in data["source"]])
    holdout = stems < 13  # ~5 % of objects (by name) to watch for overfitting
    train_index, check_index = np.nonzero(~holdout)[0], np.nonzero(holdout)[0]
    print(json.dumps({"patches": total, "train": len(train_index), "check": len(check_index)}), flush=True)
    net = build_edge_net(width)
    optimiser = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps, pct_start=0.05)

    def batch_tensors(index: np.ndarray):
        raw_logits = data["logits"][index]
        inputs = torch.from_numpy(learned_edges.edge_net_input(data["rgb"][index], raw_logits))
        logits = torch.from_numpy(raw_logits.astype(np.float32))[:, None]
        gt = torch.from_numpy(data["gt"][index])[:, None].float()
        flip = torch.from_numpy(rng.random(len(index)) < 0.5)
        inputs[flip], logits[flip], gt[flip] = inputs[flip].flip(-1), logits[flip].flip(-1), gt[flip].flip(-1)
        bands = [learned_edges.boundary_band(plane) for plane in logits[:, 0].numpy()]
        band = torch.from_numpy(np.stack(bands))[:, None]
        inner = torch.zeros_like(band)
        inner[..., MARGIN:-MARGIN, MARGIN:-MARGIN] = True
        return inputs, logits, gt, band & inner

    def losses(index: np.ndarray) -> tuple[torch.Tensor, float, float]:
        inputs, logits, gt, weight = batch_tensors(index)
        refined = logits + net(inputs)
        per_pixel = F.binary_cross_entropy_with_logits(refined, gt, reduction="none")
        loss = (per_pixel * weight).sum() / weight.sum().clamp(min=1)
        wrong_before = (((logits > 0).float() != gt) & weight).sum().item()
        wrong_after = (((refined > 0).float() != gt) & weight).sum().item()
        return loss, wrong_before, wrong_after

    start = time.time()
    for step in range(1, steps + 1):
        loss, _, _ = losses(rng.choice(train_index, batch))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % 200 == 0 or step == steps:
            with torch.no_grad():
                net.eval()
                check = [losses(check_index[i : i + 256]) for i in range(0, len(check_index), 256)]
                net.train()
            before, after = sum(c[1] for c in check), sum(c[2] for c in check)
            print(json.dumps({"step": step, "loss": round(loss.item(), 4),
                              "check_loss": round(float(np.mean([c[0].item() for c in check])), 4),
                              "check_band_errors_before": int(before), "after": int(after),
                              "s": round(time.time() - start)}), flush=True)
    torch.save({"state": net.state_dict(), "width": width, "sets": sets, "steps": steps}, out)


def export(checkpoint: Path, out: Path) -> float:
    """Write the ONNX file (opset 17, dynamic batch and size) and its sha256; returns max |torch - onnx|."""
    import onnxruntime as ort
    import torch

    state = torch.load(checkpoint, map_location="cpu")
    net = build_edge_net(state["width"]).eval()
    net.load_state_dict(state["state"])
    sample = torch.randn(3, 4, 64, 80)
    torch.onnx.export(net, (sample,), str(out), input_names=["patches"], output_names=["logit_change"],
                      opset_version=17, dynamic_axes={"patches": {0: "n", 2: "h", 3: "w"},
                                                      "logit_change": {0: "n", 2: "h", 3: "w"}}, dynamo=False)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = net(sample).numpy()
    got = session.run(None, {"patches": sample.numpy()})[0]
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    out.with_name(out.name + ".sha256").write_text(f"{digest}  {out.name}\n")
    return float(np.abs(expected - got).max())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("collect", help="cut band patches from the click loop on training objects")
    p.add_argument("data", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--shard", default="0/1", help="i/n: this process's share of the objects")
    p.add_argument("--data-cache", type=Path, default=None)
    p.add_argument("--seed", type=int, default=0)
    p = commands.add_parser("train", help="train EdgeNet on collected patches")
    p.add_argument("patches", type=Path, nargs="+")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--sets", default="ECSSD,Human", help="training sets whose patches to learn from")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--width", type=int, default=learned_edges.EDGE_NET_WIDTH, help="channels of its convolutions")
    p = commands.add_parser("export", help="export a trained EdgeNet to ONNX")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    if args.command == "collect":
        index, count = (int(v) for v in args.shard.split("/"))
        print(json.dumps({"patches": collect(args.data, args.out, (index, count), args.data_cache, args.seed)}))
    elif args.command == "train":
        train(args.patches, args.out, args.steps, args.batch, args.lr, tuple(args.sets.split(",")), args.seed,
              args.threads, args.width)
    else:
        print(json.dumps({"max_abs_diff": export(args.checkpoint, args.out)}))


if __name__ == "__main__":
    main()
