"""The typed settings tree: params.yaml (+ an experiment override) -> `Config`.

Every model forbids unknown keys, so a typo in params.yaml is an error that names the
key path instead of a silently ignored setting. `load_config()` is the only reader.
The defaults here are the quick profile: params.yaml equals `Config()` (a test says so).

lines: over 300 because it is the one typed tree of every setting, each with its
default, bounds and description; split up, the defaults would no longer be in one place.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from boneseg.core.redact import credentials_in, redact
from boneseg.core.vocabulary import VARIANTS, Cohort, Layout, ProposalSource
from boneseg.errors import ConfigError

PARAMS_FILE = "params.yaml"
EXPERIMENTS_DIR = "experiments"
# A volume may hold at most this many voxels (512 x 512 x 1024: a whole-body CT at sub-mm
# spacing; 1 GiB as float32): checked from NIfTI and DICOM headers before data is read.
MAX_VOXELS = 512 * 512 * 1024
THIGH_WEIGHTS = "results/pretrain/thigh_encoder.safetensors"  # written by the `pretrain` stage
ENCODER_WEIGHT_NAMES = ("none", "imagenet", "thigh")  # the named choices; anything else is a file


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SynthConfig(_Strict):
    """The synthetic CT cohort (`boneseg synth`)."""

    seed: int = 0
    abdomen: int = Field(12, ge=0, description="number of abdominal CTs")
    thigh: int = Field(6, ge=0, description="number of thigh CTs")
    matrix: int = Field(256, ge=32, le=1024, description="in-plane voxels per side")
    slices: int = Field(32, ge=4, le=1000, description="nominal slice count (per patient +-20 %)")
    noise_hu: tuple[float, float] = (15.0, 60.0)

    @field_validator("noise_hu")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= v[0] <= v[1]:
            raise ValueError(f"expected [low, high] with 0 <= low <= high, got {list(v)}")
        return v


class SourceConfig(_Strict):
    """One folder of a lab's own CT that the `raw` stage imports (`boneseg import`'s layouts)."""

    path: str = Field(description="a folder under data.sources_dir (the raw stage's DVC dependency)")
    layout: Layout = Field(
        Layout.DICOM,
        description="dicom: series in any nesting; nifti: images/ (+ labels/); totalsegmentator")
    cohort: Cohort = Cohort.ABDOMEN
    skip_invalid: bool = Field(False, description="import the valid cases and list the others (else one "
                               "bad case stops the stage)")


def unet_side(v: int, also: str = "") -> int:
    """The U-Net downsamples 5 times: an input side must divide by 2**5."""
    if v < 32 or v % 32:
        raise ValueError(f"expected {also}a multiple of 32 (>= 32), got {v}")
    return v


def hu_window(v: tuple[float, float]) -> tuple[float, float]:
    """An HU window [low_hu, high_hu] (data.window, propose.hu_window): low < high."""
    if not v[0] < v[1]:
        raise ValueError(f"expected [low_hu, high_hu] with low < high, got {list(v)}")
    return v


class DataConfig(_Strict):
    raw_dir: str = "data/raw"
    labels_dir: str = "data/labels"
    corrections_dir: str = "data/corrections"
    proposals_dir: str = "data/proposals"
    unet_proposals_dir: str = Field("data/proposals_unet", description="`boneseg assist --model`: a trained "
                                    "U-Net's four-class proposals for new CTs (git-ignored)")
    annotate_dir: str = "annotate"
    splits_file: str = "data/splits.json"
    slices_dir: str = "data/slices"
    image_size: int = Field(160, description="2.5-D slice side after in-plane resampling")
    window: tuple[float, float] = (-200.0, 1500.0)
    sources: list[SourceConfig] = Field(
        default_factory=list, description="the lab's own CT, imported by the raw stage; empty: the synthetic "
                                          "cohort (data.synth)")
    sources_dir: str = Field("data/sources",
                             description="where data.sources lie (the raw stage's dependency)")
    max_voxels: int = Field(MAX_VOXELS, ge=1, description="the largest CT read (from its header, before its "
                            "data is decompressed)")
    synth: SynthConfig = SynthConfig()
    workers: int | Literal["auto"] = Field(
        "auto", description="local worker processes for the per-case stages (import, propose, labels, "
                            "slices, segment, assist, report); auto: the cores, or this process alone for "
                            "inputs under 64 MiB. Not a DVC parameter: the outputs do not depend on it")

    @field_validator("workers")
    @classmethod
    def _workers(cls, v):
        if v != "auto" and v < 1:
            raise ValueError(f"expected a count >= 1 or auto, got {v}")
        return v

    @field_validator("image_size")
    @classmethod
    def _multiple_of_32(cls, v: int) -> int:
        return unet_side(v)

    @field_validator("window")
    @classmethod
    def _window(cls, v: tuple[float, float]) -> tuple[float, float]:
        return hu_window(v)


class ThresholdConfig(_Strict):
    """Bone threshold per cohort: the thick femoral cortex takes a higher one than thin
    vertebral/rib shells, where partial volume dims the shell (docs/data.md has the sweep)."""

    abdomen: float = 300.0
    thigh: float = 450.0


class LabelsConfig(_Strict):
    """Label derivation (`boneseg labels`): the study's threshold masks + marrow fill."""

    threshold_hu: ThresholdConfig = ThresholdConfig()
    min_component_voxels: int = Field(30, ge=0, description="drop smaller 3-D components (noise)")
    component_min_mean_hu: float = Field(350.0, description="drop dim components (enhanced vessels)")
    closing_mm: float = Field(2.0, ge=0, description="in-plane closing radius before hole filling")
    proposal: Literal[ProposalSource.THRESHOLD, ProposalSource.FILLED, ProposalSource.VNET] = Field(
        ProposalSource.FILLED, description="the map an annotator starts from (`boneseg correct export`)")


