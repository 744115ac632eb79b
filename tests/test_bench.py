"""``sqsam bench``: it runs and reports sane fields on tiny inputs. No timed assertions.

The bench runs on the click-echo ONNX fixture (conftest) with tiny synthetic images, few
repetitions and the SAM baseline off (one test exports a tiny SAM-shaped model when the
optional ``segment-anything`` package is installed).
"""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sqsam_core import bench, cli
from tests.conftest import build_fixture_model

TINY_SIZES = [(96, 64), (160, 120)]


def tiny_config(model_path: Path, **overrides) -> bench.BenchConfig:
    base = dict(model_path=str(model_path), sizes=TINY_SIZES, interactions=3, clicks_per_interaction=3,
                first_click_repeats=(3, 3), automask_repeats=3, throughput_images=3, matmul_size=128,
                matmul_repeats=3, profile_runs=3, ls_interactions=1, ls_batch_requests=2, ls_batch_tasks=2,
                sam=False)
    base.update(overrides)
    return bench.BenchConfig.quick_config(**base)


def assert_stats(stats: dict, n: int | None = None) -> None:
    assert stats["n"] >= 1 if n is None else stats["n"] == n
    assert stats["p50_ms"] > 0
    assert stats["p95_ms"] >= stats["p50_ms"]
    assert stats["min_ms"] <= stats["p50_ms"] <= stats["max_ms"]


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory) -> dict:
    model = build_fixture_model(tmp_path_factory.mktemp("bench") / "fixture.onnx")
    return bench.run_bench(tiny_config(model), log=lambda _msg: None)


def test_report_fields(quick_report):
    r = quick_report
    assert r["mode"] == "quick"
    m = r["machine"]
    assert m["logical_cores"] >= 1 and m["usable_cores"] >= 1
    assert m["onnxruntime"] and m["cpu_model"]
    assert r["model"]["model_version"] == "fixture-click-echo" and r["model"]["input_size"] == 64
    assert r["peak"]["gflops"] > 0 and r["peak"]["n"] == 128

    pc = r["per_click"]
    assert_stats(pc, n=3 * 3)
    assert_stats(pc["model_only"], n=3 * 3)
    assert pc["image"] == {"width": 96, "height": 64}

    assert [(f["width"], f["height"]) for f in r["first_click"]] == TINY_SIZES
    for fc in r["first_click"]:
        assert_stats(fc, n=3)
        for key in ("decode_p50_ms", "prepare_p50_ms", "predict_p50_ms", "model_p50_ms", "without_decode_p50_ms"):
            assert fc[key] > 0
        assert fc["jpeg_kb"] > 0

    am = r["automask"]
    assert_stats(am, n=3)
    assert am["model_passes_mean"] >= 1 and am["objects_mean"] >= 0

    assert [t["workers"] for t in r["throughput"]] == [1, 2]
    for tp in r["throughput"]:
        assert tp["images"] == 3 and tp["images_per_s"] > 0 and tp["ort_threads_per_worker"] >= 1

    assert r["memory"]["peak_rss_mb"] > 0 and r["memory"]["ru_maxrss_mb"] > 0
    assert r["profile"]["ops"] and abs(sum(o["share"] for o in r["profile"]["ops"]) - 1.0) < 0.05


def test_flops_of_fixture(quick_report):
    flops = quick_report["flops"]
    # the click-echo fixture has no Conv/MatMul/Gemm: nothing to count, nothing unresolved
    assert flops["macs"] == 0 and flops["unresolved"] == []
    assert "fraction_of_peak" not in quick_report["per_click"]


def test_label_studio_section(quick_report):
    ls = quick_report["label_studio"]
    if ls["status"] == "skipped":
        assert "not importable" in ls["reason"]
        pytest.skip(ls["reason"])
    assert ls["status"] == "ok", ls.get("reason")
    assert_stats(ls["interactive"], n=3)
    assert ls["interactive"]["server_p50_ms"] > 0
    assert ls["interactive"]["regions_returned"] >= 1  # the fixture echoes positive clicks as masks
    assert_stats(ls["batch"], n=2)
    assert ls["batch"]["tasks_per_request"] == 2


