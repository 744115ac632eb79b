"""The learned edge refiner: its band, its tiled ONNX run, and its recipe (collect, train, export)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.train

from sqsam_train import edge_net  # noqa: E402
from sqsam_train import learned_edges as edges  # noqa: E402
from sqsam_train.learned_edges import LearnedEdgeRefine, boundary_band  # noqa: E402


def _ellipse_logits(height=150, width=230, blur=2.0):
    """Soft logits of an ellipse, as the network's upsampled output looks: ``(h, w)`` float32."""
    import cv2

    plane = np.full((height, width), -6.0, np.float32)
    cv2.ellipse(plane, (width // 2, height // 2), (width // 3, height // 3), 0, 0, 360, 6.0, -1)
    return cv2.GaussianBlur(plane, (0, 0), blur)


def _export_net(tmp_path, seed=0, zero_head=False):
    torch.manual_seed(seed)
    net = edge_net.build_edge_net(8)
    if not zero_head:
        torch.nn.init.normal_(net.head.weight, std=0.5)
    checkpoint = tmp_path / f"net{seed}.pt"
    torch.save({"state": net.state_dict(), "width": 8}, checkpoint)
    out = tmp_path / f"net{seed}.onnx"
    assert edge_net.export(checkpoint, out) < 1e-4
    return net.eval(), out


def test_band_is_the_pixels_within_band_px_of_the_boundary():
    logits = np.full((20, 20), -5.0, np.float32)
    logits[5:15, 5:15] = 5.0
    row = boundary_band(logits, 3)[10]
    np.testing.assert_array_equal(np.nonzero(row)[0], [2, 3, 4, 5, 6, 7, 12, 13, 14, 15, 16, 17])


def test_an_untrained_refiner_changes_nothing(tmp_path):
    _, path = _export_net(tmp_path, zero_head=True)
    logits = _ellipse_logits()
    rgb = np.random.default_rng(0).integers(0, 255, (*logits.shape, 3), dtype=np.uint8)
    np.testing.assert_array_equal(LearnedEdgeRefine(path)(logits, rgb), logits > 0)


def test_tiled_refinement_equals_the_network_on_the_whole_image(tmp_path):
    net, path = _export_net(tmp_path, seed=1)
    logits = _ellipse_logits()
    rgb = np.random.default_rng(1).integers(0, 255, (*logits.shape, 3), dtype=np.uint8)
    refiner = LearnedEdgeRefine(path, tile=32, confident_logit=100.0)
    tiled = refiner.refine_logits(logits, rgb)

    reach = edges.EDGE_NET_REACH
    planes = np.concatenate([rgb / 127.5 - 1.0, (logits / edges.EDGE_NET_LOGIT_SCALE)[..., None]], -1)
    import cv2

    padded = cv2.copyMakeBorder(planes.astype(np.float32), reach, reach, reach, reach, cv2.BORDER_REFLECT_101)
    with torch.no_grad():
        change = net(torch.from_numpy(padded.transpose(2, 0, 1)[None].copy()))[0, 0].numpy()
    whole = logits + change[reach:-reach, reach:-reach]
    band = boundary_band(logits)
    np.testing.assert_allclose(tiled[band], whole[band], atol=1e-4)
    np.testing.assert_array_equal(tiled[~band], logits[~band])


def test_confident_pixels_and_pixels_off_the_band_never_change(tmp_path):
    _, path = _export_net(tmp_path, seed=2)
    logits = _ellipse_logits(blur=0.7)  # a sharp edge: most band pixels are confident
    rgb = np.random.default_rng(2).integers(0, 255, (*logits.shape, 3), dtype=np.uint8)
    refined = LearnedEdgeRefine(path, confident_logit=3.0).refine_logits(logits, rgb)
    may_change = boundary_band(logits) & (np.abs(logits) < 3.0)
    np.testing.assert_array_equal(refined[~may_change], logits[~may_change])
    assert (refined[may_change] != logits[may_change]).any()


def test_training_moves_the_boundary_onto_the_image_edge(tmp_path):
    """Collected-style patches whose logits sit 2 px outside a bright square: training learns to snap."""
    import cv2

    rng = np.random.default_rng(0)
    patches = []
    for _ in range(64):
        size, left = edge_net.PATCH, int(rng.integers(14, 20))
        truth = np.zeros((size, size), bool)
        truth[left:-left, left:-left] = True
        rgb = np.where(truth[..., None], 180, 60).astype(np.uint8).repeat(3, 2)
        rgb = np.clip(rgb + rng.normal(0, 8, rgb.shape), 0, 255).astype(np.uint8)
        grown = cv2.dilate(truth.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(np.float32)
        logits = (cv2.GaussianBlur(grown, (0, 0), 1.5) - 0.5) * 8
        patches.append((rgb, logits.astype(np.float16), truth))
    rgb, logits, gt = (np.stack(column) for column in zip(*patches))
    data = tmp_path / "patches.npz"
    np.savez(data, rgb=rgb, logits=logits, gt=gt, source=np.array([f"ECSSD/{i}" for i in range(64)]))
    checkpoint, onnx_path = tmp_path / "edge.pt", tmp_path / "edge.onnx"
    edge_net.train([data], checkpoint, steps=150, batch=16, lr=1e-2, sets=("ECSSD",), seed=0, threads=1, width=8)
    assert edge_net.export(checkpoint, onnx_path) < 1e-4

    refiner = LearnedEdgeRefine(onnx_path, confident_logit=100.0)
    before = after = 0
    for i in range(8):
        plain = logits[i].astype(np.float32)
        before += ((plain > 0) != gt[i]).sum()
        after += (refiner(plain, rgb[i]) != gt[i]).sum()
    assert after < 0.5 * before


def test_the_predictor_runs_it_on_windows_and_on_a_very_large_images_downscaled_copy(tmp_path):
    """Both paths of ``SqueezeSAM._presented_mask``: a window at image scale, a 12 MP image at its source's."""
    from sqsam_core import SqueezeSAM
    from sqsam_core.predictor import ZOOM_SOURCE_MAX_SIDE

    _, path = _export_net(tmp_path, zero_head=True)  # changes nothing: the masks must match the plain ones
    plain = SqueezeSAM(edge_refine=None)
    learned = SqueezeSAM(edge_refine=LearnedEdgeRefine(path))
    rng = np.random.default_rng(3)
    for height, width in ((300, 400), (ZOOM_SOURCE_MAX_SIDE * 3 // 2, ZOOM_SOURCE_MAX_SIDE * 2)):
        image = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
        image[height // 4 : height // 2, width // 4 : width // 2] = (220, 200, 40)
        clicks = [(width * 3 // 8, height * 3 // 8, True)]
        expected = plain.predict(image, clicks).mask
        got = learned.predict(image, clicks).mask
        assert got.shape == (height, width)
        agreement = (got == expected).mean()
        assert agreement > 0.999, (height, width, agreement)


def test_collected_patches_are_the_shipped_models_band_on_the_object():
    from sqsam_core.evaluation import EvalObject
    from sqsam_core.predictor import default_model_path

    rng = np.random.default_rng(4)
    objects = []
    for i in range(2):
        image = rng.integers(0, 60, (200, 260, 3), dtype=np.uint8)
        gt = np.zeros((200, 260), bool)
        gt[50 + 10 * i : 150, 60 : 200 - 10 * i] = True
        image[gt] = (230, 190, 30)
        objects.append(EvalObject(f"ECSSD/{i}", image, gt, None))
    patches = edge_net.collect_patches(objects, default_model_path(), seed=0)
    count = len(patches["source"])
    assert 0 < count <= 2 * edge_net.CLICKS * edge_net.PATCHES_PER_STATE
    side = edge_net.PATCH
    assert patches["rgb"].shape == (count, side, side, 3) and patches["gt"].shape == (count, side, side)
    assert set(patches["source"]) <= {"ECSSD/0", "ECSSD/1"}
    for logits, gt, rgb in zip(patches["logits"], patches["gt"], patches["rgb"]):
        assert boundary_band(logits.astype(np.float32)).any()
        np.testing.assert_array_equal(gt, (rgb == (230, 190, 30)).all(-1))  # gt cut where the image was
        assert ((logits > 0) == gt).mean() > 0.8  # the model found the square: its logits agree
