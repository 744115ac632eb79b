"""Compare models on the same held-out objects: paired differences in NoC@90, with a bootstrap interval.

    python -m sqsam_train.compare runs/v6/validation.jsonl runs/v16/validation.jsonl

Reads ``validate``'s JSON lines (files or ``-`` for stdin). The first line is the baseline; every
later line is compared with it object by object, so the interval says whether a change of the
mean is more than the luck of which objects happened to move (a few objects that flip between
reaching 90 % and never reaching it move the mean of 91 by 0.1-0.2 each).

Per candidate it prints the mean NoC@90 change (candidate minus baseline: negative is better),
its 95 % bootstrap interval (``scipy.stats.bootstrap``, BCa, 10,000 resamples over objects) and
how many objects got better / worse / stayed. ``--set ECSSD`` compares on one training set's
objects only (names are ``<set>/<stem>``): the model card's release rule reads the ECSSD objects,
whose pixel-traced masks are the closest to Berkeley's.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import bootstrap

PER_OBJECT = "NoC@90_per_object"


@dataclass
class Comparison:
    """A candidate against the baseline on the objects both were scored on."""

    checkpoint: str
    objects: int
    mean_change: float  # candidate NoC@90 minus baseline, clicks (negative: fewer clicks, better)
    interval: tuple[float, float]  # 95 % bootstrap interval of mean_change
    better: int
    worse: int


def read_validation_lines(paths: list[str]) -> list[dict]:
    """Every JSON line of ``validate``'s output in ``paths`` (``-``: stdin) that has per-object results."""
    lines = []
    for path in paths:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("{"):
                record = json.loads(line)
                if PER_OBJECT in record:
                    lines.append(record)
    return lines


def compare(baseline: dict, candidate: dict, seed: int = 0, only_set: str | None = None) -> Comparison:
    """Paired NoC@90 change of ``candidate`` over ``baseline`` (both ``validate`` JSON records),
    over the objects both were scored on, or only those of training set ``only_set``."""
    names = sorted(set(baseline[PER_OBJECT]) & set(candidate[PER_OBJECT]))
    if only_set is not None:
        names = [n for n in names if n.split("/", 1)[0] == only_set]
    if len(names) < 2:
        raise ValueError("fewer than two objects in common: were both scored on the same split?")
    change = np.array([candidate[PER_OBJECT][n] - baseline[PER_OBJECT][n] for n in names], float)
    interval = mean_interval(change, seed=seed)
    return Comparison(candidate.get("checkpoint", "?"), len(names), float(change.mean()), interval,
                      int((change < 0).sum()), int((change > 0).sum()))


def mean_interval(change: np.ndarray, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Bootstrap interval of the mean of paired per-object changes ``change`` (shape ``(N,)``):
    ``scipy.stats.bootstrap``, BCa, 10,000 resamples over objects; the percentile method where BCa
    is undefined (a handful of objects). No spread gives the single value as both ends."""
    change = np.asarray(change, float)
    if np.all(change == change[0]):  # every resample gives the same mean
        return float(change[0]), float(change[0])
    for method in ("BCa", "percentile"):
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ci = bootstrap((change,), np.mean, confidence_level=confidence, n_resamples=10_000, method=method,
                           random_state=np.random.default_rng(seed)).confidence_interval
        if np.isfinite(ci.low) and np.isfinite(ci.high):
            break
    return float(ci.low), float(ci.high)


def format_comparison(c: Comparison) -> str:
    """One line: the change, its interval, and the per-object tally."""
    low, high = c.interval
    verdict = "better" if high < 0 else "worse" if low > 0 else "no clear difference"
    return (f"{c.checkpoint}: NoC@90 {c.mean_change:+.2f} [{low:+.2f}, {high:+.2f}] over {c.objects} objects "
            f"({c.better} better, {c.worse} worse, {c.objects - c.better - c.worse} same): {verdict}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", help="validate's output (.jsonl or its stdout); '-' reads stdin")
    p.add_argument("--set", dest="only_set", default=None, metavar="NAME",
                   help="compare on this training set's objects only (e.g. ECSSD)")
    args = p.parse_args(argv)
    records = read_validation_lines(args.files)
    if len(records) < 2:
        raise SystemExit(f"need a baseline and a candidate with {PER_OBJECT}; found {len(records)} such line(s)")
    baseline = records[0]
    print(f"baseline {baseline.get('checkpoint', '?')}: NoC@90 {baseline['NoC@90']:.2f}")
    for candidate in records[1:]:
        try:
            print(format_comparison(compare(baseline, candidate, only_set=args.only_set)))
        except ValueError as error:
            raise SystemExit(f"{candidate.get('checkpoint', '?')}: {error}") from None


if __name__ == "__main__":
    main()