class SplitsConfig(_Strict):
    folds: int = Field(4, ge=2)
    test_cases: int = Field(2, ge=0)
    seed: int = 0
    stratify: bool = True
    include_unreviewed: bool = Field(
        False, description="also split (train on, score) cases with neither truth nor a correction, labelled "
                           "from their proposal alone")


class ModelConfig(_Strict):
    encoder_weights: str = Field("thigh", description="pretrained variants: imagenet | thigh | a file path")
    thigh_weights: str = Field(THIGH_WEIGHTS, description="where `thigh` is read")

    @field_validator("encoder_weights")
    @classmethod
    def _weights(cls, v: str) -> str:
        if v in ENCODER_WEIGHT_NAMES or v.endswith((".safetensors", ".pt", ".pth", ".bin")):
            return v
        raise ValueError(f"expected none, imagenet, thigh or a .safetensors/.pt/.pth file, got {v!r}")


class TrainConfig(_Strict):
    """One trial: AdamW + OneCycleLR (stepped per batch), AMP on CUDA, fp32 on CPU."""

    epochs: int = Field(8, ge=1)
    batch_size: int = Field(4, ge=1)
    lr: float = Field(3e-3, gt=0, description="OneCycle peak learning rate")
    weight_decay: float = Field(1e-3, ge=0)
    pct_start: float = Field(0.25, gt=0, lt=1)
    div_factor: float = Field(25.0, gt=0)
    final_div_factor: float = Field(1e4, gt=0)
    loss: Literal["dice", "dice_ce"] = "dice_ce"
    ce_weight: float = Field(1.0, ge=0)
    targets: Literal["soft", "hard"] = Field(
        "hard", description="soft: area fractions of each label per slice pixel; hard: nearest-sampled ids")
    amp: Literal["auto", "fp16", "bf16", "off"] = "auto"
    channels_last: bool | Literal["auto"] = Field(
        "auto", description="training in the channels_last memory format (auto: on CUDA; contiguous on CPU, "
                            "where it trains faster); inference feeds channels_last slices either way")
    fused_optimizer: bool = Field(
        True, description="AdamW's fused implementation (CPU and CUDA); false: the per-parameter loop")
    augment: bool = Field(False, description="random affine + intensity jitter on training batches")
    patch_size: int | None = Field(
        96, description="train on random patch_size x patch_size windows of each slice (null: whole slices); "
                          "validation and inference always see whole slices")
    num_workers: int = Field(0, ge=0)
    data_on_device: bool | Literal["auto"] = Field(
        "auto", description="training slices on the device, batches gathered there (auto: CUDA, if they fit)")
    data_memory_gib: float | None = Field(
        None, gt=0, description="auto's budget for the training slices on the device, in GiB (any device); "
                                "null: half of CUDA's free memory, and streaming on a CPU")
    threads: int = Field(0, ge=0, description="torch CPU threads (0: torch's default)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    eval_batch_size: int = Field(32, ge=1)
    val_every: int = Field(
        4,
        ge=1,
        description="3-D validation after every k-th epoch and after the last one; "
        "the final validation and the test are always full",
    )
    out_dir: str = "results/train"

    @field_validator("patch_size")
    @classmethod
    def _patch_multiple_of_32(cls, v: int | None) -> int | None:
        return None if v is None else unet_side(v, "null or ")


class ProposeConfig(_Strict):
    """The `propose` stage: a 3-D V-Net (MONAI) learnt from the thigh cohort's threshold
    femur masks, applied to every abdominal CT (the study's "secondary mask")."""

    spacing_mm: tuple[float, float, float] = Field(
        (2.8, 2.8, 5.0), description="resampled voxel size (study: 0.5 x 0.5 x 5 mm)")
    crop: tuple[int, int, int] = Field((32, 32, 16), description="random training crop, voxels, each "
                                       "a multiple of 16 (study: 512 x 512 x 32)")
    window: tuple[int, int, int] = Field((96, 96, 16), description="sliding-window size at inference, "
                                         "voxels, each a multiple of 16")
    steps: int = Field(150, ge=4, description="optimiser steps (one-cycle over all of them)")
    batch_size: int = Field(2, ge=1)
    lr: float = Field(3e-3, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1, description="VNet dropout (MONAI's default 0.5; off for a "
                           "few hundred steps)")
    val_cases: int = Field(2, ge=1, description="thigh CTs held out for the validation Dice")
    foreground: float = Field(0.67, ge=0, le=1, description="share of crops centred on a femur voxel")
    overlap: float = Field(0.25, ge=0, lt=1, description="sliding-window overlap at inference")
    zoom: tuple[float, float] = Field((1.0, 1.0), description="in-plane scale range of the training crops' "
                                      "anatomy (< 1: smaller femurs, thinner shells; > 1: wider cores)")
    core_lift: float = Field(0.0, ge=0, le=1, description="raise the femur marrow of a training crop by up "
                             "to this much (windowed 0..1): bright cores like cancellous bone")
    contrast: float = Field(0.0, ge=0, lt=1, description="scale each training crop by 1 +- up to this")
    thin_shell: float = Field(0.0, ge=0, le=1, description="share of training crops whose femur cortex is "
                              "thinned to one voxel in-plane, as vertebral and rib shells are")
    hu_window: tuple[float, float] | None = Field(
        None, description="the V-Net's input window [low_hu, high_hu] (null: data.window); a narrow bone "
        "window saturates thick cortex and thin shells alike")
    seed: int = 0

    @field_validator("hu_window")
    @classmethod
    def _hu_window(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        return v if v is None else hu_window(v)

    @field_validator("zoom")
    @classmethod
    def _zoom(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0.2 <= v[0] <= v[1] <= 3.0:
            raise ValueError(f"expected [lo, hi] with 0.2 <= lo <= hi <= 3, got {list(v)}")
        return v

    @field_validator("crop", "window")
    @classmethod
    def _crop16(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(c <= 0 or c % 16 for c in v):
            raise ValueError(f"every side must be a positive multiple of 16 (MONAI's VNet), got {list(v)}")
        return v


class PretrainConfig(_Strict):
    """The `pretrain` stage: the same U-Net on thigh slices vs their threshold femur masks."""

    epochs: int = Field(2, ge=1)
    batch_size: int = Field(4, ge=1)
    lr: float = Field(3e-3, gt=0)
    seed: int = 0


def no_credentials(uri: str, variables: str) -> str:
    """`uri`, or a ValueError if it carries a secret (settings are committed, URIs tagged and printed)."""
    if credentials_in(uri):
        raise ValueError(f"carries credentials, which would be logged and committed; remove them and set "
                         f"{variables} in the environment instead")
    return uri


class TrackingConfig(_Strict):
    uri: str = Field("sqlite:///mlflow.db", description="MLflow tracking URI (MLFLOW_TRACKING_URI wins)")
    experiment: str = "boneseg"
    registered_model: str | None = Field(
        "boneseg",
        description="the sweep registers its best variant's fold models under this name (null: not)",
    )
    outage_s: float = Field(
        120.0, gt=0, description="the sweep waits this long for an MLflow server that is down, then stops"
    )

    @field_validator("uri")
    @classmethod
    def _no_credentials(cls, v: str) -> str:
        return no_credentials(v, "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD")


class SweepConfig(_Strict):
    """The Ray Tune grid: variants x folds, resources per trial, where Tune keeps its state."""

    variants: list[str] = Field(default_factory=lambda: list(VARIANTS))
    folds: list[int] | None = Field(None, description="null: every fold of data/splits.json")
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0, description="fractions allowed, e.g. 0.25")
    storage_path: str = Field(
        "ray_results", description="outside DVC outputs; shared FS or s3:// for multi-node"
    )
    max_failures: int = Field(2, ge=0, description="retries of a failed trial, from its last checkpoint")
    storage_outage_s: float = Field(
        120.0, gt=0, description="sweep storage reads and writes retry this long while it is down"
    )
    reuse_actors: bool = True
    dashboard: bool = Field(False, description="start Ray's dashboard with a local Ray (127.0.0.1, token "
                                               "authentication; needs ray[default]); off: faster start-up "
                                               "(docs/benchmarks.md#ray-start-up)")
    log_model: bool = Field(True, description="log each fold's final model.pt to its MLflow run")
    metrics_file: str = "results/metrics.json"
    folds_file: str = "results/folds.csv"
    curves_file: str = Field("results/curves.json", description="every trial's validated epochs, one record "
                                                                "each (`dvc plots show`)")
    model_dir: str = Field("results/model", description="the best variant's fold models + boneseg.json")
    trials_dir: str = Field("results/trials", description="every trial's summary.json + history.json")

    @field_validator("storage_path")
    @classmethod
    def _no_credentials(cls, v: str) -> str:
        return no_credentials(v, "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY")

    @field_validator("variants")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        bad = [c for c in v if c not in VARIANTS]
        if bad or not v:
            raise ValueError(f"expected variants from {list(VARIANTS)}, got {v}")
        return v


class ReportConfig(_Strict):
    """The `report` stage: figures, overlays and bootstrap confidence intervals."""

    out_dir: str = "results/report"
    bootstrap: int = Field(10000, ge=100, description="paired bootstrap resamples (patients as the unit)")
    seed: int = 0


class InferConfig(_Strict):
    """How trained fold models run on new CTs (`segment`, `assist --model`), and what the
    sweep exports at registration. Training and the sweep's validation stay in PyTorch."""

    backend: Literal["auto", "torch", "onnxruntime"] = Field(
        "auto", description="auto: ONNX Runtime on the CPU when the model carries a checked ONNX export "
                            "(int8 when offered; fp32 from 256 px slices up), else PyTorch (always "
                            "PyTorch on CUDA)")
    precision: Literal["auto", "fp32", "int8"] = Field(
        "auto", description="ONNX Runtime only. auto: int8 when the model's int8 check passed, else fp32")
    batch_size: int = Field(8, ge=1, le=4096, description="slices per forward pass (8: fastest on CPU, "
                                                          "docs/benchmarks.md#segment)")
    export: bool = Field(True, description="the sweep exports the registered fold models to ONNX (fp32 + "
                                            "checked int8) beside their checkpoints")
    calibration_slices: int = Field(64, ge=8, le=4096, description="int8 calibration: training slices of "
                                                                   "each fold's own training cases")
    int8_max_dice_loss: float = Field(0.002, ge=0, le=1, description="int8 is offered only when the fold "
                                                                      "mean bone Dice loses at most this")
    postprocess: bool = Field(True, description="the sweep chooses a connected-component rule per class "
                                                "by cross-validation, and segment applies it "
                                                "(--no-postprocess: off)")
    postprocess_min_ml: list[float] = Field(default_factory=lambda: [0.5, 2.0, 10.0],
                                            description="candidate rules: remove components under X ml, for "
                                                        "each X (keep the largest component is always a "
                                                        "candidate)")
    postprocess_min_gain: float = Field(0.0, ge=0, le=1, description="a class keeps a rule only if its CV "
                                                                     "mean Dice rises by more than this")

    @field_validator("postprocess_min_ml")
    @classmethod
    def _positive_sizes(cls, v: list[float]) -> list[float]:
        if len(v) > 16 or any(not (0 < x < 1e6) for x in v):
            raise ValueError(f"expected at most 16 sizes in ml, each > 0 and < 1e6, got {v}")
        return v


class SpaceSpec(_Strict):
    """One searched setting (`search:`): exactly one of a range or a list of choices."""

    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = Field(None, description="integers lo..hi, both included")
    choice: list[Any] | None = Field(None, min_length=1, max_length=64)

    @model_validator(mode="after")
    def _one_valid_range(self):
        given = {k: v for k, v in self.model_dump().items() if v is not None}
        if len(given) != 1:
            raise ValueError("give exactly one of uniform, loguniform, randint, choice; "
                             f"got {sorted(given) or 'none'}")
        (kind, v), = given.items()
        if kind != "choice" and not v[0] < v[1]:
            raise ValueError(f"{kind}: expected [low, high] with low < high, got {list(v)}")
        if kind == "loguniform" and v[0] <= 0:
            raise ValueError(f"loguniform: the low end must be > 0, got {v[0]}")
        return self

    def values(self) -> list:
        """The values a setting must accept: the range's ends, or every choice."""
        given = (self.uniform, self.loguniform, self.randint, self.choice)
        return next(list(v) for v in given if v is not None)


class TuneSettings(_Strict):
    """`boneseg tune`: hyperparameter search on Ray Tune over `search` (docs/tune.md)."""

    variant: str | None = Field(None, description="the variant whose settings are searched (null: the first "
                                                  "of sweep.variants)")
    folds: list[int] = Field(default_factory=lambda: [0], min_length=1,
                             description="inner cross-validation: the objective is the mean validation "
                                         "bone Dice over these folds (test cases are never read)")
    algorithm: Literal["random", "optuna"] = Field("random", description="random search, or Optuna's TPE")
    num_samples: int = Field(8, ge=1, le=10000, description="settings tried")
    max_concurrent_trials: int | None = Field(None, ge=1, description="null: as many as the cluster fits")
    scheduler: Literal["asha", "none"] = Field(
        "asha", description="asha: stop poor trials at rungs of validated epochs; none: every trial runs out")
    grace_epochs: int = Field(1, ge=1, description="ASHA: validated epochs before a trial may be stopped")
    reduction_factor: int = Field(4, ge=2, le=16, description="ASHA: 1/this of the trials go on at each rung "
                                                              "(4: Ray Tune's default)")
    seed: int = Field(0, description="the search's seed (same seed, same sampled settings)")
    overrides_dir: str = Field("experiments", description="where experiments/tuned-<id>.yaml is written")

    @field_validator("variant")
    @classmethod
    def _known(cls, v: str | None) -> str | None:
        if v is not None and v not in VARIANTS:
            raise ValueError(f"expected one of {list(VARIANTS)}, got {v!r}")
        return v


# searchable: train.* hyperparameters; not what fixes the budget, the data or the machine
SEARCHABLE = ("train.",)
NOT_SEARCHABLE = {"train.epochs", "train.val_every", "train.seed", "train.device", "train.threads",
                  "train.num_workers", "train.out_dir", "train.eval_batch_size", "train.data_on_device",
                  "train.data_memory_gib"}


class Config(_Strict):
    experiment: str | None = Field(None, description="name of an override in experiments/")
    data: DataConfig = DataConfig()
    labels: LabelsConfig = LabelsConfig()
    splits: SplitsConfig = SplitsConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    pretrain: PretrainConfig = PretrainConfig()
    propose: ProposeConfig = ProposeConfig()
    tracking: TrackingConfig = TrackingConfig()
    sweep: SweepConfig = SweepConfig()
    report: ReportConfig = ReportConfig()
    infer: InferConfig = InferConfig()
    tune: TuneSettings = TuneSettings()
    search: dict[str, SpaceSpec] = Field(default_factory=dict, description="`boneseg tune`'s search space: "
                                         "setting path -> range, e.g. train.lr: {loguniform: [1e-4, 1e-2]}")

    @model_validator(mode="after")
    def _searchable(self):
        """Every searched key is a train hyperparameter, and every value of its range is valid for it."""
        for key, spec in self.search.items():
            if not key.startswith(SEARCHABLE) or key in NOT_SEARCHABLE:
                raise ValueError(f"search.{key}: not searchable (train.* hyperparameters only, not "
                                 f"{', '.join(sorted(NOT_SEARCHABLE))})")
            section, _, field = key.partition(".")
            model = getattr(self, section)
            if field not in type(model).model_fields:
                raise ValueError(f"search.{key}: unknown setting (`boneseg config` lists every key)")
            for v in spec.values():
                try:
                    type(model).model_validate({**model.model_dump(), field: v})
                except ValidationError as exc:
                    msg = exc.errors()[0]["msg"].removeprefix("Value error, ")
                    raise ValueError(f"search.{key}: {v!r} is not a valid {key} ({msg})") from None
        return self


def deep_merge(base: dict, override: dict) -> dict:
    """Return `base` updated by `override`, recursing into nested mappings."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: file not found. Run from the repository root or pass --params.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc}). Fix the syntax.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level.")
    return data


def parse_set(items: list[str]) -> dict:
    """`["train.epochs=3", "data.window=[-100,400]"]` -> nested dict (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key.path=value, e.g. data.image_size=128")
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: an earlier --set gave {part} a value, not settings. "
                                  f"Set the keys under {part} one by one instead.")
        try:
            node[leaf] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML. Quote it.") from None
    return out


def _format_error(exc: ValidationError, source: str) -> str:
    """One line: the source, then each wrong key with what is wrong with it."""
    parts = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if not err["loc"]:  # a check across keys (`search`): its message names the key
            parts.append(msg)
        elif err["type"] == "extra_forbidden":
            parts.append(f"{path}: unknown key (check the spelling; `boneseg config` lists every key)")
        else:
            got = redact(repr(err["input"]))  # a URI's credentials never reach the message
            parts.append(f"{path}: {msg}, got {got}" if "got" not in msg else f"{path}: {msg}")
    return f"{source}: invalid settings: " + "; ".join(parts)


def validated(model: type[BaseModel], raw: dict, source: str):
    """`model` validated from `raw`; a ConfigError naming each wrong key otherwise."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, source)) from None


def build_config(raw: dict, source: str = PARAMS_FILE) -> Config:
    return validated(Config, raw, source)


def load_config(
    params: str | os.PathLike = PARAMS_FILE,
    experiment: str | None = None,
    overrides: list[str] | None = None,
) -> Config:
    """params.yaml, then experiments/<name>.yaml (the `experiment` key or argument), then --set."""
    params = Path(params)
    raw = _read_yaml(params)
    name = experiment or raw.get("experiment")
    source = str(params)
    if name:
        exp_path = (
            Path(name)
            if name.endswith((".yaml", ".yml"))
            else params.parent / EXPERIMENTS_DIR / f"{name}.yaml"
        )
        if not exp_path.is_file():
            raise ConfigError(f"experiment {name!r}: {exp_path} not found. Available: "
                              f"{sorted(p.stem for p in (params.parent / EXPERIMENTS_DIR).glob('*.yaml'))}")
        raw = deep_merge(raw, _read_yaml(exp_path))
        raw["experiment"] = name
        source += f" + {exp_path}"
    if overrides:
        raw = deep_merge(raw, parse_set(overrides))
        source += " + --set"
    return build_config(raw, source)


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)

