"""``sqsam bench``: speed, cost and scale of sqsam on this machine, in one run.

Everything is measured on synthetic images generated in memory (:mod:`.synthetic`: smooth noise
plus flat shapes, JPEG-encoded with Pillow), so the run needs no data set:

* :mod:`.timing` -- per click (``SqueezeSAM.predict`` on a cached 1 MP image, clicks added one at
  a time with the previous prediction fed back), first click on a new 1 MP and 12 MP image stage
  by stage (decode, letterbox/normalise, model, mask), automask, bulk pre-annotation throughput
  with 1 and 2 worker threads sharing one model, an ONNX Runtime op profile of one pass;
* :mod:`.machine` -- CPU and library versions, the float32 matmul peak, peak RSS;
* :mod:`.flops` -- the model's multiply-accumulates, counted from the ONNX graph;
* :mod:`.http` -- the Label Studio round trip over HTTP against a ``sqsam serve label-studio``
  process (:mod:`.server`), interactive and batch;
* :mod:`.sam` -- the SAM ViT-B / MobileSAM speed baseline (the ``bench`` extra; export in
  :mod:`.sam_export`, a subprocess);
* :mod:`.run` -- the whole run as one report; :mod:`.report` -- its table;
  :mod:`.command` -- the ``sqsam bench`` command; :mod:`.annotate` -- ``sqsam bench-annotate``.

The method is described in docs/benchmarks.md. Nothing here asserts a time: targets are
reported as met or missed.

This package imports no adapter: the backend it measures runs as a separate process.
"""

from sqsam_core.bench.config import DEFAULT_SIZES, TARGETS, BenchConfig
from sqsam_core.bench.flops import count_macs
from sqsam_core.bench.report import format_report
from sqsam_core.bench.run import evaluate_targets, run_bench
from sqsam_core.bench.stats import size_label, summarize
from sqsam_core.bench.synthetic import Shape, SyntheticImage, click_sequence, synthetic_jpeg, synthetic_rgb

__all__ = ["DEFAULT_SIZES", "TARGETS", "BenchConfig", "Shape", "SyntheticImage", "click_sequence", "count_macs",
           "evaluate_targets", "format_report", "run_bench", "size_label", "summarize", "synthetic_jpeg",
           "synthetic_rgb"]
