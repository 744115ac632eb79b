"""Append-only result shards of ``sqsam annotate``, and resume.

Layout of the parts folder (``OUT.parts/``, or ``OUT/.parts/`` for ``--format png``)::

    manifest.json        {"fingerprint": sha256 of the jobs, settings and model version}
    shard-0000.jsonl     one record per line (see sqsam_core.annotate.work), in arrival order
    shard-0001.jsonl     the next run's (each run appends to a shard of its own)

A record is appended and flushed as soon as its image is done, so a killed run keeps every
image it finished; a line cut short by the kill has no newline (or is not JSON) and is ignored.
Resuming skips the images whose record is there (an image that failed as a whole is tried again;
the newest record of an index wins). The final output is streamed from the shards in ``index``
order: only the byte offsets of the records and a few small fields per image are held in memory,
never the masks.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from sqsam_core.annotate.inputs import InputError

MANIFEST = "manifest.json"


def fingerprint(jobs, settings, model_version: str) -> str:
    """sha256 of what decides the output: every job, the settings and the model version."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"settings": settings.describe(), "model_version": model_version},
                             sort_keys=True, default=str).encode())
    for job in jobs:
        digest.update(json.dumps(job.describe(), sort_keys=True, default=str).encode())
    return digest.hexdigest()


@dataclass
class Entry:
    """Where one image's newest record lies, and the small fields the summary and writers need."""

    shard: int
    offset: int
    length: int
    key: str
    width: int | None = None
    height: int | None = None
    failed: str | None = None
    failures: list = field(default_factory=list)
    objects: int = 0
    model_version: str | None = None


class ShardStore:
    """The parts folder of one output. ``resume``: continue the run it holds (its fingerprint
    must match); without it, an existing parts folder is an error (nothing is silently lost)."""

    def __init__(self, folder: str | os.PathLike, fingerprint: str, resume: bool):
        self.folder = Path(folder)
        self.entries: dict[int, Entry] = {}
        manifest = self.folder / MANIFEST
        if manifest.is_file():
            if not resume:
                raise InputError(f"{self.folder} holds an unfinished run: add --resume to continue it, "
                                 f"or remove the folder to start over")
            try:
                stored = json.loads(manifest.read_text()).get("fingerprint")
            except (OSError, ValueError, AttributeError):
                stored = None
            if stored != fingerprint:
                raise InputError(f"{self.folder} belongs to a run with other inputs, options or model; "
                                 f"remove it to start over, or rerun with the same arguments")
            self._scan()
        else:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                _write_atomic(manifest, json.dumps({"fingerprint": fingerprint}).encode())
            except OSError as exc:
                raise InputError(f"cannot create {self.folder}: {exc.strerror or exc}") from None
        numbers = [int(p.stem.split("-")[1]) for p in self.folder.glob("shard-*.jsonl")]
        self.shard_number = max(numbers, default=-1) + 1
        self._path = self.folder / f"shard-{self.shard_number:04d}.jsonl"
        self._file = open(self._path, "ab")
        self._offset = self._file.tell()

    def _scan(self) -> None:
        for path in sorted(self.folder.glob("shard-*.jsonl"), key=lambda p: int(p.stem.split("-")[1])):
            number = int(path.stem.split("-")[1])
            offset = 0
            with open(path, "rb") as fp:
                for line in fp:
                    if line.endswith(b"\n"):
                        try:
                            self._index(json.loads(line), number, offset, len(line))
                        except (ValueError, KeyError, TypeError):
                            pass  # a damaged line: its image is done again
                    offset += len(line)

    def _index(self, record: dict, shard: int, offset: int, length: int) -> None:
        self.entries[int(record["index"])] = Entry(
            shard, offset, length, record["key"], record.get("width"), record.get("height"),
            record.get("failed"), list(record.get("failures") or []), len(record.get("objects") or []),
            record.get("model_version"))

    def done(self) -> set[int]:
        """Indices whose image is finished (failed images are tried again)."""
        return {i for i, e in self.entries.items() if e.failed is None}

    def append(self, record: dict) -> None:
        """Append one record and flush it to the operating system (survives a kill of this process)."""
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        self._file.write(line)
        self._file.flush()
        self._index(record, self.shard_number, self._offset, len(line))
        self._offset += len(line)

    def close(self) -> None:
        if self._file is not None and not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()

    def records(self, indices) -> Iterator[dict]:
        """The newest record of each index in ``indices``, in that order, read one at a time."""
        handles: dict[int, object] = {}
        try:
            for index in indices:
                entry = self.entries[index]
                fp = handles.get(entry.shard)
                if fp is None:
                    fp = handles[entry.shard] = open(self.folder / f"shard-{entry.shard:04d}.jsonl", "rb")
                fp.seek(entry.offset)
                yield json.loads(fp.read(entry.length))
        finally:
            for fp in handles.values():
                fp.close()

    def remove(self) -> None:
        self.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def _write_atomic(path: Path, data: bytes, sync: bool = True) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fp:
        fp.write(data)
        if sync:
            fp.flush()
            os.fsync(fp.fileno())
    os.replace(tmp, path)


def write_file_atomic(path: str | os.PathLike, data: bytes, sync: bool = False) -> None:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace`` (never half a file;
    ``sync`` also survives a power cut, at the cost of an fsync)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, data, sync)
