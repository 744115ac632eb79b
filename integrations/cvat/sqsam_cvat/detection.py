"""A cvat-sdk auto-annotation detection function: SqueezeSAM's salient objects.

    cvat-cli --server-host ... --auth ... task auto-annotate <task id> \\
        --function-module sqsam_cvat.detection \\
        -p label=str:object -p max_objects=int:5 -p min_score=float:0.5 \\
        [--conf-threshold 0.6] [--conv-mask-to-poly] [--allow-unmatched-labels]

Also usable as a native function served by an agent (``cvat-cli function create-native
"SqueezeSAM salient" --function-module sqsam_cvat.detection`` then ``cvat-cli function
run-agent <function id> --function-module sqsam_cvat.detection``).

Parameters (``-p name=type:value``): ``label`` (str, default ``object``): the one label the
function declares, matched to the task's labels by name; ``max_objects`` (int, default 5);
``min_score`` (float in [0, 1], default 0.5): the lowest predicted IoU kept, unless CVAT passes
a confidence threshold; ``model`` (str): another ONNX file (default: the bundled one).

Each object becomes a ``mask`` shape, or its outer polygons (holes filled) when CVAT asks to
convert masks to polygons. The label has type ``mask``, so it maps onto mask, polygon (with
conversion) and "any" labels.
"""

from __future__ import annotations

import cvat_sdk.auto_annotation as cvataa
import cvat_sdk.models as models
import numpy as np
import PIL.Image

from sqsam_core import formats
from sqsam_cvat import common

LABEL_ID = 0


class SalientObjectsFunction:
    """``DetectionFunction``: one label, salient-object masks from ``SqueezeSAM.automask``."""

    def __init__(
        self,
        label: str = common.DEFAULT_LABEL,
        max_objects: int = common.DEFAULT_MAX_OBJECTS,
        min_score: float = common.DEFAULT_MIN_SCORE,
        model: str | None = None,
    ) -> None:
        if not isinstance(label, str) or not label.strip():
            raise ValueError(f"label must be a non-empty string, got {label!r}")
        if isinstance(max_objects, bool) or not isinstance(max_objects, int) or max_objects < 1:
            raise ValueError(f"max_objects must be an integer >= 1, got {max_objects!r}")
        if not 0.0 <= float(min_score) <= 1.0:
            raise ValueError(f"min_score must be in [0, 1], got {min_score!r}")
        self._label = label.strip()
        self._max_objects = max_objects
        self._min_score = float(min_score)
        self._model = common.load_model(model)
        self.spec = cvataa.DetectionFunctionSpec(
            labels=[cvataa.label_spec(self._label, LABEL_ID, type="mask")]
        )

    def detect(
        self, context: cvataa.DetectionFunctionContext, image: PIL.Image.Image
    ) -> list[models.LabeledShapeRequest]:
        frame = common.frame_from_image(image)
        threshold = context.conf_threshold
        min_score = self._min_score if threshold is None else float(threshold)
        objects = self._model.automask(frame.image, max_objects=self._max_objects, min_score=min_score)
        shapes: list[models.LabeledShapeRequest] = []
        for obj in objects:
            mask = np.asarray(obj.mask, dtype=bool)
            if not mask.any():
                continue
            if context.conv_mask_to_poly:
                shapes.extend(cvataa.polygon(LABEL_ID, poly) for poly in common.polygons(mask))
            else:
                shapes.append(cvataa.mask(LABEL_ID, formats.mask_to_cvat_rle(mask)))
        return shapes


create = SalientObjectsFunction
