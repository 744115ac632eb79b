"""A cvat-sdk interaction function: clicks (and an optional box) -> one SqueezeSAM mask.

Register it once, then keep an agent running it (it shows under AI Tools > Interactors):

    cvat-cli --server-host ... --auth ... function create-native "SqueezeSAM (sqsam)" \\
        --function-module sqsam_cvat.interaction            # prints the function id
    cvat-cli --server-host ... --auth ... function run-agent <function id> \\
        --function-module sqsam_cvat.interaction

Parameter (``-p``): ``model=str:/path/to/model.onnx`` (default: the bundled model).

``preprocess_image`` decodes the frame once (RGB array + content key); the agent keeps that
per (task, frame) and the core caches its preprocessing under the key, so each further
click runs only the network. Positive and negative points arrive in two lists; the order of
the user's clicks is rebuilt across calls (``common.ClickHistory``) and the core's
``predict_history`` feeds the previous mask back, as the model is trained.
"""

from __future__ import annotations

import cvat_sdk.auto_annotation as cvataa
import cvat_sdk.models as models
import numpy as np
import PIL.Image

from sqsam_core import formats
from sqsam_cvat import common


class SqueezeSAMInteraction:
    """``InteractionFunction`` over ``sqsam_core.SqueezeSAM``."""

    spec = cvataa.InteractionFunctionSpec(min_pos_points=1, min_neg_points=0, min_bounding_boxes=0)

    def __init__(self, model: str | None = None, granularity: str | None = None) -> None:
        """``granularity`` (``cvat-cli function create-native ... -p granularity=str:part``): what a
        single click selects, "whole" (default, or ``$SQSAM_GRANULARITY``) or "part"."""
        self._model = common.load_model(model)
        self._granularity = common.default_granularity(granularity)
        self._history = common.ClickHistory()

    def preprocess_image(
        self, context: cvataa.InteractionFunctionContext, image: PIL.Image.Image
    ) -> common.Frame:
        return common.frame_from_image(image)

    def detect(
        self,
        context: cvataa.InteractionFunctionContext,
        pp_image: common.Frame,
        prompts: cvataa.InteractionPrompts,
    ) -> list[cvataa.InteractionResultShape]:
        frame = pp_image
        pos = common.parse_points(list(prompts.pos_points), "pos_points", frame)
        neg = common.parse_points(list(prompts.neg_points), "neg_points", frame)
        box = common.parse_box(prompts.bounding_box, frame)
        pred = common.interact(self._model, frame, pos, neg, box, self._history, self._granularity)
        mask = np.asarray(pred.mask, dtype=bool)
        if not mask.any():
            return []
        return [
            cvataa.InteractionResultShape(
                type="mask",
                points=formats.mask_to_cvat_rle(mask),
                attributes=[
                    models.AttributeValRequest(
                        spec_id=int(cvataa.InteractionResultAttributes.CONFIDENCE),
                        value=common.confidence(pred.score),
                    )
                ],
            )
        ]


create = SqueezeSAMInteraction
