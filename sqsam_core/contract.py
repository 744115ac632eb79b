"""The ONNX model contract: input/output names, metadata keys, and how hypotheses are chosen.

The full text is docs/model-contract.md. The exporter writes these metadata keys; the runtime
reads them, so no number here is hard-coded twice. Bump ``CONTRACT_VERSION`` whenever the inputs,
outputs or their meaning change, on both sides together.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

CONTRACT_VERSION = 1

INPUT_NAMES = ("image", "clicks", "prev_mask", "box")
OUTPUT_NAMES = ("masks", "iou")

# Defaults the exporter writes into the model's metadata (the runtime always reads the file's).
DEFAULT_INPUT_SIZE = 320
DEFAULT_CLICK_RADIUS = 5.0
DEFAULT_MEAN = (0.485, 0.456, 0.406)
DEFAULT_STD = (0.229, 0.224, 0.225)

#: What each hypothesis means for a single click, in order, in models that declare it
#: (``sqsam.hypotheses``): 0 the whole object holding the click, 1 the clicked part. Models without
#: the key were trained best-of-K: any hypothesis may be either, and the best-scored one is shown.
HYPOTHESES = ("whole", "part")
GRANULARITIES = HYPOTHESES


@dataclass(frozen=True)
class ModelSpec:
    """What a model file declares about itself (ONNX ``metadata_props``).

    ``input_size`` S: side of the square input; ``click_radius`` R: disk radius in model
    pixels; ``num_masks`` K; ``stride``: S divided by the side of the output masks.
    """

    input_size: int
    click_radius: float
    num_masks: int
    stride: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    contract_version: int
    model_version: str
    hypotheses: tuple[str, ...] = ()  # the meaning of each hypothesis for a single click; () = best-of-K

    def to_metadata(self) -> dict[str, str]:
        meanings = {"sqsam.hypotheses": ",".join(self.hypotheses)} if self.hypotheses else {}
        return meanings | {
            "sqsam.contract_version": str(self.contract_version),
            "sqsam.model_version": self.model_version,
            "sqsam.input_size": str(self.input_size),
            "sqsam.click_radius": repr(float(self.click_radius)),
            "sqsam.num_masks": str(self.num_masks),
            "sqsam.stride": str(self.stride),
            "sqsam.mean": json.dumps(list(self.mean)),
            "sqsam.std": json.dumps(list(self.std)),
        }

    @classmethod
    def from_metadata(cls, meta: dict[str, str]) -> "ModelSpec":
        """Parse metadata; raises ``ValueError`` naming the first missing or bad key."""
        def get(key: str) -> str:
            full = f"sqsam.{key}"
            if full not in meta:
                raise ValueError(f"model metadata lacks '{full}'")
            return meta[full]

        try:
            spec = cls(
                input_size=int(get("input_size")),
                click_radius=float(get("click_radius")),
                num_masks=int(get("num_masks")),
                stride=int(get("stride")),
                mean=tuple(float(v) for v in json.loads(get("mean"))),
                std=tuple(float(v) for v in json.loads(get("std"))),
                contract_version=int(get("contract_version")),
                model_version=get("model_version"),
                hypotheses=tuple(h for h in meta.get("sqsam.hypotheses", "").split(",") if h),
            )
        except (TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"model metadata is malformed: {exc}") from None
        if spec.contract_version != CONTRACT_VERSION:
            raise ValueError(
                f"model follows contract v{spec.contract_version}, this sqsam reads v{CONTRACT_VERSION}"
            )
        if spec.input_size % spec.stride or len(spec.mean) != 3 or len(spec.std) != 3:
            raise ValueError("model metadata is inconsistent (input_size/stride/mean/std)")
        return spec


def is_ambiguous_prompt(num_clicks: int, has_box: bool) -> bool:
    """True for the one prompt that may mean a part or the whole: a single click, no box.

    Training gives the hypotheses their meanings (:data:`HYPOTHESES`) for it and trains
    hypothesis 0 for every other prompt; :func:`choose_hypothesis` presents accordingly.
    """
    return num_clicks == 1 and not has_box


def choose_hypothesis(scores: np.ndarray, num_clicks: int, has_box: bool, granularity: str = "whole",
                      hypotheses: tuple[str, ...] = ()) -> int:
    """Index of the mask hypothesis to present, given ``(K,)`` predicted IoUs.

    With two or more clicks or a box the prompt is specific and hypothesis 0 is trained for it (as
    in SAM's multimask convention), which keeps refinement stable from click to click; with no
    prompt at all, hypothesis 0 is trained for the salient object. An ambiguous prompt (a single
    click: part or whole?) takes the hypothesis whose meaning is ``granularity`` in a model that
    declares ``hypotheses`` (:data:`HYPOTHESES`); in a best-of-K model it takes the best-scored
    hypothesis for "whole" and, for "part", the best-scored of the others.
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {', '.join(GRANULARITIES)}, not {granularity!r}")
    if not is_ambiguous_prompt(num_clicks, has_box):
        return 0
    if granularity in hypotheses:
        return hypotheses.index(granularity)
    best = int(np.argmax(scores))
    if granularity == "whole" or len(scores) < 2:
        return best
    others = [i for i in range(len(scores)) if i != best]
    return max(others, key=lambda i: scores[i])
