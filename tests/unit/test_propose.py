"""`boneseg propose`: the V-Net (MONAI) learnt from thigh femur masks proposes a bone mask
on every abdominal CT's own grid; the labels QA then compares every proposal source."""
import json

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from boneseg.core.config import Config
from boneseg.core.imaging.nifti import Volume
from boneseg.core.labelling.labels import derive_labels
from boneseg.core.labelling.vnet import predict, propose, random_crops
from boneseg.core.layout import find_cases, load_qa
from boneseg.core.networks.runtime import Runtime
from boneseg.errors import DataError
from boneseg.stages.tables import source_table


def tiny(cfg: Config, tmp_path, **propose_kw) -> Config:
    pc = cfg.propose.model_copy(update={"spacing_mm": (3.0, 3.0, 4.0), "crop": (16, 16, 16),
                                        "window": (16, 16, 16), "steps": 4, "val_cases": 1, **propose_kw})
    data = cfg.data.model_copy(update={"proposals_dir": str(tmp_path / "proposals"),
                                       "labels_dir": str(tmp_path / "labels")})
    return cfg.model_copy(update={"propose": pc, "data": data})


@pytest.mark.slow  # trains the V-Net (~25 s)
def test_propose_writes_a_mask_per_abdominal_ct_on_its_grid_and_the_qa_compares_sources(tiny_pipeline,
                                                                                         tmp_path):
    cfg = tiny(tiny_pipeline, tmp_path)
    s = propose(cfg, progress=False)
    abdomen = [c for c in find_cases(cfg.data.raw_dir) if c["cohort"] == "abdomen"]
    out = tmp_path / "proposals"
    assert sorted(p.name for p in out.glob("*.nii.gz")) == sorted(f"{c['case']}.nii.gz" for c in abdomen)
    for c in abdomen:
        ct, prop = nib.load(c["ct"]), nib.load(out / f"{c['case']}.nii.gz")
        assert prop.shape == ct.shape and np.allclose(prop.affine, ct.affine)
        assert prop.get_data_dtype() == np.uint8 and set(np.unique(np.asarray(prop.dataobj))) <= {0, 1}
    assert json.loads((out / "propose.json").read_text()) == s
    assert s["train_cases"] == 1 and s["val_cases"] == 1 and s["steps"] == 4
    assert 0 <= s["val_dice_mean"] <= 1 and s["train_s"] > 0 and s["peak_rss_gib"] > 0
    assert set(s["infer_s"]) == {c["case"] for c in abdomen}

    # labels: every abdominal case gets threshold / filled / vnet side by side, with effort
    report = derive_labels(cfg, progress=False)
    rows = [r for r in load_qa(cfg.data.labels_dir)["cases"] if r["cohort"] == "abdomen"]
    for r in rows:
        assert set(r["sources"]) == {"threshold", "filled", "vnet"}
        for q in r["sources"].values():
            assert {"bone_dice", "on_kidney", "on_vessel", "on_liver", "voxels", "components",
                    "slices"} <= set(q)
    tot = report["total"]["sources"]
    assert tot["vnet"]["cases"] == len(abdomen)
    assert tot["filled"]["voxels"] == sum(r["sources"]["filled"]["voxels"] for r in rows)
    assert "vnet" in source_table(report["total"])


@pytest.mark.slow  # trains the V-Net (~25 s)
def test_labels_can_start_from_the_vnet_and_refuse_when_it_is_missing(tiny_pipeline, tmp_path):
    cfg = tiny(tiny_pipeline, tmp_path)
    cfg = cfg.model_copy(update={"labels": cfg.labels.model_copy(update={"proposal": "vnet"})})
    with pytest.raises(DataError, match="boneseg propose"):
        derive_labels(cfg, progress=False)
    propose(cfg, progress=False)
    rows = derive_labels(cfg, progress=False)["cases"]
    assert {r["proposal"] for r in rows if r["cohort"] == "abdomen"} == {"vnet"}


def test_too_few_thigh_cts_is_an_error_that_names_the_setting(tiny_pipeline, tmp_path):
    cfg = tiny(tiny_pipeline, tmp_path, val_cases=5)
    with pytest.raises(DataError, match="propose.val_cases"):
        propose(cfg, progress=False)
    assert not (tmp_path / "proposals").exists()


