"""Read a Label Studio labeling config: which images, which mask outputs, which prompt tools.

sqsam answers with ``BrushLabels`` (RLE masks) and/or ``PolygonLabels`` regions, one per output
control that points at the image; prompts come from smart ``KeyPointLabels`` (clicks) and
``RectangleLabels`` (boxes). Tag names are matched case-insensitively, as Label Studio does.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from sqsam_core.errors import SqsamError

OUTPUT_TYPES = {"brushlabels": "brushlabels", "polygonlabels": "polygonlabels"}
PROMPT_TYPES = {"keypointlabels", "rectanglelabels"}
MAX_CONFIG_CHARS = 1_000_000


class LabelConfigError(SqsamError):
    """The labeling config is not XML or lacks what sqsam needs."""


@dataclass(frozen=True)
class Control:
    """A control tag: ``type`` is the lower-case tag name (the result ``type`` in Label Studio)."""

    name: str
    type: str
    to_name: str
    labels: tuple[str, ...] = ()
    smart: bool = False

    def pick_label(self, wanted: str | None, default: str | None = None) -> str | None:
        """The label of this control to use for ``wanted``.

        Exact match first, then case-insensitive; otherwise ``default`` when it is one of ours,
        else the first label (None when the control has no labels).
        """
        if wanted is not None:
            if wanted in self.labels:
                return wanted
            for label in self.labels:
                if label.casefold() == str(wanted).casefold():
                    return label
        if default is not None:
            for label in self.labels:
                if label == default or label.casefold() == str(default).casefold():
                    return label
        return self.labels[0] if self.labels else None


@dataclass(frozen=True)
class ImageObject:
    name: str
    value_key: str  # task["data"][value_key] holds the image URL


@dataclass
class LabelConfig:
    images: dict[str, ImageObject] = field(default_factory=dict)
    outputs: list[Control] = field(default_factory=list)
    prompts: list[Control] = field(default_factory=list)

    def outputs_for(self, image_name: str) -> list[Control]:
        return [c for c in self.outputs if c.to_name == image_name]

    def first_target(self) -> ImageObject | None:
        """The image the first output control points at (pre-annotation target)."""
        for control in self.outputs:
            if control.to_name in self.images:
                return self.images[control.to_name]
        return None


def _attr(elem: ET.Element, name: str) -> str | None:
    for key, value in elem.attrib.items():
        if key.lower() == name.lower():
            return value
    return None


def _truthy(value: str | None) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes")


def parse_label_config(xml: str | None) -> LabelConfig:
    """Parse ``xml``; raises :class:`LabelConfigError` on an empty or malformed config."""
    if not xml or not isinstance(xml, str) or not xml.strip():
        raise LabelConfigError("the labeling config is empty")
    if len(xml) > MAX_CONFIG_CHARS:
        raise LabelConfigError("the labeling config is too large")
    if "<!ENTITY" in xml.upper():
        raise LabelConfigError("the labeling config must not declare XML entities")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise LabelConfigError(f"the labeling config is not valid XML: {exc}") from None
    except (UnicodeError, ValueError):  # e.g. a lone surrogate from a JSON \ud800 escape
        raise LabelConfigError("the labeling config is not valid text (unpaired surrogate or bad character)") from None
    config = LabelConfig()
    for elem in root.iter():
        if not isinstance(elem.tag, str):
            continue
        tag = elem.tag.lower()
        name = _attr(elem, "name")
        if tag == "image" and name:
            value = (_attr(elem, "value") or "").strip()
            config.images[name] = ImageObject(name, value[1:] if value.startswith("$") else value)
        elif tag in OUTPUT_TYPES or tag in PROMPT_TYPES:
            to_name = _attr(elem, "toName") or ""
            labels = tuple(
                v for v in (_attr(child, "value") for child in elem if isinstance(child.tag, str)
                            and child.tag.lower() == "label") if v is not None
            )
            control = Control(name or tag, tag, to_name.split(",")[0].strip(), labels,
                              _truthy(_attr(elem, "smart")) or _truthy(_attr(elem, "smartOnly")))
            (config.outputs if tag in OUTPUT_TYPES else config.prompts).append(control)
    return config
