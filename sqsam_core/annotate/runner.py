"""Where ``sqsam annotate`` runs its images: this process, local worker processes, or Dask.

Every way calls :func:`sqsam_core.annotate.work.annotate_image` with a model of
``settings.threads`` ONNX threads (one by default), so the same job gives the same record
whichever way it runs. At most ``2 x workers`` images are in flight; each result is handed to
``on_result(record, files)`` in this process as soon as it arrives (in completion order).

* ``run_inline``: one model here (``--workers 1``).
* ``run_processes``: ``--workers N`` spawned processes, one model each, loaded once by the
  pool's initializer.
* ``run_dask``: a ``dask.distributed`` client, on a ``LocalCluster`` (``--dask local``:
  ``n_workers = N``, one thread each, processes) or a running scheduler (``--dask
  tcp://HOST:PORT``). :class:`~sqsam_core.annotate.dask_worker.ModelPlugin`, a Dask
  ``WorkerPlugin``, loads the model once per worker (also on workers that join later); tasks pass
  image paths, so every worker must see the images under the same paths (a shared or identical file system).
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import signal
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Callable, Iterable

from sqsam_core.annotate.inputs import ImageJob, InputError
from sqsam_core.annotate.work import AnnotateSettings, guarded, load_model

OnResult = Callable[[dict, list], None]
DASK_MISSING = 'Dask is not installed: pip install "sqsam[dask]" (dask[distributed])'


def run_inline(jobs: Iterable[ImageJob], settings: AnnotateSettings, on_result: OnResult) -> None:
    model = load_model(settings)
    for job in jobs:
        on_result(*guarded(model, job, settings))


# --------------------------------------------------------------------------------------------
# Local processes
# --------------------------------------------------------------------------------------------

_PROCESS_MODEL = None


def _init_process(settings: AnnotateSettings) -> None:
    global _PROCESS_MODEL
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _PROCESS_MODEL = load_model(settings)


def _process_task(job: ImageJob, settings: AnnotateSettings) -> tuple[dict, list]:
    return guarded(_PROCESS_MODEL, job, settings)


def run_processes(jobs: Iterable[ImageJob], settings: AnnotateSettings, workers: int, on_result: OnResult) -> None:
    context = multiprocessing.get_context("spawn")
    pending = iter(jobs)
    executor = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_process, initargs=(settings,))
    try:
        in_flight = {executor.submit(_process_task, job, settings): job
                     for job in itertools.islice(pending, 2 * workers)}
        while in_flight:
            finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in finished:
                job = in_flight.pop(future)
                try:
                    record, files = future.result()
                except Exception as exc:  # the worker process died (killed, out of memory)
                    raise RuntimeError(f"a worker process died while annotating {job.key}: {exc}") from None
                on_result(record, files)
                for next_job in itertools.islice(pending, 1):
                    in_flight[executor.submit(_process_task, next_job, settings)] = next_job
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------------------------
# Dask
# --------------------------------------------------------------------------------------------


def import_distributed():
    """``distributed``, or :class:`InputError` naming the extra to install."""
    try:
        import distributed
    except ImportError:
        raise InputError(DASK_MISSING) from None
    return distributed


def open_dask_client(address: str, workers: int):
    """A client of a new ``LocalCluster`` (``address == "local"``) or of the scheduler at ``address``."""
    distributed = import_distributed()
    if address == "local":
        cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                           host="127.0.0.1", dashboard_address=None,
                                           silence_logs=logging.ERROR)
        return distributed.Client(cluster), cluster
    try:
        return distributed.Client(address, timeout="20s"), None
    except (OSError, TimeoutError, ValueError) as exc:
        raise InputError(f"--dask {address}: cannot reach the scheduler ({exc})") from None


def run_dask(jobs: Iterable[ImageJob], settings: AnnotateSettings, address: str, workers: int,
             on_result: OnResult, run_id: str = "run") -> None:
    distributed = import_distributed()
    from sqsam_core.annotate.dask_worker import PLUGIN_NAME, ModelPlugin, annotate_task

    client, cluster = open_dask_client(address, workers)
    try:
        client.register_plugin(ModelPlugin(settings), name=PLUGIN_NAME)
        slots = 2 * max(workers, len(client.scheduler_info().get("workers", {})) or 1)
        pending = iter(jobs)
        by_key: dict[str, ImageJob] = {}

        def submit(job: ImageJob):
            key = f"sqsam-annotate-{run_id}-{job.index}"
            by_key[key] = job
            return client.submit(annotate_task, job, settings, key=key, pure=False)

        futures = distributed.as_completed([submit(job) for job in itertools.islice(pending, slots)])
        for future in futures:
            try:
                record, files = future.result()
            except distributed.client.FutureCancelledError:
                raise RuntimeError("the Dask scheduler cancelled the run") from None
            except Exception as exc:  # the task killed its workers (KilledWorker) or could not run
                job = by_key[future.key]
                record, files = {"index": job.index, "key": job.key, "failed": f"Dask worker failed: {exc}"}, []
            by_key.pop(future.key, None)
            future.release()
            on_result(record, files)
            for next_job in itertools.islice(pending, 1):
                futures.add(submit(next_job))
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
