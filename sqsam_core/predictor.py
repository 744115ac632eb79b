"""SqueezeSAM on ONNX Runtime: one image, clicks and/or a box in, masks and scores out.

    model = SqueezeSAM()                                   # the bundled model, CPU
    pred = model.predict(image, clicks=[(x, y, True)])     # (x, y) image pixels, x = column
    pred = model.predict(image, clicks=[(x, y, True), (x2, y2, False)], prev=pred)
    objects = model.automask(image)                        # salient objects, best first

Images are ``(H, W, 3)`` uint8 RGB arrays or PIL images of any mode. All geometry (letterbox,
prompt maps, mapping masks back) lives in :mod:`sqsam_core.geometry`; the network's inputs and
metadata are fixed by :mod:`sqsam_core.contract`.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np

from sqsam_core import edges, geometry
from sqsam_core.contract import GRANULARITIES, ModelSpec, choose_hypothesis
from sqsam_core.errors import InvalidPromptError, ModelFileError
from sqsam_core.imageio import to_rgb_array

DEFAULT_MODEL_NAME = "squeezesam.onnx"


@dataclass(frozen=True)
class ZoomIn:
    """RITM's zoom-in (Sofiiuk et al., 2022): from click ``skip_clicks + 1`` on, the network sees
    only the window around the current mask and the positive clicks (:func:`geometry.zoom_window`,
    ``expansion`` x the object's box, sides >= ``min_side`` image pixels) at the full input
    resolution. The window is used only when it magnifies by at least ``min_gain``; otherwise the
    whole image is seen. The defaults are RITM's published ones (1.4, 200 px, from click 2).
    """

    skip_clicks: int = 1
    expansion: float = 1.4
    min_side: float = 200.0
    min_gain: float = 1.1


ZOOM_SOURCE_MAX_SIDE = 1600  # zoom-in views are cut from a copy at most this long (bounded memory)

# A backend maps the four contract inputs to (masks (1,K,s,s) logits, iou (1,K)).
Backend = Callable[[dict[str, np.ndarray]], tuple[np.ndarray, np.ndarray]]


def default_model_path() -> Path:
    """The ONNX file shipped inside the package (``SQSAM_MODEL`` overrides it)."""
    override = os.environ.get("SQSAM_MODEL")
    if override:
        return Path(override)
    try:
        return Path(str(resources.files("sqsam_core.weights").joinpath(DEFAULT_MODEL_NAME)))
    except ModuleNotFoundError:  # running from a source checkout that was not pip-installed
        return Path(__file__).resolve().parents[1] / "models" / "weights" / DEFAULT_MODEL_NAME


class OnnxBackend:
    """An ONNX Runtime CPU session plus the :class:`ModelSpec` read from the file's metadata."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ModelFileError(f"model file not found: {self.path}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types for corrupt files
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise ModelFileError(f"cannot load model {self.path}: {reason}") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        try:
            self.spec = ModelSpec.from_metadata(meta)
        except ValueError as exc:
            raise ModelFileError(f"{self.path}: {exc}") from None
        names = {i.name for i in self.session.get_inputs()}
        if names != {"image", "clicks", "prev_mask", "box"}:
            raise ModelFileError(f"{self.path}: inputs {sorted(names)} do not follow the model contract")

    def __call__(self, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        masks, iou = self.session.run(["masks", "iou"], inputs)
        return masks, iou


@dataclass
class PreparedImage:
    """An image decoded, letterboxed and normalised once; reused for every click on it.

    ``source`` keeps the pixels that zoom-in views are cut from: the image itself, or a copy
    downscaled to a longer side of ``ZOOM_SOURCE_MAX_SIDE`` (``source_scale`` source pixels per
    image pixel) so that a cached 12 MP photo does not hold 36 MB.
    """

    key: str
    box: geometry.Letterbox
    tensor: np.ndarray  # (1, 3, S, S) float32, exact zeros on padding
    source: np.ndarray | None = None  # (h, w, 3) uint8 RGB
    source_scale: float = 1.0
    grey: np.ndarray | None = None  # (h, w) uint8 grey levels of ``source``: the edge-refinement guide

    @property
    def full_view(self) -> geometry.View:
        return geometry.full_view(self.box.height, self.box.width, self.box.size)


@dataclass
class Prediction:
    """The result of one model pass, in image space (``H x W``) with its model-space logits.

    ``mask``/``score``: the hypothesis to present; ``masks``/``scores``: all K of them.
    ``mask`` may be given (the edge-refined one); by default it is the presented logits > 0.
    ``low_res_logits``: ``(K, s, s)`` raw model output (``s = S / stride``) for ``view`` (the
    whole image, or the zoom-in window the pass saw), kept so that the prediction can be fed
    back as the next pass's previous mask without loss. Outside the view the mask is empty.
    """

    low_res_logits: np.ndarray
    scores: np.ndarray
    index: int
    view: geometry.View
    stride: int
    clicks: tuple[geometry.Click, ...] = ()
    box: geometry.Box | None = None
    image_key: str = ""
    mask: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.mask is None:
            logits = geometry.logits_to_image(self.low_res_logits[self.index], self.view.letterbox, self.stride)
            self.mask = self.view.paste(logits > 0)

    @property
    def score(self) -> float:
        return float(self.scores[self.index])

    @property
    def letterbox(self) -> geometry.Letterbox:
        """How the view this pass saw sits in the model input."""
        return self.view.letterbox

    @cached_property
    def masks(self) -> np.ndarray:
        """``(K, H, W)`` bool: every hypothesis in image space (computed on first use)."""
        return self.view.logits_to_image(self.low_res_logits, self.stride) > 0

    @property
    def image_size(self) -> tuple[int, int]:
        """``(height, width)`` of the image the prediction belongs to."""
        return self.view.image_height, self.view.image_width

    def prev_mask_input(self, view: geometry.View | None = None) -> np.ndarray:
        """``(1, S, S)`` float32 probability of the presented hypothesis, as seen by ``view``.

        ``view`` is the next pass's view (default: this prediction's own). For the same view the
        low-resolution logits are upsampled directly; for another one they are warped into it
        (:func:`geometry.logits_to_view`), never through a full-resolution image.
        """
        if view is None or view == self.view:
            size = self.view.size
            logits = cv2.resize(self.low_res_logits[self.index].astype(np.float32), (size, size),
                                interpolation=cv2.INTER_LINEAR)
            return geometry.zero_padding(_sigmoid(logits)[None], self.view.letterbox)
        logits = geometry.logits_to_view(self.low_res_logits[self.index], self.view, view, self.stride)
        return geometry.zero_padding(_sigmoid(logits)[None], view.letterbox)

    def low_res_mask(self) -> np.ndarray:
        """``(h, w)`` bool presented mask on the model-output grid of its view, padding cropped off."""
        h = math.ceil(self.letterbox.resized_height / self.stride)
        w = math.ceil(self.letterbox.resized_width / self.stride)
        return self.low_res_logits[self.index, :h, :w] > 0


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


class ImageCache:
    """A bounded, thread-safe LRU of :class:`PreparedImage` keyed by a caller key or content hash."""

    def __init__(self, max_items: int = 16):
        self.max_items = max_items
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str):
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item

    def put(self, key: str, item) -> None:
        if self.max_items <= 0:
            return
        with self._lock:
            self._items[key] = item
            self._items.move_to_end(key)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


def content_key(rgb: np.ndarray) -> str:
    """A content hash of an ``(H, W, 3)`` uint8 image (shape included)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(str(rgb.shape).encode())
    digest.update(np.ascontiguousarray(rgb).data)
    return digest.hexdigest()


class SqueezeSAM:
    """Interactive segmentation with an early-fusion SqueezeSAM ONNX model.

    Arguments:
        model_path: an ONNX file following docs/model-contract.md; None = the bundled model.
        threads: ONNX Runtime intra-op threads (None = its default, one per physical core).
        cache_size: how many prepared images to keep (LRU); 0 disables the cache.
        backend: advanced: any callable with the contract's inputs and outputs, plus ``spec``
            (training uses this to validate a PyTorch network through exactly this code).
        zoom_in: refine clicks on a zoomed-in window (:class:`ZoomIn`); None = always the whole image.
        edge_refine: snap the presented mask of a pass with clicks to image edges
            (:class:`edges.EdgeRefine`, the guided filter, or any other
            :class:`edges.EdgeRefiner`); None = the network's upsampled mask as it is.
    """

    def __init__(self, model_path: str | os.PathLike | None = None, threads: int | None = None,
                 cache_size: int = 16, backend: Backend | None = None, spec: ModelSpec | None = None,
                 zoom_in: ZoomIn | None = ZoomIn(),
                 edge_refine: edges.EdgeRefiner | None = edges.EdgeRefine()):
        if backend is None:
            onnx_backend = OnnxBackend(model_path or default_model_path(), threads)
            backend, spec = onnx_backend, onnx_backend.spec
        if spec is None:
            raise ValueError("a custom backend needs its ModelSpec")
        self.backend = backend
        self.spec = spec
        self.zoom_in = zoom_in
        self.edge_refine = edge_refine
        self.images = ImageCache(cache_size)
        self.history = ImageCache(4 * cache_size)  # prefix -> Prediction, for predict_history

    # ----------------------------------------------------------------------------------------
    # Preparation
    # ----------------------------------------------------------------------------------------

    def prepare(self, image, cache_key: str | None = None) -> PreparedImage:
        """Decode, letterbox and normalise ``image`` (or fetch it from the cache)."""
        if isinstance(image, PreparedImage):
            return image
        if cache_key is not None:
            cached = self.images.get(cache_key)
            if cached is not None:
                return cached
        rgb = to_rgb_array(image)
        key = cache_key or content_key(rgb)
        if cache_key is None:
            cached = self.images.get(key)
            if cached is not None:
                return cached
        canvas, box = geometry.letterbox_image(rgb, self.spec.input_size)
        tensor = geometry.zero_padding(geometry.normalize_image(canvas, self.spec.mean, self.spec.std), box)
        keep_source = self.zoom_in is not None or self.edge_refine is not None
        source, source_scale = zoom_source(rgb) if keep_source else (None, 1.0)
        grey = cv2.cvtColor(source, cv2.COLOR_RGB2GRAY) if self.edge_refine is not None else None
        prepared = PreparedImage(key, box, tensor[None], source, source_scale, grey)
        self.images.put(key, prepared)
        return prepared

    # ----------------------------------------------------------------------------------------
    # Prediction
    # ----------------------------------------------------------------------------------------

    def predict(self, image, clicks: Sequence[Sequence] = (), box: Sequence[float] | None = None,
                prev: Prediction | None = None, cache_key: str | None = None,
                granularity: str = "whole") -> Prediction:
        """One model pass.

        ``clicks``: ``(x, y, positive)`` in image pixels, oldest first. ``box``: ``(x0, y0, x1,
        y1)`` image pixels. ``prev``: an earlier :class:`Prediction` on this image, fed back as
        the previous mask. No clicks and no box = the most salient object. ``granularity``:
        what a single click selects, ``"whole"`` (the object holding the click, the default) or
        ``"part"`` (the clicked part: a garment, a wheel); later clicks refine the mask shown.
        """
        check_granularity(granularity)
        prepared = self.prepare(image, cache_key)
        letterbox = prepared.box
        clean_clicks = validate_clicks(clicks, letterbox.height, letterbox.width)
        clean_box = validate_box(box, letterbox.height, letterbox.width)
        if prev is not None and prev.image_size != (letterbox.height, letterbox.width):
            raise InvalidPromptError(
                f"prev belongs to a {prev.image_size[1]}x{prev.image_size[0]} image, not this "
                f"{letterbox.width}x{letterbox.height} one"
            )
        view = self.choose_view(prepared, clean_clicks, clean_box, prev)
        inputs = self._model_inputs(prepared, view, clean_clicks, clean_box, prev)
        masks, iou = self.backend(inputs)
        scores = np.asarray(iou, dtype=np.float32).reshape(-1)
        index = choose_hypothesis(scores, len(clean_clicks), clean_box is not None, granularity, self.spec.hypotheses)
        low_res = np.asarray(masks[0], dtype=np.float32)
        mask = self._presented_mask(prepared, view, low_res[index], refine=bool(clean_clicks))
        return Prediction(low_res, scores, index, view, self.spec.stride, tuple(clean_clicks), clean_box,
                          prepared.key, mask)

    def choose_view(self, prepared: PreparedImage, clicks: Sequence[geometry.Click], box: geometry.Box | None,
                    prev: Prediction | None) -> geometry.View:
        """The whole image, or the zoom-in window once there is a previous mask (:class:`ZoomIn`)."""
        full = prepared.full_view
        zoom = self.zoom_in
        if zoom is None or prev is None or prepared.source is None or len(clicks) <= zoom.skip_clicks:
            return full
        window = geometry.zoom_window(prev.mask, clicks, box, zoom.expansion, zoom.min_side)
        if window is None:
            return full
        view = geometry.View(full.image_height, full.image_width, full.size, *window)
        gain = view.letterbox.scale / full.letterbox.scale
        return view if gain >= zoom.min_gain else full

    def _presented_mask(self, prepared: PreparedImage, view: geometry.View, logits: np.ndarray,
                        refine: bool) -> np.ndarray:
        """``(H, W)`` bool image mask from the presented hypothesis's ``(s, s)`` logits of ``view``.

        Only the view's window is mapped back (and, with ``refine``, edge-refined: passes with
        clicks); outside it the mask is empty. A very large image's guide is a downscaled copy,
        so its refinement works over the whole image in the guide's pixels instead.
        """
        stride = self.spec.stride
        if not refine or self.edge_refine is None or prepared.grey is None:
            return view.paste(geometry.logits_to_image(logits, view.letterbox, stride) > 0)
        if prepared.source_scale != 1.0:
            return self.edge_refine.refine(view.logits_to_image(logits, stride), prepared.source, prepared.grey,
                                           prepared.source_scale)
        window_logits = geometry.logits_to_image(logits, view.letterbox, stride)
        return view.paste(self.edge_refine.refine(window_logits, view.crop(prepared.source),
                                                  view.crop(prepared.grey), 1.0))

    def predict_history(self, image, clicks: Sequence[Sequence], box: Sequence[float] | None = None,
                        cache_key: str | None = None, granularity: str = "whole") -> Prediction:
        """Predict from a whole click history, as the model is trained and evaluated.

        Annotation tools send every click of an object with each request. This replays the
        history one click at a time, feeding each prediction back as the previous mask (the
        RITM protocol), and remembers every prefix, so the usual request (one click more than
        the last) costs a single model pass. ``granularity`` as in :meth:`predict`.
        """
        check_granularity(granularity)
        prepared = self.prepare(image, cache_key)
        clean_clicks = validate_clicks(clicks, prepared.box.height, prepared.box.width)
        clean_box = validate_box(box, prepared.box.height, prepared.box.width)
        prev, start = None, 0
        for n in range(len(clean_clicks), 0, -1):
            hit = self.history.get(_history_key(prepared.key, clean_clicks[:n], clean_box, granularity))
            if hit is not None:
                prev, start = hit, n
                break
        if prev is not None and start == len(clean_clicks):
            return prev
        if not clean_clicks:
            return self.predict(prepared, (), clean_box)
        for n in range(max(start, 0) + 1, len(clean_clicks) + 1):
            prev = self.predict(prepared, clean_clicks[:n], clean_box, prev=prev, granularity=granularity)
            self.history.put(_history_key(prepared.key, clean_clicks[:n], clean_box, granularity), prev)
        return prev

    def _model_inputs(self, prepared: PreparedImage, view: geometry.View, clicks, box, prev) -> dict[str, np.ndarray]:
        """The four contract inputs for one pass over ``view`` (clicks outside it are left out)."""
        size = self.spec.input_size
        if view.is_full:
            image = prepared.tensor
        else:
            canvas = geometry.letterbox_window(prepared.source, prepared.source_scale, view)
            normalized = geometry.normalize_image(canvas, self.spec.mean, self.spec.std)
            image = geometry.zero_padding(normalized, view.letterbox)[None]
        seen = [c for c in clicks if view.contains(c[0], c[1])]
        model_clicks = []
        if seen:
            points = view.points_to_model(np.array([(c[0], c[1]) for c in seen]))
            model_clicks = [(p[0], p[1], c[2]) for p, c in zip(points, seen)]
        box_model = view.box_to_model(box) if box is not None else None
        prev_input = prev.prev_mask_input(view) if prev is not None else np.zeros((1, size, size), np.float32)
        return {
            "image": image,
            "clicks": geometry.click_maps(model_clicks, size, self.spec.click_radius)[None],
            "prev_mask": prev_input[None],
            "box": geometry.box_map(box_model, size)[None],
        }

    # ----------------------------------------------------------------------------------------
    # Salient auto-mask
    # ----------------------------------------------------------------------------------------

    def automask(self, image, max_objects: int = 5, min_score: float = 0.5, dedup_iou: float = 0.7,
                 min_area_fraction: float = 0.002, cache_key: str | None = None) -> list[Prediction]:
        """Salient objects, best first (the SqueezeSAM recipe).

        1. a saliency pass: the model with no prompt. Its presented hypothesis is trained for
           the image's main object and leads the list; all K hypotheses give salient regions;
        2. each connected salient region gets a simulated click at its interior point (the point
           farthest from its boundary) and a model pass of its own; these follow, best-scored first;
        3. results are de-duplicated by mask IoU (``dedup_iou``), those scoring under
           ``min_score`` or covering less than ``min_area_fraction`` of the image are dropped.
        """
        prepared = self.prepare(image, cache_key)
        salient = self.predict(prepared)
        clicked = [self.predict(prepared, [click]) for click in self._region_clicks(salient, min_area_fraction)]
        candidates = [salient] + sorted(clicked, key=lambda p: -p.score)
        return select_objects(candidates, max_objects, min_score, dedup_iou, min_area_fraction)

    def _region_clicks(self, salient: Prediction, min_area_fraction: float,
                       max_regions: int = 8) -> list[geometry.Click]:
        """Image-space positive clicks at the interior points of the salient pass's regions."""
        h = math.ceil(salient.letterbox.resized_height / salient.stride)
        w = math.ceil(salient.letterbox.resized_width / salient.stride)
        union = (salient.low_res_logits[:, :h, :w] > 0).any(axis=0).astype(np.uint8)
        count, labels, stats, _ = cv2.connectedComponentsWithStats(union, connectivity=8)
        order = sorted(range(1, count), key=lambda i: -stats[i, cv2.CC_STAT_AREA])
        clicks = []
        for label in order[:max_regions]:
            if stats[label, cv2.CC_STAT_AREA] < min_area_fraction * h * w:
                continue
            x, y, _ = geometry.interior_point(labels == label)
            model_xy = np.array([[(x + 0.5) * salient.stride - 0.5, (y + 0.5) * salient.stride - 0.5]])
            ix, iy = salient.letterbox.points_to_image(model_xy)[0]
            clicks.append((float(np.clip(ix, 0, salient.letterbox.width - 1)),
                           float(np.clip(iy, 0, salient.letterbox.height - 1)), True))
        return clicks


