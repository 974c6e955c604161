import socket

import pytest
import segmentation_models_pytorch as smp
import torch
from safetensors.torch import save_file

from boneseg.core.networks.models import UNet, build_model
from boneseg.errors import ConfigError


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_parameter_count_matches_smp_unet_resnet34():
    """smp's Unet("resnet34") is the reference U-Net (a test dependency in requirements.txt)."""
    for classes in (5, 2):
        ref = smp.Unet("resnet34", encoder_weights=None, classes=classes)
        ours = UNet(classes)
        assert n_params(ours.encoder) == n_params(ref.encoder)  # the same timm/torchvision ResNet-34
        assert n_params(ours) == n_params(ref)  # decoder (256, 128, 64, 32, 16) and 3x3 head as smp's


@pytest.mark.parametrize("classes", [5, 2])
def test_forward_shapes(classes):
    m = UNet(classes).eval()
    with torch.no_grad():
        y = m(torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last))
    assert y.shape == (2, classes, 64, 64)


def test_encoder_from_file_loads_exactly_that_files_tensors(tmp_path):
    src = UNet(5).encoder
    torch.manual_seed(123)
    sd = {
        k: torch.randn_like(v.float()).to(v.dtype) if v.is_floating_point() else v
        for k, v in src.state_dict().items()
    }
    sd["fc.weight"] = torch.zeros(1000, 512)  # a classifier head is ignored, not an error
    path = tmp_path / "enc.safetensors"
    save_file(sd, str(path))
    model, info = build_model(5, str(path))
    got = model.encoder.state_dict()
    assert all(torch.equal(got[k], sd[k]) for k in got)
    assert info["tensors"] == len(got) and info["ignored"] == ["fc.weight"]
    torch.save({"state_dict": {f"encoder.{k}": v for k, v in sd.items()}}, tmp_path / "wrapped.pt")
    model2, _ = build_model(2, str(tmp_path / "wrapped.pt"))
    assert all(torch.equal(model2.encoder.state_dict()[k], sd[k]) for k in got)


def test_incomplete_encoder_file_refused(tmp_path):
    sd = {k: v for k, v in UNet(5).encoder.state_dict().items() if not k.startswith("layer4")}
    save_file(sd, str(tmp_path / "part.safetensors"))
    with pytest.raises(ConfigError, match=r"not a ResNet-34 encoder: \d+ tensors missing"):
        build_model(5, str(tmp_path / "part.safetensors"))
    with pytest.raises(ConfigError, match="not found"):
        build_model(5, str(tmp_path / "nope.safetensors"))


def test_imagenet_without_cache_fails_fast_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    tried = []  # fails at once: no connection is even attempted (a download would try one)

    def no_network(self, address, *a, **k):
        tried.append(address)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(ConfigError, match=r"hf download timm/resnet34.tv_in1k.*model.encoder_weights=/path"):
        build_model(5, "imagenet")
    assert tried == []


def test_thigh_weights_missing_says_run_pretrain(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="boneseg pretrain"):
        build_model(5, "thigh")
