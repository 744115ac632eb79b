"""Check that the running venv holds exactly the versions a constraints file pins.

    .venv/bin/python .ci/check_pins.py requirements/dev.txt

Exit 1 with one line per mismatch: a distribution missing from the constraints (a dependency
added without `make constraints`) or installed at another version than pinned.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata

IGNORED = {"pip", "setuptools", "wheel", "sqsam"}  # the installer itself, and the project under test


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: str) -> dict[str, str]:
    out = {}
    for line in open(path, encoding="utf-8"):
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            out[canonical(name.split("[")[0])] = version.split(";")[0].strip()
    return out


def main(path: str) -> int:
    pinned = pins(path)
    problems = []
    for dist in metadata.distributions():
        name = canonical(dist.metadata["Name"])
        if name in IGNORED:
            continue
        if name not in pinned:
            problems.append(f"{name} {dist.version} is installed but not pinned in {path}")
        elif dist.version != pinned[name]:
            problems.append(f"{name} {dist.version} is installed, {path} pins {pinned[name]}")
    for line in problems:
        print(line)
    print(f"{path}: {len(pinned)} pins, {len(problems)} mismatches")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