def select_objects(candidates: list[Prediction], max_objects: int, min_score: float, dedup_iou: float,
                   min_area_fraction: float) -> list[Prediction]:
    """``candidates`` in their order, dropping low scores, tiny masks and near-duplicates of an
    earlier kept one (low-res mask IoU)."""
    kept: list[Prediction] = []
    kept_masks: list[np.ndarray] = []
    for cand in candidates:
        if cand.score < min_score:
            continue
        low = cand.low_res_mask()
        if low.mean() < min_area_fraction:
            continue
        if any(geometry.mask_iou(low, other) > dedup_iou for other in kept_masks):
            continue
        kept.append(cand)
        kept_masks.append(low)
        if len(kept) >= max_objects:
            break
    return kept


def zoom_source(rgb: np.ndarray) -> tuple[np.ndarray, float]:
    """The pixels zoom-in views are cut from: ``rgb`` itself, or a copy whose longer side is
    ``ZOOM_SOURCE_MAX_SIDE``; returns ``(source, source pixels per image pixel)``."""
    longer = max(rgb.shape[:2])
    if longer <= ZOOM_SOURCE_MAX_SIDE:
        return rgb, 1.0
    scale = ZOOM_SOURCE_MAX_SIDE / longer
    size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA), scale


def _history_key(image_key: str, clicks, box, granularity: str) -> str:
    return f"{image_key}|{box}|{granularity}|{tuple(clicks)}"


