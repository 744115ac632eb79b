"""Pack the training split into one small file, to train on a machine that has no copy of the data.

    python -m sqsam_train.pack --out .gpu/train-pack.pkl            # here
    python -m sqsam_train.pack --unpack .gpu/train-pack.pkl --cache runs/v18/data-cache.pkl  # there

The pack holds exactly what ``data.load_training_data`` caches for training (images already
downscaled to ``data.MAX_SIDE``, held-out entries left out), with each image re-encoded as WebP
(lossy, ``--quality``) and each mask as zlib-compressed ``np.packbits`` (lossless). Unpacking
writes the data cache ``train`` reads, so ``train --run-dir`` then needs no ``--data`` folder.
Quality 75 packs the 2,010 training images into about 35 MiB, small enough to copy to a remote
GPU machine with the repository. Never pack ``eval/``: this reads ``train/`` only.
"""

from __future__ import annotations

import argparse
import io
import pickle
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from sqsam_core.config import DATA_HELP, data_root
from sqsam_train.data import Entry, load_training_data

PackedEntry = tuple[str, bytes, list[tuple[bytes, tuple[int, int]]]]  # name, WebP, [(packed mask, (H, W))]


def pack_entry(entry: Entry, quality: int) -> PackedEntry:
    """One Entry ((H, W, 3) uint8 image, (H, W) bool masks) as WebP bytes and packed mask bits."""
    buffer = io.BytesIO()
    Image.fromarray(entry.image).save(buffer, "WEBP", quality=quality, method=6)
    masks = [(zlib.compress(np.packbits(m).tobytes(), 9), m.shape) for m in entry.masks]
    return entry.name, buffer.getvalue(), masks


def unpack_entry(packed: PackedEntry) -> Entry:
    name, webp, masks = packed
    image = np.asarray(Image.open(io.BytesIO(webp)).convert("RGB"))
    decoded = [np.unpackbits(np.frombuffer(zlib.decompress(bits), np.uint8), count=h * w).reshape(h, w).astype(bool)
               for bits, (h, w) in masks]
    return Entry(name, image, decoded)


def pack(data_root: Path, out: Path, quality: int, cache: Path | None = None) -> int:
    """Write the training entries of every set to ``out``; returns its size in bytes."""
    sets = load_training_data(data_root, cache=cache)
    packed = {name: [pack_entry(e, quality) for e in train] for name, (train, _held_out) in sets.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(pickle.dumps(packed, protocol=pickle.HIGHEST_PROTOCOL))
    return out.stat().st_size


def unpack(pack_file: Path, cache: Path) -> int:
    """Write the data cache ``train`` reads (held-out lists empty); returns the number of entries."""
    packed = pickle.loads(pack_file.read_bytes())
    sets = {name: ([unpack_entry(p) for p in entries], []) for name, entries in packed.items()}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(pickle.dumps(sets, protocol=pickle.HIGHEST_PROTOCOL))
    return sum(len(train) for train, _ in sets.values())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=data_root(), help=f"data root holding train/ (default {DATA_HELP})")
    p.add_argument("--out", type=Path, help="the pack to write")
    p.add_argument("--quality", type=int, default=75, help="WebP quality of the images (masks are lossless)")
    p.add_argument("--data-cache", type=Path, default=None, help="an existing data cache to read instead of --data")
    p.add_argument("--unpack", type=Path, default=None, help="a pack to turn into the data cache at --cache")
    p.add_argument("--cache", type=Path, default=None, help="where --unpack writes the data cache")
    args = p.parse_args(argv)
    if args.unpack:
        if args.cache is None:
            p.error("--unpack needs --cache")
        print(f"{unpack(args.unpack, args.cache)} training entries -> {args.cache}")
    elif args.out:
        size = pack(args.data, args.out, args.quality, args.data_cache)
        print(f"{args.out}: {size / 2**20:.1f} MiB")
    else:
        p.error("give --out (pack) or --unpack (unpack)")


if __name__ == "__main__":
    main()
