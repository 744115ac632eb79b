"""Where sqsam finds things that are configured, not shipped: the data sets.

The data root (``train/``, ``eval/<NAME>/``, ... as laid out in the data's README) is
``$SQSAM_DATA`` when set, else ``../shared/data`` relative to the current directory, which is
the repository's sibling folder when commands run from the repository root (as ``make`` runs
them). Every ``--data`` option defaults to it and the tests skip what needs data when it is
absent.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "SQSAM_DATA"
DEFAULT_DATA = Path("..") / "shared" / "data"
#: For help texts: where the data root comes from.
DATA_HELP = f"${DATA_ENV}, else {DEFAULT_DATA.as_posix()}"


def data_root(base: str | os.PathLike | None = None) -> Path:
    """``$SQSAM_DATA``, else ``../shared/data`` resolved against ``base`` (default: the current directory)."""
    configured = os.environ.get(DATA_ENV)
    if configured:
        return Path(configured).expanduser()
    return DEFAULT_DATA if base is None else Path(base) / DEFAULT_DATA
