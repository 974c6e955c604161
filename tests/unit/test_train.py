import json
import math

import pytest
import torch

from boneseg.core.config import TrainConfig
from boneseg.core.engine.training import fit
from boneseg.core.networks.losses import segmentation_loss, soft_dice_loss
from boneseg.core.networks.models import UNet
from boneseg.core.networks.runtime import Runtime


def test_loss_of_one_hot_probability_targets_equals_the_loss_of_ids():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 8, 8)
    ids = torch.randint(0, 5, (2, 8, 8))
    onehot = torch.nn.functional.one_hot(ids, 5).permute(0, 3, 1, 2).float()
    for kind in ("dice", "dice_ce"):
        torch.testing.assert_close(
            segmentation_loss(logits, onehot, kind), segmentation_loss(logits, ids, kind)
        )
    from boneseg.core.engine.augment import random_affine

    x, y = random_affine(torch.rand(2, 3, 8, 8), onehot.clone(), 10, 0.1, 0.1)
    torch.testing.assert_close(y.sum(1), torch.ones(2, 8, 8))  # warped fractions still sum to 1


def test_random_crop_cuts_the_same_window_from_image_and_target_and_replays_from_the_rng_state():
    from boneseg.core.engine.augment import random_crop

    h, w = 12, 10
    pos = torch.arange(h * w).reshape(h, w)  # every pixel holds its own position
    x = pos.float().expand(3, 3, h, w).clone()
    ids = pos.expand(3, h, w).clone()
    frac = pos.float().expand(3, 2, h, w).clone()
    torch.manual_seed(7)
    state = torch.get_rng_state()
    xc, yc = random_crop(x, ids, 4)
    assert xc.shape == (3, 3, 4, 4) and yc.shape == (3, 4, 4)
    for k in range(3):
        assert torch.equal(xc[k, 0].long(), yc[k]) and torch.equal(xc[k, 2].long(), yc[k])
        i, j = divmod(int(yc[k, 0, 0]), w)  # the window's corner, and it is contiguous
        assert torch.equal(yc[k], pos[i:i + 4, j:j + 4])
    assert len({int(yc[k, 0, 0]) for k in range(3)}) > 1  # one window per sample
    torch.set_rng_state(state)  # what a resumed trial restores from its checkpoint
    xs, fs = random_crop(x, frac, 4)
    assert torch.equal(xs, xc) and torch.equal(fs[:, 1].long(), yc)
    same_x, same_y = random_crop(x, ids, 12)  # a patch as large as the slice: whole slices
    assert same_x is x and same_y is ids
    tall, tall_y = random_crop(x, ids, 11)  # wider than the slice: that side stays whole
    assert tall.shape == (3, 3, 11, 10) and torch.equal(tall[:, 0].long(), tall_y)


def test_soft_dice_loss_is_zero_for_a_perfect_prediction_and_high_for_a_wrong_one():
    target = torch.randint(0, 3, (2, 8, 8))
    perfect = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 50
    assert float(soft_dice_loss(perfect, target)) < 1e-3
    assert float(soft_dice_loss(-perfect, target)) > 0.9
    assert float(segmentation_loss(perfect, target, "dice_ce")) < 1e-3


def test_one_optimiser_step_lowers_the_loss():
    torch.manual_seed(0)
    model = UNet(5)
    x, y = torch.rand(2, 3, 32, 32), torch.randint(0, 5, (2, 32, 32))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    before = segmentation_loss(model(x), y)
    opt.zero_grad()
    before.backward()
    opt.step()
    with torch.no_grad():  # still in train mode: batch-norm uses this batch's statistics both times
        after = segmentation_loss(model(x), y)
    assert after.item() < before.item()


def test_cpu_runs_fp32_unless_amp_is_asked_for_explicitly():
    for amp in ("auto", "off"):  # fp16 / bf16 are honoured on CPU too: tests/unit/test_amp.py
        assert Runtime.on("cpu", TrainConfig(amp=amp)).dtype is None


class Crash:
    """Fault injection: raise after a given epoch's checkpoint was written."""

    def __init__(self, after_epoch):
        self.after = after_epoch

    def on_epoch(self, epoch, metrics, ckpt):
        if epoch == self.after:
            raise RuntimeError("injected crash")