def test_sam_disabled_and_targets(quick_report):
    sam = quick_report["sam_baseline"]
    assert sam["status"] == "skipped" and "disabled" in sam["reason"]
    assert sam["ours"]["five_click_ms"] > sam["ours"]["first_click_ms"] > 0
    keys = [t["key"] for t in quick_report["targets"]]
    assert keys == [k for k, *_ in bench.TARGETS]
    by_key = {t["key"]: t for t in quick_report["targets"]}
    assert by_key["sam_vit_b_first_click_ratio"]["met"] is None
    assert isinstance(by_key["per_click_p50_ms"]["met"], bool)


def test_report_is_json_and_table(quick_report):
    text = json.dumps(quick_report)
    assert json.loads(text)["per_click"]["p50_ms"] == quick_report["per_click"]["p50_ms"]
    table = bench.format_report(quick_report)
    for needle in ("per click", "first click", "automask", "throughput", "peak RSS", "targets:"):
        assert needle in table


# ------------------------------------------------------------------------------------------------
# Pieces
# ------------------------------------------------------------------------------------------------


def test_summarize():
    s = bench.summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert s["n"] == 5 and s["p50_ms"] == 3.0 and s["min_ms"] == 1.0 and s["max_ms"] == 5.0
    assert s["p95_ms"] >= s["p50_ms"]
    assert bench.summarize([])["p50_ms"] is None


def test_synthetic_image_is_a_jpeg_with_a_target():
    img = bench.synthetic_jpeg(200, 150, seed=3)
    decoded = np.asarray(Image.open(io.BytesIO(img.jpeg)))
    assert decoded.shape == (150, 200, 3)
    t = img.target
    assert t.contains(t.cx, t.cy) and not t.contains(t.cx + 2.1 * t.rx, t.cy)
    clicks = bench.click_sequence(img, 5, np.random.default_rng(0))
    assert len(clicks) == 5 and clicks[0][2] is True
    assert all(0 <= x <= 199 and 0 <= y <= 149 for x, y, _ in clicks)


