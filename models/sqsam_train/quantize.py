"""Int8 variant of an exported model (ONNX Runtime static quantisation, QDQ, per-channel).

    python -m sqsam_train.quantize models/weights/squeezesam.onnx /tmp/squeezesam-int8.onnx --data ../shared/data

Calibration inputs are built from *training* images (never eval/) with a simulated click, through
the runtime's own preprocessing, so activations are calibrated on what serving feeds the model.
The contract metadata is copied over. Whether the int8 file ships is decided by measured quality
and speed (models/README.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from sqsam_core import SqueezeSAM, geometry
from sqsam_core.evaluation import iter_dataset


class CalibrationReader:
    """Feeds ONNX Runtime's calibrator the contract inputs of ``count`` training objects."""

    def __init__(self, model: SqueezeSAM, data_root: Path, count: int):
        self.feeds = []
        for set_name in ("ECSSD", "COCO_MVal", "Human"):
            for obj in iter_dataset(data_root / "train" / set_name, limit=count // 3):
                prepared = model.prepare(obj.image)
                point = geometry.interior_point(obj.gt)
                clicks = [(point[0], point[1], True)] if point else []
                self.feeds.append(model._model_inputs(prepared, clicks, None, None))
        self._iter = iter(self.feeds)

    def get_next(self):
        return next(self._iter, None)

    def rewind(self):
        self._iter = iter(self.feeds)


def quantize(src: Path, dst: Path, data_root: Path, count: int = 48) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = SqueezeSAM(src)
    reader = CalibrationReader(model, data_root, count)
    prepped = dst.with_suffix(".pre.onnx")
    quant_pre_process(str(src), str(prepped), skip_symbolic_shape=True)
    quantize_static(str(prepped), str(dst), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
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
    p.add_argument("--data", type=Path, default=Path("../shared/data"))
    p.add_argument("--count", type=int, default=48)
    args = p.parse_args(argv)
    quantize(args.src, args.dst, args.data, args.count)
    print(f"wrote {args.dst} ({args.dst.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
