"""What runs on Dask workers for ``sqsam annotate --dask`` (imported only when Dask is installed).

:class:`ModelPlugin` is a ``distributed.WorkerPlugin``: registered once per run, it loads the
model on every worker when the worker starts (or joins later), so tasks never load it.
"""

from __future__ import annotations

from distributed import WorkerPlugin, get_worker

from sqsam_core.annotate.inputs import ImageJob
from sqsam_core.annotate.work import AnnotateSettings, guarded, load_model

PLUGIN_NAME = "sqsam-model"


class ModelPlugin(WorkerPlugin):
    """Holds one model per worker (``settings.threads`` ONNX threads, one by default)."""

    name = PLUGIN_NAME

    def __init__(self, settings: AnnotateSettings):
        self.settings = settings
        self.model = None

    def setup(self, worker) -> None:
        self.model = load_model(self.settings)


def annotate_task(job: ImageJob, settings: AnnotateSettings) -> tuple[dict, list]:
    """The Dask task: one image with the worker's model."""
    return guarded(get_worker().plugins[PLUGIN_NAME].model, job, settings)
