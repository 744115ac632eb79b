"""CVAT adapters for sqsam (thin: request parsing and response building only, no model logic).

- ``sqsam_cvat.detection``: a cvat-sdk DetectionFunction for ``cvat-cli task auto-annotate``
  (salient objects as masks, or polygons when CVAT asks to convert masks to polygons).
- ``sqsam_cvat.interaction``: a cvat-sdk InteractionFunction for ``cvat-cli function
  create-native`` / ``run-agent`` (clicks and an optional box -> one mask).
- ``sqsam_cvat.common``: what both of them and the nuclio handlers in
  ``integrations/cvat/nuclio/main.py`` share: decoding CVAT frames, validating prompts,
  ordering clicks across requests, and CVAT's response layouts.

Everything model-related goes through ``sqsam_core.SqueezeSAM`` and ``sqsam_core.formats``.
"""

__all__ = ["common", "detection", "interaction"]
