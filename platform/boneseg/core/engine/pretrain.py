"""Encoder pretraining: weights learnt on the thigh cohort, so the "pretrained"
variants run with no internet. The same U-Net is trained on the thigh CTs' 2.5-D slices
against their automatically derived femur masks (the study's threshold labels); the
encoder is saved as results/pretrain/thigh_encoder.safetensors (+ pretrain.json)."""
from __future__ import annotations

from pathlib import Path

from boneseg.core.config import Config
from boneseg.core.data.dataset import SliceDataset, make_loader
from boneseg.core.engine.training import train_epoch
from boneseg.core.io import atomic_path, write_json
from boneseg.core.labelmap import SINGLE
from boneseg.core.layout import load_index
from boneseg.core.networks.models import build_model
from boneseg.core.networks.optim import Stepper
from boneseg.core.networks.runtime import Runtime, seed_everything

NO_THIGH = "no thigh CT to pretrain on"


def no_thigh(out: Path) -> dict:
    """A cohort without thigh CTs: an encoder file holding no tensors (DVC's output must
    exist) and pretrain.json saying why; the pretrained variants then refuse to start
    (`models.build_model`) with the fix, and the random ones train as usual."""
    from safetensors.torch import save_file

    with atomic_path(out) as tmp:
        save_file({}, str(tmp), metadata={"source": f"boneseg pretrain: {NO_THIGH}"})
    report = {"cases": 0, "skipped": NO_THIGH, "weights": str(out)}
    write_json(out.with_name("pretrain.json"), report)
    return report


def pretrain(cfg: Config, out: str | Path | None = None) -> dict:
    index = load_index(cfg.data.slices_dir)
    thighs = sorted(c for c, info in index["cases"].items() if info["cohort"] == "thigh")
    if not thighs:
        return no_thigh(Path(out or cfg.model.thigh_weights))
    pc = cfg.pretrain
    tc = cfg.train.model_copy(update={"epochs": pc.epochs, "batch_size": pc.batch_size, "lr": pc.lr})
    rt = Runtime.of(tc)
    seed_everything(pc.seed)
    model = rt.place(build_model(SINGLE.channels, "none")[0])  # femur vs background
    ds = SliceDataset(cfg.data.slices_dir, thighs, classes="single", targets=tc.targets)
    stepper = Stepper.build(model, tc, len(make_loader(ds, tc, 0, pc.seed)), tc.epochs, rt)
    history = [train_epoch(model, make_loader(ds, tc, e, pc.seed), stepper, tc, rt) for e in range(tc.epochs)]
    from safetensors.torch import save_file

    out = Path(out or cfg.model.thigh_weights)
    state = {k: v.detach().cpu().contiguous() for k, v in model.encoder.state_dict().items()}
    with atomic_path(out) as tmp:
        save_file(state, str(tmp), metadata={"source": "boneseg pretrain (thigh cohort)", "arch": "resnet34"})
    report = {"cases": len(thighs), "slices": len(ds), "epochs": tc.epochs,
              "train_loss": [round(h["train_loss"], 5) for h in history], "weights": str(out)}
    write_json(out.with_name("pretrain.json"), report)
    return report
