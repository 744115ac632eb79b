"""``sqsam annotate``: pre-annotate whole image sets (auto-masks, or boxes turned into masks).

Modules, one job each: :mod:`.inputs` (image paths and box files), :mod:`.work` (one image's
objects), :mod:`.shards` (append-only result shards and resume), :mod:`.writers` (COCO, Label
Studio, PNG outputs), :mod:`.runner` (local processes or Dask; :mod:`.dask_worker` is what runs
on Dask workers), :mod:`.progress`, :mod:`.command` (the CLI) and :mod:`.bench`
(``sqsam bench-annotate``).
"""
