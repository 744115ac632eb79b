"""What ``sqsam bench`` runs and how often (:class:`BenchConfig`), and the targets it reports against."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

Log = Callable[[str], None]

#: Speed targets on a 2-core CPU, reported as met or missed: (key, description, op, value).
TARGETS = (
    ("per_click_p50_ms", "per-click p50", "<=", 30.0),
    ("first_click_1mp_p50_ms", "first click, new 1 MP image, p50", "<=", 80.0),
    ("label_studio_interactive_p50_ms", "Label Studio /predict round trip p50", "<=", 60.0),
    ("sam_vit_b_first_click_ratio", "first click vs SAM ViT-B (x faster)", ">=", 5.0),
)

DEFAULT_SIZES = ((1152, 864), (4000, 3000))  # ~1 MP and 12 MP, 4:3


@dataclass
class BenchConfig:
    """What to run and how often. :meth:`quick_config` is for development and tests."""

    model_path: str | None = None
    threads: int | None = None  # ONNX Runtime intra-op threads of the interactive model (None = ORT default)
    sizes: Sequence[tuple[int, int]] = DEFAULT_SIZES  # first = the interactive / automask image
    interactions: int = 12  # per-click: this many interactions ...
    clicks_per_interaction: int = 5  # ... of this many clicks each
    first_click_repeats: Sequence[int] = (15, 5)  # per size
    automask_repeats: int = 8
    throughput_images: int = 12
    workers: Sequence[int] = (1, 2)
    matmul_size: int = 2048
    matmul_repeats: int = 5
    profile_runs: int = 20
    label_studio: bool = True
    ls_interactions: int = 10  # x clicks_per_interaction requests
    ls_batch_requests: int = 4
    ls_batch_tasks: int = 4
    sam: bool = True
    sam_variants: Sequence[str] = ("vit_b", "mobilesam")
    sam_cache_dir: str | None = None
    sam_export: bool = True  # export SAM models when they are not cached yet
    sam_encoder_repeats: int = 3
    quick: bool = False

    @classmethod
    def quick_config(cls, **overrides) -> "BenchConfig":
        base = dict(interactions=3, first_click_repeats=(3, 2), automask_repeats=2, throughput_images=3,
                    matmul_size=1024, matmul_repeats=3, profile_runs=5, ls_interactions=2,
                    ls_batch_requests=2, ls_batch_tasks=2, sam_export=False, sam_encoder_repeats=1, quick=True)
        base.update(overrides)
        return cls(**base)

