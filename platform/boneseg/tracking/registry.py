"""Model references -> local checkpoint files, and registration of a sweep's best variant.

A reference is a checkpoint (a fold's model.pt, or a folder of them such as the sweep's
results/model), a registered model (`models:/boneseg/<version>` or
`models:/boneseg@<alias>`), or an MLflow run id (a fold run; a variant run: its folds;
a sweep's parent run: the best variant's folds). A registered version is a pyfunc
LoggedModel (`tracking.served`, which `mlflow models serve` serves) whose data/ensemble
folder holds the fold models; a sweep or variant run that registered one resolves to it,
manifest included, so it segments exactly as the registered version does (ONNX exports,
postprocessing). Registry and run references are read from the tracking store (a sqlite
file + local artifacts work offline) and cached under $BONESEG_CACHE (default
~/.cache/boneseg).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from boneseg.core.inference.predict import find_checkpoints
from boneseg.core.redact import redact
from boneseg.errors import DataError

ENSEMBLE_TAG = "ensemble_model"  # on the variant run: its registered pyfunc LoggedModel's URI
RUN_ID = re.compile(r"^[0-9a-f]{32}$")
MODEL_URI = re.compile(r"^models:/([^/@]+)(?:/(\d+)|@([\w-]+))$")


def cache_root() -> Path:
    return Path(os.environ.get("BONESEG_CACHE", Path.home() / ".cache" / "boneseg"))


def _download(tracking_uri: str, dst: Path, **where) -> Path:
    """Artifacts (`artifact_uri=`, or `run_id=` + `artifact_path=`) into the local cache,
    once (a finished download records its path)."""
    import mlflow

    done = dst / ".complete"
    if done.is_file() and Path(done.read_text().strip()).exists():
        return Path(done.read_text().strip())
    dst.mkdir(parents=True, exist_ok=True)
    local = mlflow.artifacts.download_artifacts(**where, dst_path=str(dst), tracking_uri=tracking_uri)
    done.write_text(f"{local}\n")
    return Path(local)


def _fetch_ensemble(tracking_uri: str, source: str, run_id: str, dst: Path) -> Path:
    """A registered source -> the local folder of fold models: a pyfunc LoggedModel
    (models:/m-<id>, its data/ensemble) or, for versions registered before, a run artifact."""
    if source.startswith("models:/"):
        from boneseg.tracking.served import NAME

        return _download(tracking_uri, dst, artifact_uri=source) / "data" / NAME
    return _download(tracking_uri, dst, run_id=run_id, artifact_path=_artifact_of(source, run_id))


def _fold_runs(client, run) -> list:
    """The fold runs a run id stands for: itself, a variant run's folds, a sweep's best variant's."""
    tags = run.data.tags
    level = tags.get("level") or tags.get("kind")
    if level == "sweep":
        variant = tags.get("best_variant")
        if not variant:
            raise DataError(f"--model {run.info.run_id}: this sweep has not finished (no best_variant tag).")
        sweep = run.info.run_id
    elif level == "variant":
        variant, sweep = tags["variant"], tags["sweep_id"]
    else:
        return [run]
    flt = f"tags.sweep_id = '{sweep}' and tags.level = 'fold' and tags.`variant` = '{variant}'"
    runs = [r for r in client.search_runs([run.info.experiment_id], flt) if r.info.status == "FINISHED"]
    if not runs:
        raise DataError(f"--model {run.info.run_id}: no finished fold runs of variant {variant}.")
    return sorted(runs, key=lambda r: int(r.data.tags.get("fold", 0)))


