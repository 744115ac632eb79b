"""Average the weights of several checkpoints of one run (stochastic weight averaging, Izmailov et al. 2018).

Checkpoints taken along a constant-learning-rate run (``train --schedule constant --save-every N``)
sit around one basin; their mean usually lies nearer its centre than any one of them. Floating
point tensors (weights and BatchNorm running statistics) are averaged; integer ones (BatchNorm's
``num_batches_tracked``) are taken from the last file. The result is a weights-only checkpoint that
``validate``, ``export`` and ``train --init`` read like any other::

    PYTHONPATH=models python -m sqsam_train.average runs/v11/step000*.ckpt --out runs/v11/average.ckpt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from sqsam_train.network import read_weights


def average_states(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of same-shaped state dicts, in float32; integer tensors from the last one."""
    if not states:
        raise ValueError("nothing to average")
    keys = states[0].keys()
    for state in states[1:]:
        if state.keys() != keys:
            raise ValueError("checkpoints hold different networks (their parameter names differ)")
    averaged = {}
    for key in keys:
        if states[-1][key].is_floating_point():
            averaged[key] = torch.stack([s[key].float() for s in states]).mean(dim=0)
        else:
            averaged[key] = states[-1][key].clone()
    return averaged


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoints", type=Path, nargs="+", help=".ckpt or weights-only .pt files of one network")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    states = [read_weights(path) for path in args.checkpoints]
    torch.save({"net": average_states(states), "averaged": [str(path) for path in args.checkpoints]}, args.out)
    print(f"averaged {len(states)} checkpoints -> {args.out}")


if __name__ == "__main__":
    main()
