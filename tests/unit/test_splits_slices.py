import json

import numpy as np
import pytest
import torch

from boneseg.core.config import Config, SplitsConfig
from boneseg.core.data.dataset import SliceDataset
from boneseg.core.data.preprocess import apply_window, resize_back, resize_planes, stack_25d
from boneseg.core.data.slices import build_slices
from boneseg.core.data.splits import check_splits, make_splits
from boneseg.core.labelmap import MULTI, SINGLE, LabelSpec
from boneseg.errors import DataError

CASES = [f"abd{i:03d}" for i in range(14)]
PHASES = {c: ("none", "arterial", "portal-venous")[i % 3] for i, c in enumerate(CASES)}


@pytest.mark.parametrize("folds,test", [(4, 2), (3, 0), (5, 3)])
def test_split_invariants(folds, test):
    s = make_splits(CASES, PHASES, SplitsConfig(folds=folds, test_cases=test, seed=7))
    check_splits(s, CASES)
    assert len(s["test"]) == test and len(s["folds"]) == folds
    vals = [v for f in s["folds"] for v in f["val"]]
    assert sorted(vals + s["test"]) == sorted(CASES)  # each case validates once or is test
    sizes = [len(f["val"]) for f in s["folds"]]
    assert max(sizes) - min(sizes) <= 1


def test_splits_deterministic_and_seeded():
    a = make_splits(CASES, PHASES, SplitsConfig(seed=1))
    assert a == make_splits(list(reversed(CASES)), PHASES, SplitsConfig(seed=1))
    assert a != make_splits(CASES, PHASES, SplitsConfig(seed=2))


def test_stratified_folds_see_every_phase():
    s = make_splits(CASES, PHASES, SplitsConfig(folds=3, test_cases=2, seed=0))
    for f in s["folds"]:
        assert len({PHASES[c] for c in f["val"]}) >= 2


def test_too_few_cases_is_a_clear_error():
    with pytest.raises(DataError, match="need at least 6"):
        make_splits(CASES[:5], PHASES, SplitsConfig(folds=4, test_cases=2))


def test_check_splits_catches_a_leak():
    s = make_splits(CASES, PHASES, SplitsConfig())
    s["folds"][0]["train"].append(s["test"][0])
    with pytest.raises(AssertionError, match="two roles"):
        check_splits(s, CASES)


def test_stack_25d_repeats_edges():
    vol = np.arange(4)[:, None, None] * np.ones((4, 2, 2))
    assert stack_25d(vol, 0)[0, :, 0, 0].tolist() == [0, 0, 1]
    assert stack_25d(vol, 2)[0, :, 0, 0].tolist() == [1, 2, 3]
    assert stack_25d(vol, 3)[0, :, 0, 0].tolist() == [2, 3, 3]
    every = stack_25d(vol)  # (Z, 3, S, S): the one stacking that training and inference share
    assert every.shape == (4, 3, 2, 2) and every.dtype == np.float32
    assert every[:, :, 0, 0].tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 3]]


def test_resampling_keeps_label_ids_and_geometry():
    rng = np.random.default_rng(0)
    lab = np.zeros((50, 70, 3), np.uint8)
    lab[10:30, 20:50] = 1
    lab[32:40, 5:15] = 4
    lab[40:45, 60:66] = 3
    out = resize_planes(lab, 32, "labels")
    assert out.shape == (3, 32, 32) and out.dtype == np.uint8
    assert set(np.unique(out)) <= {0, 1, 3, 4} and {1, 4} <= set(np.unique(out))
    img = resize_planes(rng.normal(size=(50, 70, 3)).astype(np.float32), 96, "image")
    assert img.shape == (3, 96, 96)
    probs = np.zeros((3, 2, 32, 32), np.float32)
    probs[:, 1] = 1
    back = resize_back(probs, (50, 70))
    assert back.shape == (50, 70, 3, 2) and np.allclose(back[..., 1], 1)


def test_window():
    w = apply_window(np.array([-1000, -200, 650, 1500, 3000]), (-200, 1500))
    assert w.tolist() == pytest.approx([0, 0, 0.5, 1, 1])