def _ensemble_of(client, run) -> str | None:
    """The registered ensemble (fold models + boneseg.json: ONNX exports, postprocessing)
    that a sweep's run (its best variant's) or a variant's run carries, as a source URI
    (its pyfunc LoggedModel, or a `runs:/` artifact of older sweeps), else None."""
    tags = run.data.tags
    level = tags.get("level") or tags.get("kind")
    if level == "sweep" and tags.get("best_variant"):
        flt = (f"tags.sweep_id = '{run.info.run_id}' and tags.level = 'variant' "
               f"and tags.`variant` = '{tags['best_variant']}'")
        found = client.search_runs([run.info.experiment_id], flt)
        run = found[0] if found else None
    elif level != "variant":
        return None
    if run is None:
        return None
    if run.data.tags.get(ENSEMBLE_TAG):
        return run.data.tags[ENSEMBLE_TAG]
    files = {a.path for a in client.list_artifacts(run.info.run_id, "ensemble")}
    return f"runs:/{run.info.run_id}/ensemble" if "ensemble/boneseg.json" in files else None


def _run_of(source: str) -> str:
    """The run id of a runs:/<id>/<path> source ('' for others)."""
    return source.split("/")[1] if source.startswith("runs:/") else ""


def _artifact_of(source: str, run_id: str) -> str:
    prefix = f"runs:/{run_id}/"
    if not source.startswith(prefix):
        raise DataError(f"registered model source {source}: expected {prefix}<path>.")
    return source[len(prefix):]


def resolve_model(ref: str, tracking_uri: str, registered_name: str = "boneseg") -> list[Path]:
    """--model REF -> local checkpoint files (one per fold model)."""
    if Path(ref).exists():
        return find_checkpoints(Path(ref))
    if not (ref.startswith("models:/") or RUN_ID.match(ref)):
        raise DataError(f"--model {ref}: not an existing checkpoint file/folder, a models:/{registered_name}/"
                        "<version> URI or a 32-character MLflow run id.")
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri)
    try:
        if ref.startswith("models:/"):
            m = MODEL_URI.match(ref)
            if not m:
                raise DataError(
                    f"--model {ref}: expected models:/<name>/<version> or models:/<name>@<alias>."
                )
            name, version, alias = m.groups()
            mv = (
                client.get_model_version(name, version)
                if version
                else client.get_model_version_by_alias(name, alias)
            )
            # keyed by the version's run too: another store's "boneseg/1" is another model
            dst = cache_root() / "models" / f"{name}-v{mv.version}-{mv.run_id}"
            return find_checkpoints(_fetch_ensemble(tracking_uri, mv.source, mv.run_id, dst))
        run = client.get_run(ref)
        source = _ensemble_of(client, run)
        if source is not None:  # the same files the registered version holds
            dst = cache_root() / "ensembles" / source.replace(":/", "-").replace("/", "-")
            return find_checkpoints(_fetch_ensemble(tracking_uri, source, _run_of(source), dst))
        return [
            _download(tracking_uri, cache_root() / "runs" / r.info.run_id, run_id=r.info.run_id,
                      artifact_path="model/model.pt")
            for r in _fold_runs(client, run)
        ]
    except MlflowException as exc:
        raise DataError(
            f"--model {ref}: not found in the tracking store {redact(tracking_uri)} "
            f"({redact(exc.message.splitlines()[0])}). Set MLFLOW_TRACKING_URI or tracking.uri."
        ) from None


def onnx_tag(manifest: dict) -> str:
    """What the version carries for the ONNX Runtime backend: fp32+int8, fp32 or none."""
    onnx = manifest.get("onnx") or {}
    if not onnx.get("files"):
        return "none"
    return "fp32+int8" if (onnx.get("int8") or {}).get("offered") else "fp32"