def test_fit_writes_summary_and_resume_continues_the_same_trajectory(tiny_pipeline, tmp_path):
    cfg = tiny_pipeline.model_copy(update={"train": tiny_pipeline.train.model_copy(update={"epochs": 2})})
    straight = fit(cfg, "multi-random", 0, out_dir=tmp_path / "straight")
    with pytest.raises(RuntimeError, match="injected"):
        fit(cfg, "multi-random", 0, out_dir=tmp_path / "resumed", callbacks=[Crash(0)])
    resumed = fit(cfg, "multi-random", 0, out_dir=tmp_path / "resumed")
    assert resumed.resumed_from_epoch == 1 and [h["epoch"] for h in resumed.history] == [0, 1]
    a = torch.load(tmp_path / "straight" / "model.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "resumed" / "model.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert straight.history[1]["train_loss"] == pytest.approx(resumed.history[1]["train_loss"], rel=1e-6)
    summary = json.loads((tmp_path / "straight" / "summary.json").read_text())
    assert summary["bone_dice"] == pytest.approx(straight.bone_dice)
    assert len(summary["metric_per_case"]) == len(cfg_val_cases(cfg, 0))
    assert 0 <= straight.bone_dice <= 1 and not math.isnan(straight.test_bone_dice)
    res = summary["resources"]  # what the trial used, for MLflow and the packing advice
    assert res["device"].startswith("cpu") and res["peak_rss_scope"] in ("trial", "process")
    assert 0.05 < res["peak_rss_gib"] < 24
    speeds = [h["images_per_s"] for h in straight.history]
    assert res["images_per_s"] == pytest.approx(sum(speeds) / len(speeds), rel=1e-2)


def test_patch_training_resumes_on_the_same_windows_and_validates_whole_slices(tiny_pipeline, tmp_path,
                                                                               monkeypatch):
    from boneseg.core.data.slices import build_slices
    from boneseg.core.engine import augment

    data = tiny_pipeline.data.model_copy(update={"image_size": 64, "slices_dir": str(tmp_path / "slices64")})
    build_slices(tiny_pipeline.model_copy(update={"data": data}), progress=False)
    train = tiny_pipeline.train.model_copy(update={"epochs": 2, "patch_size": 32})
    cfg = tiny_pipeline.model_copy(update={"data": data, "train": train})
    straight = fit(cfg, "multi-random", 0, out_dir=tmp_path / "straight")
    with pytest.raises(RuntimeError, match="injected"):
        fit(cfg, "multi-random", 0, out_dir=tmp_path / "resumed", callbacks=[Crash(0)])
    fit(cfg, "multi-random", 0, out_dir=tmp_path / "resumed")
    a = torch.load(tmp_path / "straight" / "model.pt", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "model.pt", weights_only=False)["model"]
    assert all(torch.equal(a["model"][k], b[k]) for k in b)
    assert a["preprocessing"]["image_size"] == 64  # the model is applied to whole 64x64 slices
    seen = []  # the training batches' spatial sizes, as random_crop hands them to the model

    def spy(x, y, size):
        out = crop(x, y, size)
        seen.append((tuple(x.shape[-2:]), tuple(out[0].shape[-2:]), tuple(out[1].shape[-2:])))
        return out

    crop = augment.random_crop
    monkeypatch.setattr(augment, "random_crop", spy)
    fit(cfg, "multi-random", 0, out_dir=tmp_path / "spied")
    assert seen and set(seen) == {((64, 64), (32, 32), (32, 32))}  # every batch: 64 px slices cut to 32 px
    assert straight.history[0]["images_per_s"] > 0


def cfg_val_cases(cfg, fold):
    return json.loads(open(cfg.data.splits_file).read())["folds"][fold]["val"]


def test_single_class_trial_predicts_bone_only(tiny_pipeline, tmp_path):
    r = fit(tiny_pipeline, "single-random", 1, out_dir=tmp_path / "s")
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert set(summary["metric_per_case"][0]["dice"]) == {"bone"}
    assert torch.load(tmp_path / "s" / "model.pt", weights_only=False)["model"]["head.weight"].shape[0] == 2
    assert r.weights == {"source": "none"}


def test_resume_refuses_a_checkpoint_of_other_settings(tiny_pipeline, tmp_path):
    from boneseg.errors import ConfigError

    fit(tiny_pipeline, "multi-random", 0, out_dir=tmp_path / "t")
    other = tiny_pipeline.model_copy(update={"train": tiny_pipeline.train.model_copy(update={"lr": 1e-2})})
    with pytest.raises(ConfigError, match="--restart"):
        fit(other, "multi-random", 0, out_dir=tmp_path / "t")


def test_pretrain_writes_an_encoder_the_pretrained_case_loads(tiny_pipeline, tmp_path, monkeypatch):
    from boneseg.core.engine.pretrain import pretrain
    from boneseg.core.networks.models import build_model

    monkeypatch.chdir(tmp_path)  # "thigh" resolves results/pretrain/... relative to the repo root
    report = pretrain(tiny_pipeline)
    assert report["cases"] == 2 and (tmp_path / "results/pretrain/pretrain.json").is_file()
    model, info = build_model(5, "thigh")
    assert info["source"] == "thigh"
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "results/pretrain/thigh_encoder.safetensors"))
    assert all(torch.equal(model.encoder.state_dict()[k], saved[k]) for k in saved)
    r = fit(tiny_pipeline, "multi-pretrained", 0, out_dir=tmp_path / "p")
    assert r.weights["source"] == "thigh"


def test_validation_cadence_keeps_the_last_epoch():
    from boneseg.core.engine.training import validates

    tc = TrainConfig(epochs=8, val_every=4)
    assert [e for e in range(8) if validates(e, tc)] == [3, 7]
    assert [e for e in range(5) if validates(e, TrainConfig(epochs=5, val_every=2))] == [1, 3, 4]
    assert all(validates(e, TrainConfig(epochs=3, val_every=1)) for e in range(3))


@pytest.mark.slow  # two trials side by side (~23 s)
def test_skipping_validation_leaves_training_bit_identical(tiny_pipeline, tmp_path):
    """Validation only reads the model: validating every epoch or only after the last one
    trains the very same weights (so train.val_every cannot change a score)."""
    every = tiny_pipeline.model_copy(update={"train": tiny_pipeline.train.model_copy(update={"epochs": 2,
                                                                                          "val_every": 1})})
    last = tiny_pipeline.model_copy(update={"train": every.train.model_copy(update={"val_every": 2})})
    a = fit(every, "multi-random", 0, out_dir=tmp_path / "every")
    b = fit(last, "multi-random", 0, out_dir=tmp_path / "last")
    assert ["val_bone_dice" in h for h in a.history] == [True, True]
    assert ["val_bone_dice" in h for h in b.history] == [False, True]
    wa = torch.load(tmp_path / "every" / "model.pt", weights_only=False)["model"]
    wb = torch.load(tmp_path / "last" / "model.pt", weights_only=False)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert (
        a.bone_dice == b.bone_dice and a.summary["timing"]["epoch_val_s"] > b.summary["timing"]["epoch_val_s"]
    )
