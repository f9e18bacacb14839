"""Real-dataset readers (mtan .npy NYUv2/Cityscapes, CelebA), the mtan #34 augmentation and split protocols, on fixtures."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from mtl_bench.data.base import make_loader
from mtl_bench.data.celeba import CelebADataset, celeba_attribute_names
from mtl_bench.data.fixtures import (
    CELEBA_ATTRIBUTES,
    damage_celeba_image,
    write_cityscapes_fixture,
    write_fixtures,
    write_nyuv2_fixture,
)
from mtl_bench.data.mtan_npy import CityscapesDataset, NYUv2Dataset
from mtl_bench.data.splits import holdout_split, load_split, save_split
from mtl_bench.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RandomScaleCropFlip,
    ScaleCropParams,
    crop_size,
    scale_crop_flip,
)
from mtl_bench.errors import ConfigError, DatasetError, MTLBenchError

NYU_SIZE = (24, 32)
CS_SIZE = (16, 32)
N_TRAIN, N_TEST, CELEBA_N = 5, 3, 10


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    return write_fixtures(tmp_path_factory.mktemp("fixtures"), n_train=N_TRAIN, n_test=N_TEST, nyuv2_size=NYU_SIZE,
                          cityscapes_size=CS_SIZE, celeba_n=CELEBA_N, seed=0)


@pytest.fixture
def nyu_copy(roots, tmp_path) -> Path:
    """A private copy of the NYUv2 fixture that a test may damage."""
    return Path(shutil.copytree(roots["nyuv2"], tmp_path / "nyuv2"))


@pytest.fixture
def celeba_copy(roots, tmp_path) -> Path:
    return Path(shutil.copytree(roots["celeba"], tmp_path / "celeba"))


def nyu_layout(root: Path, folder: str = "train") -> str:
    return ", ".join(f"{root / folder / sub}/<i>.npy" for sub in ("image", "label", "depth", "normal")) + " (mtan preprocessed NYUv2)"


# ----------------------------------------------------------------------------------------------- NYUv2


def test_nyuv2_samples_follow_the_contract_and_equal_the_files(roots):
    root = roots["nyuv2"]
    for folder, n in (("train", N_TRAIN), ("val", N_TEST)):
        ds = NYUv2Dataset(root, folder)
        assert len(ds) == n and ds.image_size == NYU_SIZE and ds.num_classes == 13
        image, t = ds[n - 1]
        assert list(t) == ["seg", "depth", "normal"]
        assert image.shape == (3, *NYU_SIZE) and image.dtype == torch.float32
        assert t["seg"].shape == NYU_SIZE and t["seg"].dtype == torch.int64
        assert t["depth"].shape == (1, *NYU_SIZE) and t["depth"].dtype == torch.float32
        assert t["normal"].shape == (3, *NYU_SIZE) and t["normal"].dtype == torch.float32
        files = {sub: np.load(root / folder / sub / f"{n - 1}.npy") for sub in ("image", "label", "depth", "normal")}
        assert torch.equal(image, torch.from_numpy(np.moveaxis(files["image"], -1, 0).copy()))
        assert torch.equal(t["seg"], torch.from_numpy(files["label"]).long())
        assert torch.equal(t["depth"], torch.from_numpy(np.moveaxis(files["depth"], -1, 0).copy()))
        assert torch.equal(t["normal"], torch.from_numpy(np.moveaxis(files["normal"], -1, 0).copy()))
        assert set(t["seg"].unique().tolist()) <= set(range(-1, 13)) and (t["seg"] == -1).any()
        assert (t["depth"] == 0).any() and (t["depth"] >= 0).all()
        norms = t["normal"].norm(dim=0)
        invalid = (t["normal"] == 0).all(dim=0)
        assert invalid.any() and torch.allclose(norms[~invalid], torch.ones(()), atol=1e-5)


def test_nyuv2_batches_with_the_default_collate(roots):
    image, t = next(iter(DataLoader(NYUv2Dataset(roots["nyuv2"], "train"), batch_size=2)))
    assert image.shape == (2, 3, *NYU_SIZE)
    assert t["seg"].shape == (2, *NYU_SIZE) and t["depth"].shape == (2, 1, *NYU_SIZE) and t["normal"].shape == (2, 3, *NYU_SIZE)


def test_indices_tasks_and_normalisation(roots, nyu_copy):
    full = NYUv2Dataset(roots["nyuv2"], "train")
    sub = NYUv2Dataset(roots["nyuv2"], "train", indices=[4, 1], tasks=["depth"])
    assert len(sub) == 2 and list(sub[0][1]) == ["depth"]
    assert torch.equal(sub[0][1]["depth"], full[4][1]["depth"]) and torch.equal(sub[1][0], full[1][0])
    norm = NYUv2Dataset(roots["nyuv2"], "train", normalize="imagenet")
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert torch.allclose(norm[0][0], (full[0][0] - mean) / std)
    shutil.rmtree(nyu_copy / "train" / "normal")  # folders of unused tasks need not exist
    assert len(NYUv2Dataset(nyu_copy, "train", tasks=["seg", "depth"])) == N_TRAIN
    with pytest.raises(DatasetError, match="missing folder .*normal"):
        NYUv2Dataset(nyu_copy, "train")
    with pytest.raises(ConfigError, match=r"index 5 is out of range .*5 samples, valid 0\.\.4"):
        NYUv2Dataset(roots["nyuv2"], "train", indices=[0, 5])
    with pytest.raises(ConfigError, match="tasks"):
        NYUv2Dataset(roots["nyuv2"], "train", tasks=["seg", "sem"])
    with pytest.raises(ConfigError, match="folder='test'"):
        NYUv2Dataset(roots["nyuv2"], "test")
    with pytest.raises(ConfigError, match="normalize='cifar'"):
        NYUv2Dataset(roots["nyuv2"], "train", normalize="cifar")


def test_files_are_memory_mapped_and_construction_reads_only_sample_zero(roots, monkeypatch):
    calls: list[tuple[str, object]] = []
    real_load = np.load

    def spy(path, *args, **kwargs):
        calls.append((Path(path).relative_to(roots["nyuv2"]).as_posix(), kwargs.get("mmap_mode")))
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(np, "load", spy)
    ds = NYUv2Dataset(roots["nyuv2"], "train")
    assert sorted(calls) == sorted((f"train/{sub}/0.npy", "r") for sub in ("image", "label", "depth", "normal"))
    calls.clear()
    ds[3]
    assert sorted(calls) == sorted((f"train/{sub}/3.npy", "r") for sub in ("image", "label", "depth", "normal"))


def test_missing_root_message(tmp_path):
    root = tmp_path / "nope"
    with pytest.raises(DatasetError) as e:
        NYUv2Dataset(root, "train")
    assert str(e.value) == f"NYUv2 root {root} does not exist or is not a folder; expected {nyu_layout(root)}"


def test_missing_file_message(nyu_copy):
    (nyu_copy / "train" / "depth" / "2.npy").unlink()
    with pytest.raises(DatasetError) as e:
        NYUv2Dataset(nyu_copy, "train")
    assert str(e.value) == (f"missing {nyu_copy}/train/depth/2.npy (4 files in depth/, 5 in image/); "
                            f"expected {nyu_layout(nyu_copy)}")
    (nyu_copy / "val" / "image" / "1.npy").unlink()  # a gap in image/ itself
    with pytest.raises(DatasetError, match=r"missing .*val/image/1\.npy \(2 files in image/ but not numbered 0\.\.1\)"):
        NYUv2Dataset(nyu_copy, "val")


def test_malformed_file_messages(nyu_copy):
    label0 = nyu_copy / "train" / "label" / "0.npy"
    np.save(label0, np.zeros((*NYU_SIZE, 3), dtype=np.float32))  # a label with 3 channels: caught at construction
    with pytest.raises(DatasetError) as e:
        NYUv2Dataset(nyu_copy, "train")
    assert str(e.value) == (f"{label0} has shape (24, 32, 3) and dtype float32; expected a label map (float or int class ids, "
                            f"-1 = ignore, 0..12) of shape (24, 32) like {nyu_copy}/train/image/0.npy (NYUv2)")
    np.save(label0, np.zeros(NYU_SIZE, dtype=np.float32))
    depth3 = nyu_copy / "train" / "depth" / "3.npy"
    np.save(depth3, np.ones((12, 16, 1), dtype=np.float32))  # wrong size, sample 3: caught when loaded
    ds = NYUv2Dataset(nyu_copy, "train")
    ds[2]
    with pytest.raises(DatasetError) as e:
        ds[3]
    assert str(e.value) == (f"{depth3} has shape (12, 16, 1) and dtype float32; expected a depth map (float, 0 = invalid) "
                            f"of shape (24, 32, 1) like {nyu_copy}/train/image/3.npy (NYUv2)")
    np.save(nyu_copy / "train" / "label" / "1.npy", np.full(NYU_SIZE, 13.0, dtype=np.float32))
    with pytest.raises(DatasetError, match=r"label/1\.npy has label values in \[13, 13\]; expected -1 \(ignore\) or class ids 0\.\.12"):
        ds[1]
    (nyu_copy / "train" / "normal" / "4.npy").write_bytes(b"not a numpy file")
    with pytest.raises(DatasetError, match=r"cannot read .*normal/4\.npy as a \.npy array"):
        ds[4]
    np.save(nyu_copy / "val" / "image" / "0.npy", np.full((*NYU_SIZE, 3), 255.0, dtype=np.float32))
    with pytest.raises(DatasetError, match=r"image/0\.npy has values in \[255, 255\]"):
        NYUv2Dataset(nyu_copy, "val")


# ----------------------------------------------------------------------------------------------- Cityscapes


def test_cityscapes_label_sets(roots, tmp_path):
    root = roots["cityscapes"]
    seven = CityscapesDataset(root, "train", label_set="7")
    nineteen = CityscapesDataset(root, "train", label_set=19)  # YAML ints are accepted
    libmtl = CityscapesDataset(root, "train", label_set="label")
    assert (seven.num_classes, nineteen.num_classes, libmtl.num_classes) == (7, 19, 7)
    assert seven.image_size == CS_SIZE and list(seven[0][1]) == ["seg", "depth"] and len(CityscapesDataset(root, "val")) == N_TEST
    for ds, folder, c in ((seven, "label_7", 7), (nineteen, "label_19", 19), (libmtl, "label", 7)):
        for i in range(len(ds)):
            seg = ds[i][1]["seg"]
            assert torch.equal(seg, torch.from_numpy(np.load(root / "train" / folder / f"{i}.npy")).long())
            assert seg.min() == -1 and seg.max() <= c - 1
    assert nineteen[0][1]["seg"].max() > 6  # really the 19-class files
    depth = seven[0][1]["depth"]
    assert torch.equal(depth, torch.from_numpy(np.load(root / "train" / "depth" / "0.npy")).permute(2, 0, 1))  # stored inverse depth
    with pytest.raises(ConfigError, match="label_set='2'"):
        CityscapesDataset(root, "train", label_set="2")
    only7 = Path(shutil.copytree(root, tmp_path / "cs"))
    shutil.rmtree(only7 / "train" / "label_19")
    shutil.rmtree(only7 / "train" / "label")
    assert len(CityscapesDataset(only7, "train", label_set="7")) == N_TRAIN
    message = r"missing folder .*train/label_19; expected .*label_19/<i>\.npy.*\(mtan preprocessed Cityscapes\)"
    with pytest.raises(DatasetError, match=message):
        CityscapesDataset(only7, "train", label_set="19")


def test_cityscapes_infers_the_256x512_size(tmp_path):
    root = write_cityscapes_fixture(tmp_path / "cs", n_train=1, n_test=1, size=(256, 512))
    ds = CityscapesDataset(root, "val", augment=True)
    image, t = ds[0]
    assert ds.image_size == (256, 512) and image.shape == (3, 256, 512) and t["depth"].shape == (1, 256, 512)


# ----------------------------------------------------------------------------------------------- augmentation


def _dense_sample(h: int = 24, w: int = 32, seed: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    normal = torch.randn(3, h, w, generator=g)
    normal = normal / normal.norm(dim=0, keepdim=True)
    normal[:, :3, :3] = 0
    seg = torch.randint(-1, 13, (h, w), generator=g)
    depth = torch.arange(1, h * w + 1, dtype=torch.float32).view(1, h, w)  # distinct values locate the source pixel
    depth[0, 0, :4] = 0
    return torch.rand(3, h, w, generator=g), {"seg": seg, "depth": depth, "normal": normal}


def test_scale_crop_resizes_with_the_official_rules():
    image, t = _dense_sample()
    p = ScaleCropParams(scale=1.5, top=5, left=7, flip=False)
    out_image, out = scale_crop_flip(image, t, p)
    h, w = crop_size(24, 32, 1.5)
    assert (h, w) == (16, 21)
    # nearest: output pixel (y, x) comes from source (top + floor(y·h/H), left + floor(x·w/W)); depth is divided by s
    cy, cx = 12, 16
    sy, sx = p.top + math.floor(cy * h / 24), p.left + math.floor(cx * w / 32)
    assert out["depth"][0, cy, cx] == t["depth"][0, sy, sx] / 1.5
    rows = p.top + torch.floor(torch.arange(24) * h / 24).long()
    cols = p.left + torch.floor(torch.arange(32) * w / 32).long()
    assert torch.equal(out["depth"], t["depth"][:, rows][:, :, cols] / 1.5)
    assert torch.equal(out["seg"], t["seg"][rows][:, cols]) and out["seg"].dtype == torch.int64
    ref = F.interpolate(image[None, :, 5:21, 7:28], size=(24, 32), mode="bilinear", align_corners=True)[0]
    assert torch.allclose(out_image, ref)
    assert torch.allclose(out_image[:, 0, 0], image[:, 5, 7]) and torch.allclose(out_image[:, -1, -1], image[:, 20, 27])
    ref_n = F.interpolate(t["normal"][None, :, 5:21, 7:28], size=(24, 32), mode="bilinear", align_corners=True)[0]
    assert torch.allclose(out["normal"], ref_n)  # not re-normalised by default, like the official code


def test_flip_negates_normal_x_and_twice_restores():
    image, t = _dense_sample()
    p = ScaleCropParams(scale=1.0, top=0, left=0, flip=True)
    f_image, f = scale_crop_flip(image, t, p)
    assert torch.equal(f_image, image.flip(-1)) and torch.equal(f["seg"], t["seg"].flip(-1))
    assert torch.equal(f["depth"], t["depth"].flip(-1))
    assert torch.equal(f["normal"][0], -t["normal"][0].flip(-1)) and torch.equal(f["normal"][1:], t["normal"][1:].flip(-1))
    back_image, back = scale_crop_flip(f_image, f, p)
    assert torch.equal(back_image, image) and all(torch.equal(back[k], t[k]) for k in t)


def test_random_augmentation_keeps_value_conventions():
    image, t = _dense_sample()
    aug = RandomScaleCropFlip(seed=1)
    seen_scales, seen_flips = set(), set()
    for _ in range(30):
        p = aug.sample_params(24, 32)
        h, w = crop_size(24, 32, p.scale)
        assert 0 <= p.top <= 24 - h and 0 <= p.left <= 32 - w
        seen_scales.add(p.scale)
        seen_flips.add(p.flip)
        _, out = scale_crop_flip(image, t, p)
        assert set(out["seg"].unique().tolist()) <= set(range(-1, 13))
        assert set((out["depth"] * p.scale).round().unique().tolist()) <= set(t["depth"].unique().tolist())  # nearest, then / s
    assert seen_scales == {1.0, 1.2, 1.5} and seen_flips == {True, False}


def test_renormalised_normals_are_unit_or_zero():
    image, t = _dense_sample()
    p = ScaleCropParams(scale=1.5, top=0, left=0, flip=False)
    plain = scale_crop_flip(image, t, p)[1]["normal"].norm(dim=0)
    assert (plain < 0.99).any()  # bilinear blending shortens vectors (and blends with invalid pixels)
    renorm = scale_crop_flip(image, t, p, renormalize_normals=True)[1]["normal"]
    n = renorm.norm(dim=0)
    zero = (renorm == 0).all(dim=0)
    assert zero[0, 0] and torch.allclose(n[~zero], torch.ones(()), atol=1e-5)


def test_augmentation_is_reproducible_under_its_seed(roots):
    a, b, c = RandomScaleCropFlip(seed=3), RandomScaleCropFlip(seed=3), RandomScaleCropFlip(seed=4)
    draws = [[x.sample_params(288, 384) for _ in range(20)] for x in (a, b, c)]
    assert draws[0] == draws[1] and draws[0] != draws[2]
    state = torch.random.get_rng_state()
    d1 = NYUv2Dataset(roots["nyuv2"], "train", augment=True, seed=7)
    d2 = NYUv2Dataset(roots["nyuv2"], "train", augment=True, seed=7)
    for i in (0, 1, 1):
        x1, t1 = d1[i]
        x2, t2 = d2[i]
        assert torch.equal(x1, x2) and all(torch.equal(t1[k], t2[k]) for k in t1)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is not consumed
    with pytest.raises(ConfigError, match="scales"):
        RandomScaleCropFlip(scales=[0.5, 1.0])


class _ParamsDataset(Dataset):
    """Returns the augmentation parameters drawn for each sample, and the worker that drew them."""

    def __init__(self) -> None:
        self.aug = RandomScaleCropFlip(seed=0)

    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int) -> torch.Tensor:
        p = self.aug.sample_params(288, 384)
        info = torch.utils.data.get_worker_info()
        return torch.tensor([p.scale, p.top, p.left, float(p.flip), info.id])


def test_dataloader_workers_get_distinct_reproducible_streams():
    def run() -> torch.Tensor:
        loader = make_loader(_ParamsDataset(), 1, shuffle=False, generator=torch.Generator().manual_seed(5), num_workers=2)
        out = torch.cat(list(loader))
        del loader
        return out

    first, second = run(), run()
    assert torch.equal(first, second)
    w0, w1 = first[first[:, 4] == 0, :4], first[first[:, 4] == 1, :4]
    assert len(w0) == len(w1) == 8 and not torch.equal(w0, w1)


# ----------------------------------------------------------------------------------------------- splits


def test_holdout_split_sizes_disjointness_and_determinism():
    train, val = holdout_split(795, 0.2, seed=0)
    assert (len(train), len(val)) == (636, 159)  # Elich et al.'s NYUv2 protocol (LibMTL's split size)
    assert len(holdout_split(2975, 0.2, seed=0)[1]) == 595  # their Cityscapes protocol
    assert sorted(train + val) == list(range(795)) and not set(train) & set(val)
    assert holdout_split(795, 0.2, seed=0) == (train, val) and holdout_split(795, 0.2, seed=1) != (train, val)
    assert holdout_split(10, 3, seed=0) == ([0, 1, 3, 5, 6, 7, 9], [2, 4, 8])  # pinned: RandomState(0) permutation
    for bad in (0, 10, 0.0, 1.0, True, "3"):
        with pytest.raises(ConfigError, match="val_size"):
            holdout_split(10, bad, seed=0)


def test_split_files_round_trip_and_validation(tmp_path):
    path = save_split(tmp_path / "split.json", [5, 0, 3], [1, 4])
    assert load_split(path, n=6) == ([5, 0, 3], [1, 4])  # file order kept
    cases = {
        "missing": (None, "does not exist"),
        "badjson": ("{train: [1]}", "is not valid JSON"),
        "keys": (json.dumps({"train": [0], "test": [1]}), r"has keys \['test', 'train'\]"),
        "overlap": (json.dumps({"train": [0, 1], "val": [1]}), r"indices \[1\] are in both"),
        "range": (json.dumps({"train": [0, 6], "val": [1]}), r"index 6 in 'train' is out of range for 6 samples"),
        "dup": (json.dumps({"train": [0, 0], "val": [1]}), "lists index 0 more than once"),
        "type": (json.dumps({"train": [0, 1.5], "val": [2]}), "contains 1.5"),
    }
    for name, (text, message) in cases.items():
        p = tmp_path / f"{name}.json"
        if text is not None:
            p.write_text(text)
        with pytest.raises(DatasetError, match=message):
            load_split(p, n=6)


# ----------------------------------------------------------------------------------------------- CelebA


def _read_attr_file(path: Path) -> tuple[list[str], dict[str, list[int]]]:
    lines = path.read_text().splitlines()
    return lines[1].split(), {ln.split()[0]: [int(v) for v in ln.split()[1:]] for ln in lines[2:]}


def test_celeba_attributes_and_partitions(roots):
    base = roots["celeba"] / "celeba"
    names, values = _read_attr_file(base / "list_attr_celeba.txt")
    assert names == list(CELEBA_ATTRIBUTES) and len(names) == 40
    assert celeba_attribute_names(roots["celeba"]) == names == celeba_attribute_names(base)  # both roots accepted
    partition = dict(ln.split() for ln in (base / "list_eval_partition.txt").read_text().splitlines())
    sizes = {}
    for split, code in (("train", "0"), ("val", "1"), ("test", "2")):
        ds = CelebADataset(roots["celeba"], split)
        sizes[split] = len(ds)
        assert ds.ids == sorted(k for k, v in partition.items() if v == code)
        assert ds.labels.tolist() == [[int(v == 1) for v in values[i]] for i in ds.ids]
    assert sizes == {"train": 6, "val": 2, "test": 2}


def test_celeba_samples_match_famo_preprocessing(roots):
    from torchvision import transforms

    ds = CelebADataset(roots["celeba"], "val")
    image, t = ds[1]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
    assert list(t) == list(CELEBA_ATTRIBUTES)
    assert all(v.shape == (1,) and v.dtype == torch.float32 and v.item() in (0.0, 1.0) for v in t.values())
    assert [t[a].item() for a in CELEBA_ATTRIBUTES] == ds.labels[1].tolist()
    famo = transforms.Compose([transforms.Resize((64, 64)), transforms.ToTensor()])  # FAMO experiments/celeba/data.py
    assert torch.equal(image, famo(Image.open(ds.files.images / ds.ids[1]).convert("RGB")))
    fast = CelebADataset(roots["celeba"], "val", fast_decode=True)[1][0]
    assert fast.shape == image.shape and (fast - image).abs().mean() < 4 / 255
    sub = CelebADataset(roots["celeba"], "val", attributes=["Smiling", "Male"], size=(32, 48), normalize="imagenet")
    image, t = sub[0]
    assert image.shape == (3, 32, 48) and list(t) == ["Smiling", "Male"] and image.min() < 0
    assert [t["Smiling"].item(), t["Male"].item()] == [ds.labels[0][31], ds.labels[0][20]]
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert batch[0].shape == (2, 3, 64, 64) and batch[1]["Young"].shape == (2, 1)
    with pytest.raises(ConfigError, match=r"attributes \['Smiling', 'Beard'\] are not valid \(unknown: \['Beard'\]\).*'No_Beard'"):
        CelebADataset(roots["celeba"], "val", attributes=["Smiling", "Beard"])
    with pytest.raises(ConfigError, match="split='valid'"):
        CelebADataset(roots["celeba"], "valid")
    for bad in (0, "64", (32, 0), (1, 2, 3)):
        with pytest.raises(ConfigError, match="expected a positive int or a pair"):
            CelebADataset(roots["celeba"], "val", size=bad)


def test_celeba_google_drive_layout_and_reordered_partition(celeba_copy, roots, tmp_path):
    src = celeba_copy / "celeba"
    official = tmp_path / "CelebA"
    (official / "Anno").mkdir(parents=True)
    (official / "Eval").mkdir()
    (official / "Img").mkdir()
    shutil.move(src / "list_attr_celeba.txt", official / "Anno")
    shutil.move(src / "img_align_celeba", official / "Img")
    lines = (src / "list_eval_partition.txt").read_text().splitlines()
    (official / "Eval" / "list_eval_partition.txt").write_text("\n".join(reversed(lines)) + "\n")
    ref = CelebADataset(roots["celeba"], "test")
    ds = CelebADataset(official, "test")
    assert ds.ids == ref.ids and np.array_equal(ds.labels, ref.labels) and torch.equal(ds[0][0], ref[0][0])


def test_celeba_errors(celeba_copy, tmp_path):
    with pytest.raises(DatasetError, match=r"CelebA root .*nope does not exist .*list_attr_celeba\.txt.*Google Drive release"):
        CelebADataset(tmp_path / "nope")
    base = celeba_copy / "celeba"
    attr = base / "list_attr_celeba.txt"
    text = attr.read_text()
    lines = text.splitlines()
    lines[4] = lines[4].replace(" 1", " 0", 1) if " 1" in lines[4] else lines[4].replace("-1", " 0", 1)
    attr.write_text("\n".join(lines) + "\n")
    message = r"list_attr_celeba\.txt line 5 is b'000003\.jpg .*expected '<id>\.jpg' and 40 values of 1 or -1"
    with pytest.raises(DatasetError, match=message):
        CelebADataset(celeba_copy, "train")
    attr.write_text(text.replace(str(CELEBA_N), str(CELEBA_N + 1), 1))
    with pytest.raises(DatasetError, match=f"declares {CELEBA_N + 1} images on line 1 but lists {CELEBA_N}"):
        CelebADataset(celeba_copy, "train")
    attr.write_text(text)
    (base / "img_align_celeba" / "000008.jpg").unlink()  # a val image (train 1-6, val 7-8, test 9-10)
    assert len(CelebADataset(celeba_copy, "train")) == 6
    with pytest.raises(DatasetError, match=r"missing .*img_align_celeba/000008\.jpg \(1 of the 2 'val' images"):
        CelebADataset(celeba_copy, "val")
    (base / "list_eval_partition.txt").unlink()
    with pytest.raises(DatasetError, match=r"found .*list_attr_celeba\.txt but not .*list_eval_partition\.txt"):
        CelebADataset(celeba_copy, "train")


@pytest.mark.parametrize(("how", "head"), [("text", "it starts with 3C 68 74"), ("empty", "it is empty")])
def test_celeba_non_jpeg_file_fails_when_the_split_is_built(celeba_copy, how, head):
    """The magic bytes are checked for every listed image before training: one line, the file, what is wrong, the layout."""
    damage_celeba_image(celeba_copy, "000010.jpg", how)  # a test image (train 1-6, val 7-8, test 9-10)
    with pytest.raises(DatasetError) as info:
        CelebADataset(celeba_copy, "test")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{celeba_copy / 'celeba' / 'img_align_celeba' / '000010.jpg'} is not a JPEG: {head}")
    assert "a JPEG starts with FF D8 FF (1 of the 2 'test' images listed in" in message
    assert message.endswith("(Google Drive release)")  # the expected layouts
    assert len(CelebADataset(celeba_copy, "train")) == 6  # the other splits do not list the file


@pytest.mark.parametrize("num_workers", [0, 1])
def test_celeba_corrupt_jpeg_fails_with_one_line_naming_the_file_when_loaded(celeba_copy, num_workers):
    """A valid header with a truncated body passes the build-time check; decoding it stops the loader with a
    one-line DatasetError naming the file — also from a worker process, whose exceptions torch re-raises with the
    worker's traceback as the message."""
    path = damage_celeba_image(celeba_copy, "000010.jpg", "truncated")
    ds = CelebADataset(celeba_copy, "test")
    assert torch.equal(ds[0][0], CelebADataset(celeba_copy, "test")[0][0])  # the intact image still loads
    loader = make_loader(ds, 2, shuffle=False, num_workers=num_workers)
    with pytest.raises(DatasetError) as info:
        list(loader)
    message = str(info.value)
    assert isinstance(info.value, MTLBenchError) and "\n" not in message, message
    assert message.startswith(f"cannot decode {path} as an image (image file is truncated")
    assert message.endswith("(in DataLoader worker process 0)" if num_workers else "(the file is corrupt: download it again)")
    if num_workers == 0:
        (path.parent / "000009.jpg").unlink()  # removed after the split was built
        with pytest.raises(DatasetError, match=r"^missing .*000009\.jpg \(listed in .*; it existed when the split was built\)$"):
            ds[0]


def test_write_fixtures_layout(roots):
    assert sorted(p.name for p in (roots["nyuv2"] / "train").iterdir()) == ["depth", "image", "label", "normal"]
    assert sorted(p.name for p in (roots["cityscapes"] / "val").iterdir()) == ["depth", "image", "label", "label_19", "label_7"]
    assert len(list((roots["celeba"] / "celeba" / "img_align_celeba").glob("*.jpg"))) == CELEBA_N
    assert np.load(roots["nyuv2"] / "val" / "image" / "2.npy").shape == (*NYU_SIZE, 3)
    with Image.open(roots["celeba"] / "celeba" / "img_align_celeba" / "000001.jpg") as img:
        assert img.format == "JPEG" and img.size == (178, 218)
    other = write_nyuv2_fixture(roots["nyuv2"].parent / "nyu_seed1", n_train=1, n_test=1, size=NYU_SIZE, seed=1)
    assert not np.array_equal(np.load(other / "train" / "image" / "0.npy"), np.load(roots["nyuv2"] / "train" / "image" / "0.npy"))