def register_model(client, name: str, run_id: str, model_dir: Path, manifest: dict) -> str:
    """The variant's fold models (+ boneseg.json) as a pyfunc LoggedModel of the variant run
    (`tracking.served`: MLflow can serve it), registered as a new version of `name`; the run
    is tagged `ensemble_model` with its URI. Returns models:/<name>/<version>."""
    from mlflow.exceptions import MlflowException

    from boneseg.tracking.served import log_pyfunc

    source, model_id = log_pyfunc(client, run_id, model_dir)
    client.set_tag(run_id, ENSEMBLE_TAG, source)
    try:
        client.create_registered_model(
            name, description="boneseg fold-model ensembles: `boneseg segment --model models:/NAME@champion` "
                              "(the best version on the same splits), or models:/NAME/VERSION")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    s, pre, variant = manifest["scores"], manifest.get("preprocessing", {}), manifest["variant"]
    mv = client.create_model_version(
        name, source, run_id=run_id, model_id=model_id,
        tags={"variant": variant, "classes": manifest.get("classes", ""),
              "folds": ",".join(map(str, manifest["folds"])), "image_size": str(pre.get("image_size", "")),
              "window": json.dumps(pre.get("window", [])), "sweep_id": manifest["sweep_run_id"],
              "bone_dice_mean": f"{s['bone_dice_mean']:.4f}", "score": repr(float(s["bone_dice_mean"])),
              "splits_md5": str(manifest.get("splits_md5", "")), "onnx": onnx_tag(manifest)},
        description=f"{variant}: {len(manifest['folds'])} fold models, softmax-averaged; "
                    f"bone Dice {s['bone_dice_mean']:.4f} +- {s['bone_dice_std']:.4f} over folds")
    return f"models:/{name}/{mv.version}"


CHAMPION, CHALLENGER = "champion", "challenger"


def _score(tags: dict) -> float:
    try:
        return float(tags.get("score", tags.get("bone_dice_mean", "nan")))
    except ValueError:
        return float("nan")


def promotion(new_tags: dict, champion) -> tuple[bool, str]:
    """Whether a new version (its tags) takes the alias `champion` from `champion` (a model
    version, or None), and why. Only a higher final score on the same splits (the same
    data/splits.json content) wins; scores on other splits are not comparable."""
    new = _score(new_tags)
    if new != new:
        return False, "its score is NaN"
    if champion is None:
        return True, "the first scored version"
    old, tags, v = _score(champion.tags), champion.tags, champion.version
    was, now = tags.get("splits_md5") or "unknown", new_tags.get("splits_md5") or "unknown"
    if was != now:
        return False, (f"champion version {v} was scored on other splits (data/splits.json md5 {was} vs "
                       f"{now}); scores on different splits are not comparable. Move the alias by hand if "
                       "you want this version: `boneseg promote VERSION`")
    if not new > old:
        return False, f"bone Dice {new:.4f} does not beat champion version {v}'s {old:.4f} on the same splits"
    return True, f"bone Dice {new:.4f} beats champion version {v}'s {old:.4f} on the same splits"


def current_champion(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:  # no such alias (or model) yet
        return None


def gate(client, name: str, version: str) -> tuple[bool, str]:
    """The promotion gate after registration: `champion` moves to `version` only when
    `promotion` says so; otherwise the version is tagged and aliased `challenger`, with why."""
    mv = client.get_model_version(name, version)
    promote, why = promotion(mv.tags, current_champion(client, name))
    _assign(client, name, version, CHAMPION if promote else CHALLENGER, why)
    return promote, why


def _assign(client, name: str, version: str, role: str, why: str) -> None:
    """The alias `role` -> `version`, and the version's tags saying so and why."""
    client.set_registered_model_alias(name, role, version)
    client.set_model_version_tag(name, version, "promotion", role)
    client.set_model_version_tag(name, version, "promotion_reason", why)


def promote_by_hand(client, name: str, version: str, where: str) -> str | None:
    """`boneseg promote VERSION`: `champion` -> `version` (the user named it); returns the
    version it displaced (None: there was no champion). `where`: the store, for errors."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_model_version(name, version)
        old = current_champion(client, name)
        _assign(client, name, version, CHAMPION,
                "promoted by hand" + (f" (champion was version {old.version})" if old else ""))
    except MlflowException as exc:
        raise DataError(f"promote {version}: models:/{name}/{version} not found in {where} "
                        f"({redact(exc.message.splitlines()[0])}).") from None
    return str(old.version) if old else None
