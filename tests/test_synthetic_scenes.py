"""The NYUv2-like 3-D variant of the generated scenes (``dataset=synthetic_scenes``: ``layout=room``, tilted object
planes, a ``normal`` task): the original flat scenes unchanged, determinism, normals consistent with the depth maps
and the tilt, the config, loss scales and per-sample gradient alignment at init, a short training run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mtl_bench.data.gradient_alignment import build, compose_config, measure
from mtl_bench.data.synthetic_images import (
    SceneParams,
    _shape_mask,
    build_synthetic_images,
    camera_rays,
    render_scene,
    sample_rng,
    tilt_frame,
)
from mtl_bench.errors import ConfigError
from mtl_bench.build import instantiate_checked
from mtl_bench.train import build_and_train

ROOM = {"layout": "room", "max_tilt": 45.0}
TINY = {"n_train": 5, "n_val": 3, "n_test": 3, "height": 32, "width": 40}
TASKS3 = ["seg", "depth", "normal"]


def angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.degrees(np.arccos(np.clip((a * b).sum(-1), -1.0, 1.0)))


def normals_from_depth(depth: np.ndarray) -> np.ndarray:
    """Normals (x right, y up, z towards the camera) of the 3-D points depth · ray, by central differences; (H-2)×(W-2)×3."""
    points = depth.astype(np.float64)[..., None] * camera_rays(*depth.shape)
    along_x = points[1:-1, 2:] - points[1:-1, :-2]
    along_y = points[2:, 1:-1] - points[:-2, 1:-1]  # image rows grow downwards (camera y down)
    facing = -np.cross(along_x, along_y)  # the cross product points away from the camera (z forward)
    n = facing * np.array([1.0, -1.0, -1.0])
    return n / np.linalg.norm(n, axis=-1, keepdims=True)


def test_flat_scenes_are_byte_identical_to_the_original_renderer():
    """Fingerprints of the pre-3-D renderer (commit 8426559): the default dataset and the corruption study's data stay."""
    assert build_synthetic_images(n_train=4, n_val=2, n_test=2).info["fingerprint"] == "a43f6ebe2bca111f9934fca386da7737"
    other = build_synthetic_images(n_train=4, n_val=2, n_test=2, height=32, width=40, seed=7, shapes=["disc", "cross", "ring"],
                                   max_objects=6)
    assert other.info["fingerprint"] == "ce26577c2a8a1ca2cf76144b34fb9070"
    assert "normal" not in build_synthetic_images(**TINY).tasks


def test_same_seed_same_bytes_other_split_or_seed_other_data():
    a, b = (build_synthetic_images(**TINY, **ROOM, tasks=TASKS3, seed=2) for _ in range(2))
    for split in ("train", "val", "test"):
        x, y = a.splits[split], b.splits[split]
        for name in ("images", "seg", "depth", "normal"):
            assert getattr(x, name).tobytes() == getattr(y, name).tobytes(), (split, name)
    assert a.info["fingerprint"] == b.info["fingerprint"]
    assert len(set(a.info["split_fingerprints"].values())) == 3
    assert not np.array_equal(a.splits["val"].images, a.splits["test"].images)
    assert not np.array_equal(a.splits["val"].normal, a.splits["test"].normal)
    c = build_synthetic_images(**TINY, **ROOM, tasks=TASKS3, seed=3)
    assert not np.array_equal(a.splits["train"].normal, c.splits["train"].normal)
    # normals are part of the fingerprint: the same images with and without the normal task differ only there
    d = build_synthetic_images(**TINY, **ROOM, tasks=["seg", "depth"], seed=2)
    assert np.array_equal(d.splits["train"].images, a.splits["train"].images) and d.splits["train"].normal is None
    assert d.info["fingerprint"] != a.info["fingerprint"]


def test_fronto_parallel_objects_have_normal_0_0_1_and_their_own_depth():
    for params in (SceneParams(32, 32, max_objects=6), SceneParams(32, 32, max_objects=6, layout="room")):
        for i in range(4):
            scene = render_scene(sample_rng(0, "train", i), params)
            assert scene.normal.shape == (32, 32, 3) and scene.normal.dtype == np.float32
            assert np.allclose(np.linalg.norm(scene.normal, axis=-1), 1.0, atol=1e-6)
            rows, cols = np.arange(32)[:, None] + 0.5, np.arange(32)[None, :] + 0.5
            for k, obj in enumerate(scene.objects):
                mine = scene.instance == k
                # the outline is the flat renderer's (in pixels); where it is not visible, something nearer hides it
                outline = _shape_mask(obj.shape, rows - obj.center[0], cols - obj.center[1], obj.radius, obj.angle)
                assert (mine & ~outline).sum() <= 1
                assert (scene.depth[outline & ~mine] < obj.depth + 1e-6).all()
                assert obj.normal == (0.0, 0.0, 1.0)
                assert (scene.normal[mine] == np.float32([0, 0, 1])).all()
                assert (scene.depth[mine] == np.float32(obj.depth)).all()


