"""Training data: loading ``../shared/data/train``, augmentation and click simulation.

Every sample is a ``crop x crop`` model-space window (model pixels, the scale the network sees
at inference with input side ``S``), produced by :class:`SampleMaker`:

* ``image``  (crop, crop, 3) uint8 RGB
* ``valid``  (crop, crop) bool — False on padding (zeroed after normalisation, as at inference)
* ``target`` (crop, crop) bool — the object
* ``clicks`` list of ``(x, y, positive)`` in crop pixels (x = column)
* ``box``    ``(x0, y0, x1, y1)`` crop pixels or None
* ``mode``   "clicks", "box", "salient" (no prompt: the salient object) or "part" (one click on a
  part, kept single by the training rounds)
* ``whole``, ``part`` (crop, crop) bool or None — for a click on a known part (a CCP garment, one
  instance of a touching group): the object that holds it and the part itself. A single click then
  trains hypothesis 0 on ``whole`` and hypothesis 1 on ``part`` (``contract.HYPOTHESES``).

Click simulation follows RITM: a first positive click biased to the object's interior, a few
extra random clicks some of the time; the iterative corrective clicks are added by the training
loop with :func:`sqsam_core.geometry.next_click` (the evaluation rule).
"""

from __future__ import annotations

import hashlib
import pickle
import random
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from sqsam_core.evaluation import image_stem_for_mask
from sqsam_core.geometry import mask_box
from sqsam_core.partwhole import MIN_PART_SHARE, part_masks

MAX_SIDE = 448  # images are cached with their longer side at most this many pixels
MIN_OBJECT_PIXELS = 150  # objects smaller than this (after caching) are not used as targets
SALIENT_SETS = ("ECSSD", "Human")  # one main object per image: the zero-click targets
PART_SETS = ("CCP",)  # label maps: the whole object is label > 0, each label id one part
SET_WEIGHTS = {"ECSSD": 0.25, "COCO_MVal": 0.25, "COCO128": 0.3, "Human": 0.2, "CCP": 0.2}


@dataclass
class Entry:
    """One training image and its object masks, downscaled to at most MAX_SIDE."""

    name: str
    image: np.ndarray  # (H, W, 3) uint8
    masks: list[np.ndarray] = field(default_factory=list)  # each (H, W) bool
    parts: list[np.ndarray] = field(default_factory=list)  # (H, W) bool parts of masks[0] (part sets only)


def set_name(entry_name: str) -> str:
    """The training set an Entry came from: ``"COCO128/000000000009"`` -> ``"COCO128"``."""
    return entry_name.split("/", 1)[0]


def is_validation(stem: str, fraction: float = 0.05) -> bool:
    """Deterministic held-out split of train/: the same stems are held out on every machine."""
    digest = hashlib.sha1(stem.encode()).digest()
    return digest[0] < 256 * fraction


def _downscale(array: np.ndarray, interpolation: int) -> np.ndarray:
    h, w = array.shape[:2]
    scale = MAX_SIDE / max(h, w)
    if scale >= 1:
        return array
    return cv2.resize(array, (round(w * scale), round(h * scale)), interpolation=interpolation)