def test_count_macs_exact():
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.zeros((8, 3, 3, 3), np.float32), "w")  # Conv 3->8, 3x3, pad 1
    wt = numpy_helper.from_array(np.zeros((8, 4, 2, 2), np.float32), "wt")  # ConvTranspose 8->4, 2x2, stride 2
    m = numpy_helper.from_array(np.zeros((32, 16), np.float32), "m")  # MatMul K=32 -> 16
    g = numpy_helper.from_array(np.zeros((10, 16), np.float32), "g")  # Gemm transB: 16 -> 10
    shape = numpy_helper.from_array(np.array([1, 8 * 16 * 16 // 32, 32], np.int64), "shape")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("ConvTranspose", ["c", "wt"], ["ct"], strides=[2, 2]),
        helper.make_node("Reshape", ["c", "shape"], ["r"]),
        helper.make_node("MatMul", ["r", "m"], ["mm"]),
        helper.make_node("ReduceMean", ["mm"], ["avg"], axes=[1], keepdims=0),
        helper.make_node("Gemm", ["avg", "g"], ["y"], transB=1),
        helper.make_node("Einsum", ["mm", "mm"], ["e"], equation="bij,bkj->bik"),
    ]
    graph = helper.make_graph(
        nodes, "macs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("ct", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("e", TensorProto.FLOAT, None)],
        initializer=[w, wt, m, g, shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    r = bench.count_macs(model)
    conv = 8 * 16 * 16 * 3 * 3 * 3
    convt = 8 * 16 * 16 * 4 * 2 * 2
    matmul = 64 * 16 * 32
    gemm = 10 * 16
    einsum = 64 * 64 * 16
    assert r["unresolved"] == []
    assert r["macs"] == conv + convt + matmul + gemm + einsum
    assert r["gflops"] == pytest.approx(2 * r["macs"] / 1e9, abs=1e-4)


def test_count_macs_bundled_model(bundled_model):
    from tests.conftest import BUNDLED_MODEL

    r = bench.count_macs(BUNDLED_MODEL)
    assert r["macs"] > 0 and r["unresolved"] == []


def test_sam_baseline_skips_with_a_reason(tmp_path):
    image = bench.synthetic_jpeg(96, 64)
    from sqsam_core.bench import sam as bench_sam

    rgb = np.asarray(Image.open(io.BytesIO(image.jpeg)).convert("RGB"))
    out = bench_sam.run_baseline(["vit_b"], tmp_path, rgb, [bench.click_sequence(image, 2, np.random.default_rng(0))],
                                 threads=1, encoder_repeats=1, allow_export=False, log=lambda _m: None)
    assert out["vit_b"]["status"] == "skipped" and out["vit_b"]["reason"]


@pytest.mark.skipif(importlib.util.find_spec("segment_anything") is None or importlib.util.find_spec("torch") is None,
                    reason="segment-anything (the [bench] extra) is not installed")
@pytest.mark.train
def test_sam_baseline_pipeline_on_a_tiny_sam(tmp_path):
    """Export a tiny SAM-shaped model (same code path as ViT-B) and time it through the bench."""
    model = build_fixture_model(tmp_path / "fixture.onnx")
    config = tiny_config(model, sam=True, sam_variants=["tiny"], sam_cache_dir=str(tmp_path / "cache"),
                         sam_export=True, label_studio=False, profile_runs=0, workers=(1,))
    report = bench.run_bench(config, log=lambda _msg: None)
    sam = report["sam_baseline"]
    assert sam["status"] == "ok", sam
    tiny = sam["variants"]["tiny"]
    assert tiny["status"] == "ok"
    for key in ("preprocess", "encoder", "decoder_first_click", "decoder_per_click"):
        assert_stats(tiny[key])
    assert tiny["first_click_ms"] > 0 and tiny["per_click_ms"] > 0 and tiny["five_click_ms"] > 0
    assert tiny["encoder_gmacs"] > 0 and tiny["decoder_gmacs"] > 0
    assert set(sam["ratios"]["tiny"]) == {"first_click", "per_click", "five_click"}
    assert all(v > 0 for v in sam["ratios"]["tiny"].values())
    assert (tmp_path / "cache" / "tiny-encoder.onnx").is_file()


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------


def test_cli_registers_bench():
    import argparse
    from importlib.metadata import EntryPoint

    from sqsam_core import commands

    sub = argparse.ArgumentParser().add_subparsers()
    ep = EntryPoint("bench", "sqsam_core.bench.command:register_commands", commands.GROUP)
    assert "sqsam_core.bench.command" in commands.register_commands(sub, [ep])


def test_cli_bench_quick(tmp_path, capsys):
    model = build_fixture_model(tmp_path / "fixture.onnx")
    out = tmp_path / "bench.json"
    code = cli.main(["bench", "--quick", "--model", str(model), "--sizes", "96x64,128x96", "--repeats", "2",
                     "--workers", "1", "--no-sam", "--no-label-studio", "--no-profile", "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "per click" in printed and "targets:" in printed
    report = json.loads(out.read_text())
    assert report["per_click"]["clicks"] == 2 * 5
    assert [f["width"] for f in report["first_click"]] == [96, 128]
    assert report["label_studio"]["status"] == "skipped"
    assert "profile" not in report


@pytest.mark.parametrize("args", [["--sizes", "12by3"], ["--workers", "0"], ["--sam-variants", "vit_huge"],
                                  ["--model", "/nonexistent/model.onnx"]])
def test_cli_bench_bad_options(args, capsys):
    assert cli.main(["bench", "--quick", "--no-sam", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sqsam: error:") and "Traceback" not in err