def test_tilted_planes_normals_match_their_tilt_and_their_depth():
    params = SceneParams(64, 64, min_objects=2, max_objects=4, max_tilt=50.0, layout="room")
    rays = camera_rays(64, 64)
    tilts = []
    for i in range(6):
        scene = render_scene(sample_rng(1, "val", i), params)
        for k, obj in enumerate(scene.objects):
            mine = scene.instance == k
            if mine.sum() < 12:
                continue
            n = np.asarray(obj.normal)
            tilts.append(angle_deg(n, np.array([0.0, 0.0, 1.0])))
            assert np.allclose(scene.normal[mine], n, atol=1e-6)
            # the visible pixels lie on the plane through the object's centre point with that normal
            m = n * np.array([1.0, -1.0, -1.0])  # camera frame
            points = scene.depth[mine].astype(np.float64)[:, None] * rays[mine]
            centre = obj.depth * np.array([(obj.center[1] - 32) / 64, (obj.center[0] - 32) / 64, 1.0])
            assert np.allclose(points @ m, centre @ m, atol=2e-5 * obj.depth)
            # convention by hand: a normal leaning right (x > 0) means depth grows to the right; up (y > 0): upwards
            rows, cols = np.nonzero(mine)
            slope_c, slope_r = np.linalg.lstsq(np.stack([cols, rows, np.ones_like(rows)], 1).astype(float),
                                               scene.depth[mine].astype(float), rcond=None)[0][:2]
            if abs(n[0]) > 0.1:
                assert np.sign(slope_c) == np.sign(n[0])
            if abs(n[1]) > 0.1:
                assert np.sign(slope_r) == -np.sign(n[1])
    assert len(tilts) >= 8 and max(tilts) <= 50.0 + 1e-9 and max(tilts) > 20.0 and np.std(tilts) > 5.0


@pytest.mark.parametrize("layout", ["flat", "room"])
def test_normal_maps_agree_with_finite_differences_of_the_depth_maps(layout):
    """Independent of the renderer's formulas: normals of the 3-D points depth·ray (central differences) on pixels
    inside one surface match the stored normals (objects, the room's floor and wall, the flat layout's background)."""
    params = SceneParams(48, 48, max_tilt=40.0, layout=layout)
    errors = []
    for i in range(4):
        scene = render_scene(sample_rng(0, "test", i), params)
        fd = normals_from_depth(scene.depth)
        stored = scene.normal.astype(np.float64)
        centre = stored[1:-1, 1:-1]
        smooth = np.ones(centre.shape[:2], dtype=bool)
        for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
            neighbour = stored[1 + dy:47 + dy, 1 + dx:47 + dx]
            smooth &= angle_deg(neighbour, centre) < 0.5
            smooth &= scene.instance[1 + dy:47 + dy, 1 + dx:47 + dx] == scene.instance[1:-1, 1:-1]
        errors.append(angle_deg(fd[smooth], centre[smooth]))
    errors = np.concatenate(errors)
    assert len(errors) > 4 * 48 * 48 * 0.5 and np.percentile(errors, 99) < 0.5, np.percentile(errors, [50, 99, 100])


def test_room_floor_faces_up_below_the_wall():
    scene = render_scene(sample_rng(0, "train", 3), SceneParams(48, 48, layout="room"))
    background = scene.instance == -1
    bottom, top = scene.normal[-1][background[-1]], scene.normal[0][background[0]]
    assert len(bottom) and len(top)
    assert (bottom[:, 1] > 0.9).all()  # the floor: y up, tilted towards the camera by the pitch (<= 15 deg)
    assert (np.abs(top[:, 1]) < math.sin(math.radians(15.0)) + 1e-6).all()  # the wall: vertical, seen from above


def test_tilt_frame_by_hand():
    """Azimuth 0 leans the plane's normal right, π/2 up; the in-plane axes are the image's right/down axes turned
    about the tilt axis (leaning right turns about the vertical, so the down axis stays)."""
    n, e1, e2 = tilt_frame(math.radians(30), 0.0)
    assert np.allclose(n, [0.5, 0.0, math.sqrt(3) / 2])
    assert np.allclose(e2, [0.0, 1.0, 0.0]) and np.allclose(e1, [math.sqrt(3) / 2, 0.0, 0.5])  # camera frame: z forward
    n, e1, e2 = tilt_frame(math.radians(30), math.pi / 2)
    assert np.allclose(n, [0.0, 0.5, math.sqrt(3) / 2]) and np.allclose(e1, [1.0, 0.0, 0.0])
    m = n * np.array([1.0, -1.0, -1.0])
    assert abs(e1 @ m) < 1e-12 and abs(e2 @ m) < 1e-12 and abs(e1 @ e2) < 1e-12