def test_the_label_spec_answers_ids_channels_and_merging_for_numpy_and_torch():
    import torch

    y = np.array([0, 1, 2, 3, 4], np.uint8)
    assert SINGLE.merge(y).tolist() == [0, 1, 0, 0, 0] and SINGLE.merge(y).dtype == np.uint8
    assert MULTI.merge(y).tolist() == [0, 1, 2, 3, 4]
    assert SINGLE.merge(torch.from_numpy(y)).tolist() == [0, 1, 0, 0, 0]
    assert (MULTI.channels, SINGLE.channels, MULTI.ids, SINGLE.ids) == (5, 2, [1, 2, 3, 4], [1])
    assert LabelSpec.of("bone") is SINGLE and LabelSpec.of("all") is MULTI
    assert MULTI.narrowed(SINGLE) is SINGLE and MULTI.narrowed(MULTI) is MULTI
    soft = np.zeros((5, 2, 2), np.uint8)
    soft[1], soft[2] = 100, 155  # 100/255 bone, the rest kidney
    for spec in (MULTI, SINGLE):  # numpy and torch give the same probabilities
        a, b = spec.soft(soft), spec.soft(torch.from_numpy(soft)).numpy()
        assert a.shape == (spec.channels, 2, 2) and np.array_equal(a, b)
        assert np.allclose(a.sum(axis=0), 1.0)
    with pytest.raises(ValueError, match="expected 'multi' or 'single'"):
        LabelSpec.of("dual")


def test_slices_stage_and_dataset(tmp_path):
    from boneseg.core.config import SynthConfig
    from boneseg.core.data import synth
    from boneseg.core.labelling.labels import derive_labels

    scfg = SynthConfig(seed=2, abdomen=2, thigh=1, matrix=64, slices=6)
    synth.synthesize(scfg, tmp_path / "raw", progress=False)
    cfg = Config.model_validate(
        {
            "data": {
                "raw_dir": str(tmp_path / "raw"),
                "labels_dir": str(tmp_path / "lab"),
                "slices_dir": str(tmp_path / "sl"),
                "image_size": 32,
                "corrections_dir": str(tmp_path / "c"), "proposals_dir": str(tmp_path / "p"),
            }
        }
    )
    derive_labels(cfg, progress=False)
    index = build_slices(cfg, progress=False)
    assert json.loads((tmp_path / "sl" / "index.json").read_text())["window"] == [-200.0, 1500.0]
    ds = SliceDataset(tmp_path / "sl", ["abd000", "abd001"], classes="single")
    assert len(ds) == index["cases"]["abd000"]["z"] + index["cases"]["abd001"]["z"]
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(x[0], x[1])  # first slice repeats itself as z-1
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    assert set(torch.unique(torch.cat([ds[i][1].flatten() for i in range(len(ds))])).tolist()) <= {0, 1}
    multi = SliceDataset(tmp_path / "sl", ["abd000"], classes="multi")
    assert max(int(multi[i][1].max()) for i in range(len(multi))) >= 2
    with pytest.raises(DataError, match="have no slices"):
        SliceDataset(tmp_path / "sl", ["nope"])
    # soft targets: per-pixel label fractions that sum to 1; their argmax agrees with the ids
    # wherever a pixel is mostly one label
    soft = SliceDataset(tmp_path / "sl", ["abd000"], classes="multi", targets="soft")
    hard = SliceDataset(tmp_path / "sl", ["abd000"], classes="multi")
    ys = torch.stack([soft[i][1] for i in range(len(soft))])
    yh = torch.stack([hard[i][1] for i in range(len(hard))])
    assert ys.shape == (len(soft), 5, 32, 32) and ys.dtype == torch.float32
    torch.testing.assert_close(ys.sum(1), torch.ones_like(ys[:, 0]), atol=1e-5, rtol=0)
    sure = ys.max(1).values > 0.9
    assert sure.float().mean() > 0.5 and torch.equal(ys.argmax(1)[sure], yh[sure])
    assert ((ys[:, 1] > 0.05) & (ys[:, 1] < 0.95)).any()  # partial bone pixels exist (thin shells)
    single = SliceDataset(tmp_path / "sl", ["abd000"], classes="single", targets="soft")
    torch.testing.assert_close(single[3][1][1], soft[3][1][1])  # bone kept, the rest is background
