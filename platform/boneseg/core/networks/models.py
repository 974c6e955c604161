"""The study's network: a U-Net whose encoder is timm's ResNet-34.

Reads top to bottom: decoder block, U-Net, encoder weights. Shapes are (B, C, H, W);
H and W must divide by 32 (five stride-2 stages).

Encoder weights (`model.encoder_weights`):
- "none": random init;
- "imagenet": timm `resnet34.tv_in1k` (torchvision's weights, as fast.ai used) from the
  local Hugging Face cache only: a missing copy fails at once with how to provide it;
- "thigh": the encoder trained by the `pretrain` stage on the thigh cohort
  (results/pretrain/thigh_encoder.safetensors), so pretrained variants run offline;
- a file path (.safetensors, .pt, .pth): a ResNet-34 state dict; every encoder tensor
  must come from it.
"""
from __future__ import annotations

import os
from pathlib import Path

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from boneseg.core.config import THIGH_WEIGHTS
from boneseg.errors import ConfigError

ENCODER = "resnet34"
IMAGENET_TAG = "resnet34.tv_in1k"


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
        )


class DecoderBlock(nn.Module):
    """Upsample x2, concatenate the skip (if any), two 3x3 conv-BN-ReLU."""

    def __init__(self, cin: int, cskip: int, cout: int):
        super().__init__()
        self.conv1 = ConvBNReLU(cin + cskip, cout)
        self.conv2 = ConvBNReLU(cout, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")  # (B, cin, 2H, 2W)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class UNet(nn.Module):
    """timm ResNet-34 features (strides 2..32) -> 5 decoder blocks -> 3x3 head -> logits (B, K, H, W)."""

    def __init__(self, classes: int, in_chans: int = 3, decoder_channels=(256, 128, 64, 32, 16)):
        super().__init__()
        self.encoder = timm.create_model(ENCODER, pretrained=False, features_only=True,
                                         out_indices=(0, 1, 2, 3, 4), in_chans=in_chans)
        enc = self.encoder.feature_info.channels()  # [64, 64, 128, 256, 512] at strides 2..32
        skips = list(reversed(enc[:-1])) + [0]  # [256, 128, 64, 64, 0]
        ins = [enc[-1], *decoder_channels[:-1]]
        self.decoder = nn.ModuleList(DecoderBlock(i, s, o) for i, s, o in zip(ins, skips, decoder_channels))
        self.head = nn.Conv2d(decoder_channels[-1], classes, 3, padding=1)
        self.classes = classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.encoder(x)  # 5 maps, (B, 64, H/2) ... (B, 512, H/32)
        y = feats[-1]
        skips = list(reversed(feats[:-1])) + [None]
        for block, skip in zip(self.decoder, skips):
            y = block(y, skip)
        return self.head(y)  # (B, K, H, W)


# ---------------------------------------------------------------- encoder weights
def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ConfigError(f"model.encoder_weights: {path} not found. Pass an existing .safetensors/.pt "
                          "file, 'thigh' (run `boneseg pretrain` first), 'imagenet' or 'none'.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
        sd = sd.get("state_dict", sd.get("model", sd)) if isinstance(sd, dict) else sd
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ConfigError(f"model.encoder_weights: {path} holds no state dict of tensors.")
    for prefix in ("encoder.", "model.", "module."):  # accept whole-U-Net or wrapped checkpoints
        if sd and all(k.startswith(prefix) for k in sd if not k.startswith("fc.")):
            sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return sd


def load_encoder_file(encoder: nn.Module, path: str | Path) -> dict:
    """Load a ResNet-34 state dict into `encoder`; every encoder tensor must come from the file."""
    path = Path(path)
    sd = _read_state_dict(path)
    own = encoder.state_dict()
    missing = [k for k in own if k not in sd]
    wrong = [k for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or wrong:
        raise ConfigError(f"model.encoder_weights: {path} is not a ResNet-34 encoder: "
                          f"{len(missing)} tensors missing (e.g. {missing[:3]}), {len(wrong)} of the wrong "
                          f"shape (e.g. {wrong[:3]}).")
    encoder.load_state_dict({k: sd[k] for k in own}, strict=True)
    ignored = sorted(set(sd) - set(own))
    return {"source": "file", "path": str(path), "tensors": len(own), "ignored": ignored}


def imagenet_file() -> Path:
    """The cached timm/resnet34.tv_in1k weights, or a clear error (never a download)."""
    from huggingface_hub import try_to_load_from_cache

    for name in ("model.safetensors", "pytorch_model.bin"):
        hit = try_to_load_from_cache(f"timm/{IMAGENET_TAG}", name)
        if isinstance(hit, str) and os.path.isfile(hit):
            return Path(hit)
    raise ConfigError(
        "model.encoder_weights=imagenet: timm/resnet34.tv_in1k is not in the local Hugging Face cache "
        f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}) and boneseg never downloads at run time. "
        "On a machine with internet run `hf download timm/resnet34.tv_in1k` and copy the cache over, or pass "
        "the file directly: --set model.encoder_weights=/path/to/resnet34.safetensors.")


def build_model(
    classes: int, encoder_weights: str = "none", thigh_weights: str = THIGH_WEIGHTS
) -> tuple[UNet, dict]:
    """The U-Net with its encoder initialised from `encoder_weights`; returns (model, provenance)."""
    model = UNet(classes)
    if encoder_weights == "none":
        return model, {"source": "none"}
    if encoder_weights == "imagenet":
        info = load_encoder_file(model.encoder, imagenet_file())
        return model, {**info, "source": "imagenet", "tag": IMAGENET_TAG}
    if encoder_weights == "thigh":
        if not Path(thigh_weights).is_file():
            raise ConfigError(
                f"model.encoder_weights=thigh: {thigh_weights} not found. Run `boneseg pretrain` "
                "(or `dvc repro pretrain`) first."
            )
        if not _read_state_dict(Path(thigh_weights)):
            raise ConfigError(
                f"model.encoder_weights=thigh: {thigh_weights} holds no encoder, as the cohort has no thigh "
                "CT to pretrain on. Run the random variants (sweep.variants: [multi-random, single-random]), "
                "or give the pretrained ones other weights (model.encoder_weights: imagenet or a file).")
        return model, {**load_encoder_file(model.encoder, thigh_weights), "source": "thigh"}
    return model, load_encoder_file(model.encoder, encoder_weights)