def test_targets_shapes_and_flip_negates_normal_x():
    bench = build_synthetic_images(**TINY, **ROOM, tasks=TASKS3, augment=True, aug_seed=1)
    assert list(bench.tasks) == TASKS3 and bench.tasks["normal"].out_dim == 3 and bench.tasks["normal"].kind == "normal"
    train = bench.splits["train"]
    flips = 0
    for i in range(len(train)):
        raw, targets = train.raw_sample(i)
        assert targets["normal"].shape == (3, 32, 40) and targets["normal"].dtype == torch.float32
        assert targets["seg"].dtype == torch.int64 and targets["depth"].shape == (1, 32, 40)
        image, out = train[i]
        if torch.equal(image, raw):
            assert torch.equal(out["normal"], targets["normal"])
            continue
        flips += 1
        expect = targets["normal"].flip(-1)
        expect[0] = -expect[0]
        assert torch.equal(image, raw.flip(-1)) and torch.equal(out["normal"], expect)
        assert torch.equal(out["depth"], targets["depth"].flip(-1))
    assert 0 < flips < len(train)


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"tasks": ["seg", "normal"]}, "task 'normal' needs 3-D scenes (dataset.layout=room or dataset.max_tilt > 0)"),
        ({"max_tilt": 61}, "dataset.max_tilt=61 is invalid; expected degrees in [0, 60]"),
        ({"max_tilt": -1.0}, "dataset.max_tilt=-1.0 is invalid"),
        ({"layout": "cave"}, "dataset.layout='cave' is invalid; choose one of ['flat', 'room']"),
    ],
)
def test_bad_values_are_one_line_config_errors(kwargs, needle):
    with pytest.raises(ConfigError) as info:
        build_synthetic_images(**{**TINY, **kwargs})
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_dataset_config_and_measured_init_scales_and_alignment():
    """The preset: 48x48 room scenes with 3 tasks on test_resnet + conv heads.  At init the losses differ in scale
    (depth in metres > seg cross-entropy > normal 1 - cos) and per-sample gradients of the shared encoder are far more
    aligned than on the MLP regression benchmark (whose isotropic inputs make them nearly orthogonal)."""
    cfg = compose_config(["logger=none", "dataset=synthetic_scenes", "dataset.n_train=16", "dataset.n_val=2", "dataset.n_test=2"])
    ds = cfg.dataset
    assert (ds.name, ds.layout, ds.max_tilt, list(ds.tasks), ds.height, ds.width) == ("synthetic_scenes", "room", 45.0, TASKS3, 48, 48)
    assert (cfg.backbone.model_name, cfg.heads.default._target_) == ("test_resnet", "mtl_bench.models.dense_heads.ConvHead")
    scenes = measure(*build(cfg), num_samples=12)
    loss = scenes.loss_at_init
    assert loss["depth"] > 1.3 * loss["seg"] and loss["seg"] > 1.3 * loss["normal"], loss
    small = ["dataset.n_train=64", "dataset.n_val=8", "dataset.n_test=8"]
    regression = measure(*build(compose_config(["logger=none", "dataset=synthetic", *small])), num_samples=12)
    assert scenes.abs_cos["all"] > 0.5 and regression.abs_cos["all"] < 0.15, (scenes.abs_cos, regression.abs_cos)


def test_short_training_run_on_three_tasks(make_cfg):
    cfg = make_cfg("dataset=synthetic_scenes", "dataset.height=32", "dataset.width=32", "dataset.n_train=32", "dataset.n_val=8",
                   "dataset.n_test=8", "trainer.epochs=1", "trainer.batch_size=16", "heads.default.hidden=16",
                   "trainer.checkpoint_every=0", "trainer.num_threads=1")
    threads = torch.get_num_threads()
    try:
        summary = build_and_train(cfg)
    finally:
        torch.set_num_threads(threads)
    assert summary["status"] == "completed" and summary["tasks"] == TASKS3
    assert summary["dataset"]["name"] == "synthetic_scenes" and summary["dataset"]["layout"] == "room"
    assert summary["dataset"]["fingerprint"] == instantiate_checked(cfg.dataset, "dataset").info["fingerprint"]
