"""`boneseg segment`: geometry round trips, the fold ensemble, files and refusals."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from boneseg.core.config import Config
from boneseg.core.data.preprocess import apply_window, resize_planes, stack_25d
from boneseg.core.imaging.nifti import Volume, load_labels, save_volume
from boneseg.core.inference.folder import segment_files
from boneseg.core.inference.predict import (
    ModelRequest,
    ensemble_probabilities,
    find_checkpoints,
    load_fold_models,
    segment_volume,
)
from boneseg.core.labelmap import LABEL_FILE, label_description
from boneseg.core.networks.models import build_model
from boneseg.core.networks.runtime import Runtime
from boneseg.errors import DataError

SIZE, WINDOW = 32, [-200.0, 1500.0]

RT = Runtime(torch.device("cpu"), None, channels_last=True)  # inference on the CPU, fp32


def phantom(shape=(40, 56, 10)) -> np.ndarray:
    """Air, a soft-tissue body, a bright off-centre bone bar and a dimmer organ: no symmetry."""
    x, y, z = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    ct = np.full(shape, -1000.0, np.float32)
    ct[((x - 20) / 17) ** 2 + ((y - 28) / 24) ** 2 < 1] = 40
    ct[(x > 8) & (x < 14) & (y > 10) & (y < 40)] = 900
    ct[(x > 24) & (x < 34) & (y > 30) & (y < 48) & (z > 2)] = 150
    return ct


def phantom_labels(ct: np.ndarray) -> np.ndarray:
    return np.where(ct == 900, 1, np.where(ct == 150, 4, 0)).astype(np.int64)


def save_model(path, seed: int, classes: str = "multi", fold: int = 0, steps: int = 30):
    """A U-Net fitted for a few steps to the phantom (so its output follows the anatomy)."""
    from boneseg.core.networks.losses import segmentation_loss

    torch.manual_seed(seed)
    net, _ = build_model(5 if classes == "multi" else 2, "none")
    ct = phantom()
    x = torch.from_numpy(stack_25d(apply_window(resize_planes(ct, SIZE, "image"), WINDOW)))
    y = torch.from_numpy(resize_planes(phantom_labels(ct).astype(np.uint8), SIZE, "labels").astype(np.int64))
    if classes == "single":
        y = (y == 1).long()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    net.train()
    for _ in range(steps):
        loss = segmentation_loss(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.save({"model": net.state_dict(), "classes": classes, "variant": f"{classes}-random", "fold": fold,
                "preprocessing": {"image_size": SIZE, "window": WINDOW}, "weights": {"source": "none"}}, path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return [save_model(d / f"fold{k}.pt", seed=k, fold=k) for k in range(2)]


def cfg() -> Config:
    return Config.model_validate({"train": {"device": "cpu", "threads": 2}})


def segment(inp, out, model, **kw):
    """What `boneseg segment --model FILE_OR_FOLDER` runs."""
    return segment_files(cfg(), inp, out, ModelRequest(find_checkpoints(Path(model)), **kw), progress=False)


RAS = np.diag([0.8, 0.7, 3.0, 1.0])
RAS[:3, 3] = [-16.0, -20.0, 30.0]


def lps_affine(shape):
    """The same voxels stored with x and y flipped: an LPS file of the same patient."""
    flip = np.eye(4)
    flip[0, 0] = flip[1, 1] = -1
    flip[0, 3], flip[1, 3] = shape[0] - 1, shape[1] - 1
    return RAS @ flip


def oblique_affine(deg=12.0):
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    rot = np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    return rot @ RAS


def test_output_keeps_each_inputs_grid_and_labels_the_same_anatomy(tmp_path, models):
    ct = phantom()
    inputs = {
        "ras": (ct, RAS),
        "lps": (ct[::-1, ::-1, :], lps_affine(ct.shape)),
        # voxel axes stored as (z, x, y): the slice axis first
        "zxy": (np.transpose(ct, (2, 0, 1)), RAS[:, [2, 0, 1, 3]]),
        "oblique": (ct, oblique_affine()),
    }
    inp = tmp_path / "in"
    for name, (data, aff) in inputs.items():
        save_volume(Volume(np.ascontiguousarray(data), aff), inp / f"{name}.nii.gz")
    res = segment(inp, tmp_path / "out", str(models[0].parent))
    assert len(res) == 4
    out = {}
    for name, (data, aff) in inputs.items():
        img = nib.load(str(tmp_path / "out" / f"{name}.nii.gz"))
        assert img.shape == data.shape and img.get_data_dtype() == np.uint8
        np.testing.assert_allclose(img.affine, aff, atol=1e-5)
        assert nib.aff2axcodes(img.affine) == nib.aff2axcodes(aff)
        out[name] = np.asarray(img.dataobj)
    bone = phantom_labels(ct) == 1
    dice = 2 * (bone & (out["ras"] == 1)).sum() / (bone.sum() + (out["ras"] == 1).sum())
    assert dice > 0.8, f"the fitted model should find the bone bar (Dice {dice:.3f})"
    np.testing.assert_array_equal(out["lps"][::-1, ::-1, :], out["ras"])
    np.testing.assert_array_equal(np.transpose(out["zxy"], (1, 2, 0)), out["ras"])
    np.testing.assert_array_equal(out["oblique"], out["ras"])  # same voxels, the affine kept as given
    assert (tmp_path / "out" / LABEL_FILE).read_text() == label_description([1, 2, 3, 4])


def test_ensemble_is_the_mean_of_the_fold_models_probabilities(models):
    fms = load_fold_models(models, RT)
    planes = apply_window(resize_planes(phantom(), SIZE, "image"), WINDOW)
    each = [ensemble_probabilities([m], planes, RT) for m in fms]
    both = ensemble_probabilities(fms, planes, RT)
    assert not np.allclose(each[0], each[1], atol=1e-3)  # two different models
    np.testing.assert_allclose(both, (each[0] + each[1]) / 2, atol=1e-6)
    np.testing.assert_allclose(both.sum(axis=1), 1.0, atol=1e-5)
    only_fold1 = load_fold_models(models, RT, folds=[1])
    assert [m.fold for m in only_fold1] == [1]
    with pytest.raises(DataError, match="none of the 2 fold models"):
        load_fold_models(models, RT, folds=[7])


def test_bone_only_output_and_single_class_models(tmp_path, models):
    ct = Volume(phantom(), RAS)
    fms = load_fold_models(models, RT)
    full = segment_volume(fms, ct, RT)
    bone = segment_volume(fms, ct, RT, classes="bone")
    np.testing.assert_array_equal(bone, np.where(full == 1, 1, 0))
    single = save_model(tmp_path / "single.pt", seed=3, classes="single", steps=1)
    save_volume(ct, tmp_path / "ct.nii.gz")
    segment(tmp_path / "ct.nii.gz", tmp_path / "seg.nii.gz", str(single))
    assert set(np.unique(load_labels(tmp_path / "seg.nii.gz").data)) <= {0, 1}
    assert '"kidney"' not in (tmp_path / LABEL_FILE).read_text()
    with pytest.raises(DataError, match="differ in classes"):
        load_fold_models([models[0], single], RT)


def test_bad_inputs_are_refused_by_name_and_leave_no_output(tmp_path, models):
    save_volume(Volume(phantom(), RAS), tmp_path / "ct.nii.gz")
    raw = (tmp_path / "ct.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="cut.nii.gz.*truncated or corrupt"):
        segment(tmp_path / "cut.nii.gz", tmp_path / "o" / "cut.nii.gz", str(models[0]))
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
    with pytest.raises(DataError, match="would overwrite its input"):
        segment(tmp_path / "ct.nii.gz", tmp_path / "ct.nii.gz", str(models[0]))
    with pytest.raises(DataError, match="nope.pt: not found|not an existing checkpoint"):
        segment(tmp_path / "ct.nii.gz", tmp_path / "s.nii.gz", str(tmp_path / "nope.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="junk.pt: not a boneseg model checkpoint"):
        segment(tmp_path / "ct.nii.gz", tmp_path / "s.nii.gz", str(tmp_path / "junk.pt"))
    assert not (tmp_path / "s.nii.gz").exists()
