"""sqsam core: CPU-first interactive segmentation with an early-fusion SqueezeSAM (ONNX Runtime).

    from sqsam_core import SqueezeSAM
    model = SqueezeSAM()
    pred = model.predict(image, clicks=[(x, y, True)])
"""

__version__ = "0.1.0"
__all__ = ["SqueezeSAM", "Prediction"]


def __getattr__(name):
    # Lazy, so that training (torch) can import the geometry module without onnxruntime.
    if name in ("SqueezeSAM", "Prediction"):
        from sqsam_core import predictor

        return getattr(predictor, name)
    raise AttributeError(name)