def load_set(set_dir: Path) -> tuple[list[Entry], list[Entry]]:
    """Load one data set folder (``images/``, ``masks/``) into (train, validation) entries."""
    images = {p.stem: p for p in sorted((set_dir / "images").iterdir())}
    grouped: dict[str, list[Path]] = {}
    for mask_path in sorted((set_dir / "masks").glob("*.png")):
        stem = image_stem_for_mask(mask_path.stem, set(images))
        if stem is not None:
            grouped.setdefault(stem, []).append(mask_path)
    train, val = [], []
    for stem, mask_paths in grouped.items():
        rgb = cv2.cvtColor(cv2.imread(str(images[stem]), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        entry = Entry(f"{set_dir.name}/{stem}", _downscale(rgb, cv2.INTER_AREA))
        for mask_path in mask_paths:
            raw = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
            small = _downscale(raw.astype(np.float32), cv2.INTER_AREA) > 127
            if small.sum() >= MIN_OBJECT_PIXELS:
                entry.masks.append(small)
        if entry.masks:
            (val if is_validation(entry.name) else train).append(entry)
    return train, val


def load_part_set(set_dir: Path) -> tuple[list[Entry], list[Entry]]:
    """Load a part-labelled set (``images/``, ``labels/<stem>.png`` label maps) into (train, validation)."""
    train, val = [], []
    for label_path in sorted((set_dir / "labels").glob("*.png")):
        image_path = next((p for p in (set_dir / "images").glob(f"{label_path.stem}.*")), None)
        if image_path is None:
            continue
        rgb = cv2.cvtColor(cv2.imread(str(image_path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        labels = _downscale(cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED), cv2.INTER_NEAREST)
        whole, parts = part_masks(labels, MIN_PART_SHARE, MIN_OBJECT_PIXELS)
        if whole.sum() < MIN_OBJECT_PIXELS:
            continue
        entry = Entry(f"{set_dir.name}/{label_path.stem}", _downscale(rgb, cv2.INTER_AREA), [whole], parts)
        (val if is_validation(entry.name) else train).append(entry)
    return train, val


def load_training_data(data_root: Path, cache: Path | None = None) -> dict[str, tuple[list[Entry], list[Entry]]]:
    """All sets of ``data_root/train``; a pickle cache makes restarts fast."""
    if cache is not None and cache.exists():
        with cache.open("rb") as fh:
            return pickle.load(fh)
    sets = {name: (load_part_set if name in PART_SETS else load_set)(data_root / "train" / name)
            for name in SET_WEIGHTS if (data_root / "train" / name).is_dir()}
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with cache.open("wb") as fh:
            pickle.dump(sets, fh, protocol=pickle.HIGHEST_PROTOCOL)
    return sets


# --------------------------------------------------------------------------------------------
# Click sampling
# --------------------------------------------------------------------------------------------


def sample_interior_point(region: np.ndarray, rng: np.random.Generator, power: float = 2.0) -> tuple[int, int] | None:
    """A random ``(x, y)`` inside ``region`` (bool HxW), biased to points far from its boundary."""
    if not region.any():
        return None
    dist = cv2.distanceTransform(np.pad(region.astype(np.uint8), 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    weights = (dist / dist.max()) ** power
    flat = weights.ravel()
    index = rng.choice(flat.size, p=flat / flat.sum())
    y, x = divmod(int(index), region.shape[1])
    return x, y


def sample_negative_point(target: np.ndarray, valid: np.ndarray, rng: np.random.Generator) -> tuple[int, int] | None:
    """A random ``(x, y)`` in the background, usually in a band around the object."""
    band = cv2.dilate(target.astype(np.uint8), np.ones((31, 31), np.uint8)).astype(bool)
    region = (band if rng.random() < 0.7 else np.ones_like(target)) & ~target & valid
    if region.sum() > 200:
        region = cv2.erode(region.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    return sample_interior_point(region, rng, power=0.5)


# --------------------------------------------------------------------------------------------
# Augmentation
# --------------------------------------------------------------------------------------------


def color_jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast and saturation jitter on an (H, W, 3) uint8 image."""
    out = image.astype(np.float32)
    out *= rng.uniform(0.7, 1.3)  # brightness
    mean = out.mean()
    out = (out - mean) * rng.uniform(0.7, 1.3) + mean  # contrast
    gray = out.mean(axis=2, keepdims=True)
    out = (out - gray) * rng.uniform(0.6, 1.4) + gray  # saturation
    return np.clip(out, 0, 255).astype(np.uint8)


def resize_pair(image: np.ndarray, masks: list[np.ndarray], longer_side: float) -> tuple[np.ndarray, list[np.ndarray]]:
    h, w = image.shape[:2]
    scale = longer_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    image = cv2.resize(image, size, interpolation=interpolation)
    masks = [cv2.resize(m.astype(np.float32), size, interpolation=cv2.INTER_LINEAR) > 0.5 for m in masks]
    return image, masks


def crop_around(array: np.ndarray, top: int, left: int, crop: int) -> np.ndarray:
    """``crop x crop`` window starting at (top, left), zero-padded where it leaves the array."""
    out = np.zeros((crop, crop, *array.shape[2:]), dtype=array.dtype)
    h, w = array.shape[:2]
    r0, c0 = max(top, 0), max(left, 0)
    r1, c1 = min(top + crop, h), min(left + crop, w)
    if r0 < r1 and c0 < c1:
        out[r0 - top : r1 - top, c0 - left : c1 - left] = array[r0:r1, c0:c1]
    return out


def touching_union(masks: list[np.ndarray], index: int, rng: np.random.Generator) -> np.ndarray:
    """Object-level augmentation: the target merged with an instance that touches it, if any."""
    target = masks[index]
    grown = cv2.dilate(target.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
    neighbours = [m for i, m in enumerate(masks) if i != index and (m & grown).any()]
    if not neighbours:
        return target
    return target | neighbours[rng.integers(len(neighbours))]


@dataclass
class Sample:
    image: np.ndarray
    valid: np.ndarray
    target: np.ndarray
    clicks: list[tuple[float, float, bool]]
    box: tuple[float, float, float, float] | None
    mode: str
    source: str = ""  # Entry.name, "<set>/<stem>"
    whole: np.ndarray | None = None  # (crop, crop) bool: the object holding the clicked part
    part: np.ndarray | None = None  # (crop, crop) bool: the clicked part


class SampleMaker:
    """Draws augmented samples; ``input_size`` S sets the scale (objects appear as at inference)."""

    def __init__(self, sets: dict[str, list[Entry]], crop: int = 256, input_size: int = 320,
                 salient_share: float = 0.12, box_share: float = 0.15, paste_share: float = 0.15,
                 merge_share: float = 0.15, zoom_share: float = 0.3, zoom_at_serving_scale: bool = False,
                 set_weights: dict[str, float] | None = None, part_target_share: float = 0.5,
                 occlude_share: float = 0.0, part_click_share: float = 0.0):
        self.sets = {k: v for k, v in sets.items() if v}
        self.set_weights = dict(SET_WEIGHTS if set_weights is None else set_weights)
        self.part_target_share = part_target_share  # part-set samples whose corrective clicks aim at the part
        self.occlude_share = occlude_share  # samples with another object pasted over part of the target
        self.part_click_share = part_click_share  # part samples that stay one click on the part ("part" mode)
        self.crop, self.input_size = crop, input_size
        self.salient_share, self.box_share = salient_share, box_share
        self.paste_share, self.merge_share = paste_share, merge_share
        self.zoom_share, self.zoom_at_serving_scale = zoom_share, zoom_at_serving_scale

    def _entry(self, rng: np.random.Generator, names: tuple[str, ...] | None = None) -> Entry:
        names = tuple(n for n in (names or tuple(self.sets)) if n in self.sets)
        weights = np.array([self.set_weights[n] for n in names])
        name = names[rng.choice(len(names), p=weights / weights.sum())]
        entries = self.sets[name]
        return entries[rng.integers(len(entries))]

    def sample(self, rng: np.random.Generator) -> Sample:
        if rng.random() < self.salient_share:
            return self._salient(rng)
        return self._prompted(rng)

    def _salient(self, rng: np.random.Generator) -> Sample:
        """Whole image letterboxed top-left, as the core's automask saliency pass sees it."""
        entry = self._entry(rng, SALIENT_SETS)
        image, masks = entry.image, [entry.masks[0]]
        if rng.random() < 0.5:
            image, masks = image[:, ::-1], [m[:, ::-1] for m in masks]
        image, masks = resize_pair(np.ascontiguousarray(image), masks, self.crop * rng.uniform(0.8, 1.0))
        image = color_jitter(image, rng)
        valid = crop_around(np.ones(image.shape[:2], bool), 0, 0, self.crop)
        return Sample(crop_around(image, 0, 0, self.crop), valid, crop_around(masks[0], 0, 0, self.crop), [], None,
                      "salient",
                      entry.name)

    def _prompted(self, rng: np.random.Generator) -> Sample:
        entry = self._entry(rng)
        whole = part = None  # set when the first click lands on a known part of a known whole
        if entry.parts:
            part = entry.parts[int(rng.integers(len(entry.parts)))]
            whole = entry.masks[0]
            target = part if rng.random() < self.part_target_share else whole
        else:
            index = int(rng.integers(len(entry.masks)))
            target = entry.masks[index]
            if len(entry.masks) > 1 and rng.random() < self.merge_share:
                merged = touching_union(entry.masks, index, rng)
                if merged is not target:  # one instance of a touching group: part and whole
                    target, whole, part = merged, merged, entry.masks[index]
        image = entry.image
        layers = [target] + ([whole, part] if part is not None else [])
        if rng.random() < 0.5:
            image, layers = image[:, ::-1], [m[:, ::-1] for m in layers]
        image, layers = np.ascontiguousarray(image), [np.ascontiguousarray(m) for m in layers]
        if rng.random() < self.zoom_share:
            image, valid, layers = self._zoomed_view(image, layers, rng)
        else:
            image, valid, layers = self._scaled_window(image, layers, rng)
        target = layers[0]
        whole, part = (layers[1], layers[2]) if len(layers) == 3 else (None, None)
        if rng.random() < self.paste_share:
            image = self._paste_on_other_background(image, valid, target if whole is None else whole, rng)
        if rng.random() < self.occlude_share:
            image, layers = self._occlude(image, valid, [m for m in (target, whole, part) if m is not None], rng)
            target = layers[0]
            whole, part = (layers[1], layers[2]) if len(layers) == 3 else (None, None)
        if target.sum() < 30 or (part is not None and part.sum() < 30):  # the object left the window: draw again
            return self._prompted(rng)
        if rng.random() < self.box_share:
            return Sample(image, valid, target, [], self._jittered_box(target, rng), "box", entry.name)
        if part is not None and rng.random() < self.part_click_share:
            x, y = sample_interior_point(part, rng)
            return Sample(image, valid, target, [(float(x), float(y), True)], None, "part", entry.name, whole, part)
        clicks = self._initial_clicks(target, valid, rng, first_in=part)
        return Sample(image, valid, target, clicks, None, "clicks", entry.name, whole, part)

    def _scaled_window(self, image, layers, rng) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """A ``crop`` window of the image at the scale of the full-image view (first click).

        ``layers``: (H, W) bool masks, the target first; all are cut like the image.
        """
        longer = self.input_size * rng.uniform(0.6, 1.4)
        image, layers = resize_pair(image, layers, longer)
        top, left = self._window(layers[0], rng)
        image = crop_around(color_jitter(image, rng), top, left, self.crop)
        valid = crop_around(np.ones(layers[0].shape, bool), top, left, self.crop)
        return image, valid, [crop_around(m, top, left, self.crop) for m in layers]

    def _zoomed_view(self, image, layers, rng) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """The zoom-in view serving uses after the first click (``geometry.zoom_window``).

        The object's box (``layers[0]``, the target), expanded by U(1.2, 2.0) around a jittered
        centre (the runtime's 1.4 around a predicted mask that is itself off), cut out of the image
        and letterboxed top-left. By default (v1-v6) the view's longer side is ``crop x U(0.8,
        1.0)``, so the whole view fits the window but objects appear 1.25-1.6x smaller than at
        serving, where the view's longer side is S. With ``zoom_at_serving_scale`` the view's
        longer side is ``S x U(0.9, 1.1)``, each side at least U(150, 250) image pixels (the
        runtime's ``min_side`` of 200), and a ``crop`` window holding an object pixel is cut from it.
        """
        target = layers[0]
        x0, y0, x1, y1 = mask_box(target)
        h, w = target.shape
        side_w, side_h = (x1 - x0 + 1) * rng.uniform(1.2, 2.0), (y1 - y0 + 1) * rng.uniform(1.2, 2.0)
        if self.zoom_at_serving_scale:
            min_side = rng.uniform(150, 250)
            side_w, side_h = max(side_w, min_side), max(side_h, min_side)
        cx = (x0 + x1) / 2 + rng.normal(0, 0.08) * side_w
        cy = (y0 + y1) / 2 + rng.normal(0, 0.08) * side_h
        left, right = int(max(0, round(cx - side_w / 2))), int(min(w, round(cx + side_w / 2) + 1))
        top, bottom = int(max(0, round(cy - side_h / 2))), int(min(h, round(cy + side_h / 2) + 1))
        if right - left < 8 or bottom - top < 8:
            return self._scaled_window(image, layers, rng)
        if self.zoom_at_serving_scale:
            longer = self.input_size * rng.uniform(0.9, 1.1)
        else:
            longer = self.crop * rng.uniform(0.8, 1.0)
        view, view_layers = resize_pair(image[top:bottom, left:right], [m[top:bottom, left:right] for m in layers],
                                        longer)
        window_top, window_left = (0, 0)
        if self.zoom_at_serving_scale and view_layers[0].any():
            window_top, window_left = self._window(view_layers[0], rng)
        view = crop_around(color_jitter(view, rng), window_top, window_left, self.crop)
        valid = crop_around(np.ones(view_layers[0].shape, bool), window_top, window_left, self.crop)
        return view, valid, [crop_around(m, window_top, window_left, self.crop) for m in view_layers]

    def _window(self, target: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
        """Top-left of a crop window that contains a random object pixel."""
        ys, xs = np.nonzero(target)
        pick = rng.integers(len(xs))
        y, x = ys[pick], xs[pick]
        top = int(y - rng.integers(self.crop // 8, self.crop - self.crop // 8))
        left = int(x - rng.integers(self.crop // 8, self.crop - self.crop // 8))
        h, w = target.shape
        top = min(max(top, min(0, h - self.crop)), max(0, h - self.crop)) if rng.random() < 0.8 else top
        left = min(max(left, min(0, w - self.crop)), max(0, w - self.crop)) if rng.random() < 0.8 else left
        return top, left

    def _paste_on_other_background(self, image, valid, target, rng) -> np.ndarray:
        """Copy-paste: the object's pixels over another image's background (target unchanged)."""
        other = self._entry(rng).image
        other, _ = resize_pair(other, [], self.crop * rng.uniform(1.0, 1.6))
        background = color_jitter(crop_around(other, 0, 0, self.crop), rng)
        alpha = cv2.GaussianBlur(target.astype(np.float32), (3, 3), 0)[..., None]
        pasted = background * (1 - alpha) + image * alpha
        return np.where(valid[..., None], pasted, 0).astype(np.uint8)

    def _occlude(self, image, valid, layers, rng) -> tuple[np.ndarray, list[np.ndarray]]:
        """Occlusion and clutter: another entry's object, scaled to U(0.2, 0.6) of the target's
        box, pasted over a random point of the target; its pixels leave every layer (the target
        first). The occluder keeps its own pixels, so the scene gains a foreign object in front."""
        other = self._entry(rng)
        mask = other.masks[int(rng.integers(len(other.masks)))]
        x0, y0, x1, y1 = (int(v) for v in mask_box(mask))
        piece, piece_mask = other.image[y0 : y1 + 1, x0 : x1 + 1], mask[y0 : y1 + 1, x0 : x1 + 1]
        tx0, ty0, tx1, ty1 = mask_box(layers[0])
        side = max(tx1 - tx0, ty1 - ty0) + 1
        piece, (piece_mask,) = resize_pair(piece, [piece_mask], max(8.0, side * rng.uniform(0.2, 0.6)))
        ys, xs = np.nonzero(layers[0])
        pick = int(rng.integers(len(xs)))
        top, left = int(ys[pick]) - piece.shape[0] // 2, int(xs[pick]) - piece.shape[1] // 2
        h, w = image.shape[:2]
        r0, c0, r1, c1 = max(top, 0), max(left, 0), min(top + piece.shape[0], h), min(left + piece.shape[1], w)
        if r0 >= r1 or c0 >= c1:
            return image, layers
        cover = np.zeros((h, w), bool)
        cover[r0:r1, c0:c1] = piece_mask[r0 - top : r1 - top, c0 - left : c1 - left]
        cover &= valid
        out = image.copy()
        out[r0:r1, c0:c1][cover[r0:r1, c0:c1]] = piece[r0 - top : r1 - top, c0 - left : c1 - left][cover[r0:r1, c0:c1]]
        return out, [m & ~cover for m in layers]

    def _jittered_box(self, target, rng) -> tuple[float, float, float, float]:
        x0, y0, x1, y1 = mask_box(target)
        w, h = x1 - x0 + 1, y1 - y0 + 1
        jitter = rng.normal(0, 0.06, size=4) * np.array([w, h, w, h])
        box = np.array([x0, y0, x1, y1]) + jitter
        box = np.clip(box, 0, self.crop - 1)
        return (float(min(box[0], box[2])), float(min(box[1], box[3])),
                float(max(box[0], box[2])), float(max(box[1], box[3])))

    def _initial_clicks(self, target, valid, rng,
                        first_in: np.ndarray | None = None) -> list[tuple[float, float, bool]]:
        """A first positive click inside ``first_in`` (a part; default the target), biased to its
        interior, then 1-2 random extra clicks in a quarter of the samples."""
        x, y = sample_interior_point(target if first_in is None else first_in, rng)
        clicks = [(float(x), float(y), True)]
        if rng.random() < 0.25:
            for _ in range(int(rng.integers(1, 3))):
                point = sample_interior_point(target, rng, 1.0) if rng.random() < 0.5 else None
                if point is not None:
                    clicks.append((float(point[0]), float(point[1]), True))
                else:
                    neg = sample_negative_point(target, valid, rng)
                    if neg is not None:
                        clicks.append((float(neg[0]), float(neg[1]), False))
        return clicks


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