def check_granularity(granularity: str) -> None:
    """Raise :class:`InvalidPromptError` unless ``granularity`` is one of ``contract.GRANULARITIES``."""
    if granularity not in GRANULARITIES:
        raise InvalidPromptError(f"granularity must be one of {', '.join(GRANULARITIES)}, not {granularity!r}")


def validate_clicks(clicks: Sequence[Sequence], height: int, width: int) -> list[geometry.Click]:
    """Check ``(x, y, positive)`` clicks against an ``height x width`` image.

    Coordinates must be finite and inside ``[0, width] x [0, height]`` (the far edge is allowed:
    tools that send percentages reach 100 %); they are clipped to the last pixel.
    """
    if clicks is None:
        return []
    out = []
    for i, click in enumerate(clicks):
        try:
            x, y, positive = click
            x, y = float(x), float(y)
        except (TypeError, ValueError):
            raise InvalidPromptError(f"click {i} must be (x, y, positive), got {click!r}") from None
        if not (math.isfinite(x) and math.isfinite(y)):
            raise InvalidPromptError(f"click {i} has a non-finite coordinate ({x}, {y})")
        if not (0 <= x <= width and 0 <= y <= height):
            raise InvalidPromptError(f"click {i} at ({x:g}, {y:g}) is outside the {width}x{height} image")
        out.append((min(x, width - 1.0), min(y, height - 1.0), bool(positive)))
    return out


def validate_box(box: Sequence[float] | None, height: int, width: int) -> geometry.Box | None:
    """Check an ``(x0, y0, x1, y1)`` box; corners are sorted and clipped to the image."""
    if box is None:
        return None
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError):
        raise InvalidPromptError(f"box must be (x0, y0, x1, y1), got {box!r}") from None
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise InvalidPromptError(f"box has a non-finite coordinate: {box!r}")
    x0, x1 = sorted((x0, x1))
    y0, y1 = sorted((y0, y1))
    if x1 < 0 or y1 < 0 or x0 > width or y0 > height:
        raise InvalidPromptError(f"box {box!r} lies outside the {width}x{height} image")
    return (max(0.0, x0), max(0.0, y0), min(width - 1.0, x1), min(height - 1.0, y1))
