"""``sqsam finetune``'s options and recipe, importable without PyTorch: the command
(:mod:`sqsam_train.finetune_cli`) and the training (:mod:`sqsam_train.finetune`) both read them.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from sqsam_core.argtypes import positive_int


@dataclass
class Recipe:
    """Fine-tuning hyper-parameters (chosen on CamVid-cars' held-out part of train/; docs/finetune.md)."""

    lr: float = 6e-4
    backbone_lr_scale: float = 0.3
    warmup: int = 10
    batch: int = 8
    crop: int = 192  # training window side, model pixels (a 480 x 360 frame is 320 x 240 of them)
    project_share: float = 0.75  # of samples drawn from the project when --data mixes general sets in
    salient_share: float = 0.05  # zero-prompt samples (only with --data: they need ECSSD / Human)
    corrupt_share: float = 0.4  # damaged previous masks, as v22 was trained
    amp: bool = False


#: Fine-tunes averaged in weight space (``--members``).
DEFAULT_MEMBERS = 2
#: Weight-space mixes with the base tried after training (``--mix``), each scored on the held-out images.
DEFAULT_MIXES = (0.5, 1.0)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _mixes(text: str) -> tuple[float, ...]:
    message = f"expected numbers in (0, 1] separated by commas, got {text!r}"
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(message) from None
    if not values or any(not 0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(message)
    return tuple(sorted(set(values)))


def _share(text: str) -> float:
    value = _positive_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a share between 0 and 1, got {text!r}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="SOURCE",
                   help="COCO instances JSON, Label Studio JSON export, or a folder with images/ + masks/")
    p.add_argument("--images", default=None, metavar="DIR",
                   help="where a JSON's image files are (default: beside it, or in images/ beside it)")
    p.add_argument("--out", default=None, metavar="OUT.onnx",
                   help="the model to write (default ./<model_version>.onnx)")
    p.add_argument("--run-dir", default=None, metavar="DIR",
                   help="checkpoints, log and report; the same command with the same folder resumes "
                        "(default ./sqsam-finetune/<id>)")
    p.add_argument("--minutes", type=_positive_float, default=10.0,
                   help="training wall clock, minutes (default 10; scoring and export add 1-3)")
    p.add_argument("--steps", type=positive_int, default=None, help="train this many steps instead of --minutes")
    p.add_argument("--members", type=positive_int, default=DEFAULT_MEMBERS,
                   help="fine-tune this many times from the base with seeds SEED, SEED+1, ..., each on an "
                        "equal share of the budget, and average their weights before mixing with the base "
                        f"(default {DEFAULT_MEMBERS})")
    p.add_argument("--threads", type=positive_int, default=2, help="CPU threads for training and scoring (default 2)")
    p.add_argument("--data", default=None, metavar="ROOT",
                   help="mix in the general training sets of ROOT/train (e.g. ../shared/data) to limit "
                        "forgetting")
    p.add_argument("--holdout", type=_share, default=0.2, help="share of the images held out for scoring (default 0.2)")
    p.add_argument("--force", action="store_true",
                   help="write the model even when it is clearly worse than the base on the held-out images")
    p.add_argument("--mix", type=_mixes, default=DEFAULT_MIXES, metavar="M[,M...]",
                   help="weights tried, base + M x (fine-tuned - base), each scored on the held-out images; "
                        "the largest one the held-out images accept is the candidate, unless a smaller one "
                        f"needs clearly fewer clicks (default {','.join(f'{m:g}' for m in DEFAULT_MIXES)})")
    p.add_argument("--version", default=None, help="model_version to write (default <base version>+ft.<id>)")
    p.add_argument("--base-model", default=None, metavar="ONNX",
                   help="the model to beat on the held-out images (default: the bundled model)")
    p.add_argument("--base-weights", default=None, metavar="PT",
                   help="PyTorch weights to start from (default: the shipped model's, $SQSAM_BASE_WEIGHTS)")
    p.add_argument("--max-clicks", type=positive_int, default=20, help="clicks per held-out object (default 20)")
    p.add_argument("--lr", type=_positive_float, default=Recipe.lr, help=f"peak learning rate (default {Recipe.lr})")
    p.add_argument("--batch", type=positive_int, default=Recipe.batch)
    p.add_argument("--crop", type=positive_int, default=Recipe.crop, help="training window side, model pixels")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast (CPUs with AVX512-BF16 or AMX)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ckpt-minutes", type=_positive_float, default=2.0, help="checkpoint every this many minutes")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--nice", type=int, default=0,
                   help="lower this process's CPU priority by N (training beside serving)")
    p.add_argument("--json", default=None, metavar="OUT.json", help="also write the report here")
