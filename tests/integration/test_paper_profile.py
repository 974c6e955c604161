"""`--experiment paper` at its real slice size and batch (320 x 320, batch 32, ImageNet
init from a local file the test writes, the paper's loss/augmentation/loader), on a tiny
synthetic cohort: a few optimizer steps and the 3-D evaluation, on CPU. Prints the peak RSS."""

import resource
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from boneseg.core.config import load_config
from boneseg.core.data.slices import build_slices
from boneseg.core.data.splits import write_splits
from boneseg.core.data.synth import synthesize
from boneseg.core.engine.training import fit
from boneseg.core.labelling.labels import derive_labels
from boneseg.core.networks.models import UNet

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_paper_profile_trains_and_evaluates_at_320_batch_32(tmp_path):
    torch.manual_seed(0)  # "ImageNet" encoder weights: a ResNet-34 state dict in a local file
    weights = tmp_path / "resnet34_imagenet.safetensors"
    save_file({k: v.contiguous() for k, v in UNet(5).encoder.state_dict().items()}, str(weights))
    cfg = load_config(
        ROOT / "params.yaml",
        "paper",
        [
            f"data.raw_dir={tmp_path}/raw",
            f"data.labels_dir={tmp_path}/labels",
            f"data.corrections_dir={tmp_path}/c",
            f"data.proposals_dir={tmp_path}/proposals",
            f"data.splits_file={tmp_path}/splits.json",
            f"data.slices_dir={tmp_path}/slices",
            "data.synth.abdomen=7",
            "data.synth.thigh=1",
            "data.synth.matrix=320",
            "data.synth.slices=32",
            "splits.folds=2",
            "splits.test_cases=1",
            f"model.encoder_weights={weights}",
            "train.epochs=2",
            "train.val_every=1",
            f"train.out_dir={tmp_path}/train",
            "train.threads=2",
        "train.num_workers=2",  # the paper's 8 loader workers, on this 2-core machine: 2
        ],
    )
    assert (
        cfg.data.image_size,
        cfg.train.batch_size,
        cfg.train.loss,
        cfg.train.augment,
        cfg.train.patch_size,
    ) == (320, 32, "dice", True, None)
    synthesize(cfg.data.synth, cfg.data.raw_dir, progress=False)
    derive_labels(cfg, progress=False)
    write_splits(cfg)
    build_slices(cfg, progress=False)
    result = fit(cfg, "multi-pretrained", 0)
    info = result.summary
    assert result.weights["source"] == "file" and result.weights["path"] == str(weights)
    assert result.weights["tensors"] == len(UNet(5).encoder.state_dict())  # every encoder tensor loaded
    assert np.isfinite(result.bone_dice) and 0 <= result.bone_dice <= 1
    assert [h["epoch"] for h in result.history] == [0, 1] and all(
        "val_bone_dice" in h for h in result.history
    )
    assert info["preprocessing"]["image_size"] == 320
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    train_s = sum(h["train_seconds"] for h in result.history)
    print(f"\npaper profile on CPU: 2 epochs of 32 x 3 x 320 x 320 batches in {train_s:.0f} s "
          f"({result.history[0]['images_per_s']:.2f} img/s); peak RSS {peak:.2f} GiB "
          f"(largest child process {kids:.2f} GiB)")