def test_crops_pad_small_volumes_and_a_ct_of_any_size_is_predicted_on_its_grid():
    img = torch.rand(1, 1, 10, 9, 5)
    mask = (img > 0.7).float()
    g = torch.Generator().manual_seed(0)
    x, y = random_crops([(img, mask, {})], (16, 16, 16), 3, 0.5, g)
    assert x.shape == (3, 1, 16, 16, 16) and y.shape == (3, 16, 16, 16) and y.dtype == torch.int64
    cfg = Config().model_copy(update={"propose": Config().propose.model_copy(update={
        "spacing_mm": (3.0, 3.0, 3.0), "crop": (16, 16, 16), "window": (16, 16, 16)})})
    from boneseg.core.labelling.vnet import build_vnet

    torch.manual_seed(0)
    net = build_vnet()
    hu = np.full((23, 17, 3), -1000, np.int16)  # sides not multiples of 16, and only 3 slices
    ct = Volume(hu, np.diag([2.0, 2.0, 5.0, 1.0]))
    cpu = torch.device("cpu")
    out = predict(net, ct, cfg, Runtime.on(cpu, cfg.train))
    assert out.shape == (23, 17, 3) and out.dtype == bool


def test_vnet_crops_zoom_both_ways_and_the_augmentations_touch_only_the_femur():
    from boneseg.core.labelling.vnet import CORTEX_HU, augment, level, vnet_window

    CORTEX_LEVEL = level(CORTEX_HU, vnet_window(Config()))  # 650 HU on -200..1500: 0.5
    assert CORTEX_LEVEL == 0.5 and level(CORTEX_HU, (-200, 500)) == 1.0
    narrow = Config.model_validate({"propose": {"hu_window": [-200, 500]}})
    assert vnet_window(narrow) == (-200, 500) and vnet_window(Config()) == Config().data.window
    with pytest.raises(ValueError, match="low < high"):
        Config.model_validate({"propose": {"hu_window": [500, -200]}})

    img = torch.zeros(1, 1, 64, 64, 16)
    mask = torch.zeros(1, 1, 64, 64, 16)
    mask[0, 0, 16:48, 16:48] = 1  # a 32 x 32 "femur": cortex 0.8 around marrow 0.1
    img[0, 0, 16:48, 16:48] = 0.8
    img[0, 0, 20:44, 20:44] = 0.1
    g = torch.Generator().manual_seed(0)
    vols = [(img, mask, {})]
    plain = random_crops(vols, (32, 32, 16), 4, 1.0, torch.Generator().manual_seed(1))
    again = random_crops(vols, (32, 32, 16), 4, 1.0, torch.Generator().manual_seed(1), (1.0, 1.0))
    assert all(torch.equal(a, b) for a, b in zip(plain, again))  # zoom (1, 1): the very same crops
    x, y = random_crops([(img, mask, {})], (32, 32, 16), 4, 1.0, g, (0.5, 0.5))
    assert x.shape == (4, 1, 32, 32, 16) and y.shape == (4, 32, 32, 16)
    assert (y[:, :, :, 0].sum((1, 2)) == 16 * 16).all()  # the 32 x 32 femur is 16 x 16 at scale 0.5
    assert torch.equal(augment(x, y, 0.0, 0.0, g, CORTEX_LEVEL), x)  # off: unchanged
    lifted = augment(x, y, 0.4, 0.0, torch.Generator().manual_seed(2), CORTEX_LEVEL)
    changed = lifted != x
    assert changed.any() and (y[:, None].expand_as(x)[changed] == 1).all()  # only inside the femur
    assert (x[changed] < CORTEX_LEVEL).all() and (lifted <= max(CORTEX_LEVEL, float(x.max()))).all()
    assert torch.equal(lifted[x >= CORTEX_LEVEL], x[x >= CORTEX_LEVEL])  # the cortex keeps its value
    up, yu = random_crops(vols, (16, 16, 16), 2, 1.0, torch.Generator().manual_seed(3), (2.0, 2.0))
    assert up.shape == (2, 1, 16, 16, 16) and (yu[0, :, :, 0] == 0).sum() < (yu[0, :, :, 0] == 1).sum()
    assert float(up.max()) <= 0.8 + 1e-6  # interpolated up: no value outside the crop's range

    thin = augment(x, y, 0.0, 0.0, torch.Generator().manual_seed(4), CORTEX_LEVEL, 1.0)
    rim = (y[:, None] == 1) & (F.max_pool3d(1.0 - y[:, None].float(), (3, 3, 1), 1, (1, 1, 0)) > 0)
    assert torch.equal(thin[rim], x[rim])  # the one-voxel rim keeps its cortex
    inner_cortex = (y[:, None] == 1) & ~rim & (x >= CORTEX_LEVEL)
    assert inner_cortex.any() and (thin[inner_cortex] < CORTEX_LEVEL).all()  # thinned to the rim
    assert torch.equal(thin[y[:, None].expand_as(x) == 0], x[y[:, None].expand_as(x) == 0])
