"""Int8 variant of an exported model (ONNX Runtime static quantisation, QDQ, per-channel).

    python -m sqsam_train.quantize models/weights/squeezesam.onnx /tmp/squeezesam-int8.onnx

Calibration inputs are recorded from serving passes on *training* images (never eval/): the
saliency pass and a few simulated clicks through the runtime's own predictor (full and zoom-in
views, previous mask fed back), so activations are calibrated on what serving feeds the model.
The contract metadata is copied over. Whether the int8 file ships is decided by measured quality
and speed (models/EXPERIMENTS.md, *squeezesam-v6 int8*).
"""

from __future__ import annotations

import argparse
import re
from dataclasses import replace
from pathlib import Path

import numpy as np

from sqsam_core import SqueezeSAM
from sqsam_core.config import DATA_HELP, data_root
from sqsam_core.evaluation import evaluate_object, iter_dataset


class CalibrationReader:
    """Feeds ONNX Runtime's calibrator the contract inputs of real serving passes.

    For each of ``count`` training objects: the zero-click (saliency) pass, then up to
    ``clicks`` passes of the evaluation protocol (:func:`~sqsam_core.evaluation.evaluate_object`:
    :func:`sqsam_core.geometry.next_click` on the presented mask, previous mask fed back), so the
    calibration sees full views and zoom-in views, with and without a previous mask.
    """

    def __init__(self, model: SqueezeSAM, data_root: Path, count: int, clicks: int = 3):
        self.feeds: list[dict[str, np.ndarray]] = []
        serve = model.backend
        model.backend = self._recording(serve)
        try:
            for set_name in ("ECSSD", "COCO_MVal", "Human"):
                for obj in iter_dataset(data_root / "train" / set_name, limit=count // 3):
                    self._simulate(model, obj, clicks)
        finally:
            model.backend = serve
        self._iter = iter(self.feeds)

    def _recording(self, serve):
        def backend(inputs):
            self.feeds.append({name: np.array(value) for name, value in inputs.items()})
            return serve(inputs)
        return backend

    @staticmethod
    def _simulate(model: SqueezeSAM, obj, clicks: int) -> None:
        """The saliency pass, then ``clicks`` clicks of the evaluation protocol on ``obj``."""
        prepared = model.prepare(obj.image)
        model.predict(prepared)
        evaluate_object(model, replace(obj, image=prepared), max_clicks=clicks, zero_click=False)

    def get_next(self):
        return next(self._iter, None)

    def rewind(self):
        self._iter = iter(self.feeds)


# Parts kept in float32 by ``--keep-float default``: the stem (RGB meets the prompt maps), the
# attention block and the two heads, the layers whose precision the masks and scores lean on most.
SENSITIVE_NODES = r"^/encoder/stem/|^/context/|^/mask_head/|^/iou_head/"


def nodes_matching(path: Path, pattern: str | None) -> list[str]:
    """Names of the graph's nodes matching the regular expression ``pattern`` (none for None)."""
    import onnx

    if not pattern:
        return []
    regex = re.compile(pattern)
    return [node.name for node in onnx.load(str(path)).graph.node if regex.search(node.name)]


def quantize(src: Path, dst: Path, data_root: Path, count: int = 48, keep_float: str | None = None,
             calibration: str = "minmax") -> None:
    """Write the int8 model of ``src`` to ``dst``; nodes whose names match ``keep_float`` stay float32."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    model = SqueezeSAM(src)
    reader = CalibrationReader(model, data_root, count)
    prepped = dst.with_suffix(".pre.onnx")
    quant_pre_process(str(src), str(prepped), skip_symbolic_shape=True)
    quantize_static(str(prepped), str(dst), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=methods[calibration],
                    nodes_to_exclude=nodes_matching(prepped, keep_float))
    prepped.unlink()
    out = onnx.load(str(dst))
    del out.metadata_props[:]
    for key, value in model.spec.to_metadata().items():
        entry = out.metadata_props.add()
        entry.key = key
        entry.value = value + "-int8" if key == "sqsam.model_version" else value
    onnx.save(out, str(dst))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--data", type=Path, default=data_root(), help=f"data root (default {DATA_HELP})")
    p.add_argument("--count", type=int, default=48)
    p.add_argument("--keep-float", default=None, metavar="REGEX",
                   help=f"node names kept in float32; 'default' = {SENSITIVE_NODES!r}")
    p.add_argument("--calibration", choices=("minmax", "percentile", "entropy"), default="minmax")
    args = p.parse_args(argv)
    keep = SENSITIVE_NODES if args.keep_float == "default" else args.keep_float
    quantize(args.src, args.dst, args.data, args.count, keep, args.calibration)
    print(f"wrote {args.dst} ({args.dst.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
