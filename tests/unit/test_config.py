from pathlib import Path

import pytest
import yaml

from boneseg.core.config import Config, build_config, load_config, parse_set, to_yaml
from boneseg.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path, data, name="params.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def test_repository_params_and_every_experiment_validate():
    cfg = load_config(ROOT / "params.yaml")
    assert cfg.data.image_size % 32 == 0
    for exp in sorted((ROOT / "experiments").glob("*.yaml")):
        assert load_config(ROOT / "params.yaml", exp.stem).experiment == exp.stem


def test_paper_profile_holds_the_study_settings():
    cfg = load_config(ROOT / "params.yaml", "paper")
    assert cfg.data.image_size == 320
    assert (cfg.data.synth.abdomen, cfg.data.synth.thigh, cfg.data.synth.matrix) == (65, 91, 512)
    assert cfg.splits.folds == 4


def test_unknown_key_names_its_path(tmp_path):
    p = write(tmp_path, {"data": {"synth": {"abdomn": 3}}})
    with pytest.raises(ConfigError, match=r"data\.synth\.abdomn: unknown key"):
        load_config(p)


def test_image_size_error_names_key_value_and_expectation(tmp_path):
    p = write(tmp_path, {"data": {"image_size": 100}})
    with pytest.raises(ConfigError, match=r"data\.image_size: expected a multiple of 32 \(>= 32\), got 100"):
        load_config(p)
    p = write(tmp_path, {"train": {"patch_size": 80}})
    with pytest.raises(
        ConfigError, match=r"train\.patch_size: expected null or a multiple of 32 \(>= 32\), got 80"
    ):
        load_config(p)


def test_wrong_type_names_the_value(tmp_path):
    p = write(tmp_path, {"splits": {"folds": "four"}})
    with pytest.raises(ConfigError, match=r"splits\.folds: .*'four'"):
        load_config(p)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("data: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_missing_experiment_lists_available(tmp_path):
    p = write(tmp_path, {})
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "x.yaml").write_text("{}")
    with pytest.raises(ConfigError, match=r"Available: \['x'\]"):
        load_config(p, "nope")


def test_overrides_merge_in_order(tmp_path):
    p = write(tmp_path, {"experiment": "e", "data": {"image_size": 64, "synth": {"abdomen": 5}}})
    (tmp_path / "experiments").mkdir()
    write(tmp_path / "experiments", {"data": {"image_size": 128}}, "e.yaml")
    cfg = load_config(p, overrides=["data.synth.thigh=1", "data.window=[-100, 400]"])
    assert cfg.data.image_size == 128 and cfg.data.synth.abdomen == 5 and cfg.data.synth.thigh == 1
    assert cfg.data.window == (-100.0, 400.0)


def test_parse_set_rejects_malformed():
    with pytest.raises(ConfigError, match="expected key.path=value"):
        parse_set(["data.image_size"])


def test_defaults_forbid_extra_at_top_level():
    with pytest.raises(ConfigError, match=r"(?s)invalid settings.*\btrian: unknown key"):
        build_config({"trian": {}})


def test_the_models_defaults_are_params_yaml():
    """Defaults are defined once: params.yaml (without an experiment) is exactly Config()."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert raw["experiment"] is None
    assert Config.model_validate(raw).model_dump() == Config().model_dump()
    assert yaml.safe_load(to_yaml(Config())) == Config.model_validate(raw).model_dump(mode="json")
