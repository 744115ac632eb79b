"""``sqsam finetune``: the command's options and handler, importable without PyTorch.

The training itself is :mod:`sqsam_train.finetune` (PyTorch, the ``train`` extra), imported only
when the command runs; without it the command fails with one line naming the extra to install.
"""

from __future__ import annotations

from sqsam_train.finetune_options import add_arguments

TRAIN_EXTRA_HINT = 'fine-tuning needs the training extra: pip install "sqsam[train]"'


def cmd_finetune(args) -> int:
    from sqsam_core.errors import SqsamError

    try:
        import torch  # noqa: F401

        from sqsam_train import finetune
    except ImportError as exc:
        raise SqsamError(f"{TRAIN_EXTRA_HINT} ({exc})") from None
    return finetune.finetune(args)


def register_commands(subparsers) -> None:
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune the model on a project's own masks (CPU; needs the train extra)",
        description="Fine-tune the shipped model on a project's annotations (COCO JSON, Label Studio JSON export "
                    "or images/ + masks/), score base and candidate on a held-out part with sqsam eval's clicks, "
                    "and write the ONNX model unless it is clearly worse. Exit codes: 0 written, 3 worse than the base "
                    "(not written), 2 bad input, 130 interrupted (resume with the same command).",
    )
    add_arguments(p)
    p.set_defaults(func=cmd_finetune)
