"""Plot a run's learning curve (training loss and batch IoU against step) from RUN_DIR/log.jsonl.

    python -m sqsam_train.curve runs/v1 runs/v1/training-curve.png [--validation val.jsonl]

``--validation`` takes the JSON lines ``sqsam_train.validate`` prints (one per checkpoint) and
adds held-out NoC@90 / mIoU@1 points.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--validation", type=Path, default=None)
    args = p.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in (args.run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    axes[0].plot(steps, [r["loss"] for r in rows], lw=1)
    axes[0].set(xlabel="step (batch 8)", ylabel="training loss (EMA)", title="loss")
    axes[1].plot(steps, [r["iou"] for r in rows], lw=1, label="train batch IoU (EMA)")
    if args.validation and args.validation.exists():
        points = [json.loads(line) for line in args.validation.read_text().splitlines() if line.startswith("{")]
        vsteps = [int(re.search(r"(\d+)", Path(v["checkpoint"]).stem).group(1)) for v in points]
        axes[1].plot(vsteps, [v["mIoU@1"] for v in points], "o-", label="held-out mIoU@1")
    axes[1].set(xlabel="step (batch 8)", ylabel="IoU", title="IoU", ylim=(0, 1))
    axes[1].legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
