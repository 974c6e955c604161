"""Model references -> local checkpoint files, and registration of a sweep's best variant.

A reference is a checkpoint (a fold's model.pt, or a folder of them such as the sweep's
results/model), a registered model (`models:/boneseg/<version>` or
`models:/boneseg@<alias>`), or an MLflow run id (a fold run, a variant run: its folds,
or a sweep's parent run: the best variant's folds). Registry and run references are
read from the tracking store (a sqlite file + local artifacts work offline) and cached
under $BONESEG_CACHE (default ~/.cache/boneseg).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from boneseg.core.inference.predict import find_checkpoints
from boneseg.core.redact import redact
from boneseg.errors import DataError

RUN_ID = re.compile(r"^[0-9a-f]{32}$")
MODEL_URI = re.compile(r"^models:/([^/@]+)(?:/(\d+)|@([\w-]+))$")


def cache_root() -> Path:
    return Path(os.environ.get("BONESEG_CACHE", Path.home() / ".cache" / "boneseg"))


def _download(tracking_uri: str, run_id: str, artifact: str, dst: Path) -> Path:
    """A run artifact into the local cache, once (a finished download records its path)."""
    import mlflow

    done = dst / ".complete"
    if done.is_file() and Path(done.read_text().strip()).exists():
        return Path(done.read_text().strip())
    dst.mkdir(parents=True, exist_ok=True)
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact, dst_path=str(dst),
                                                tracking_uri=tracking_uri)
    done.write_text(f"{local}\n")
    return Path(local)


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
            return find_checkpoints(
                _download(tracking_uri, mv.run_id, _artifact_of(mv.source, mv.run_id), dst)
            )
        run = client.get_run(ref)
        return [
            _download(tracking_uri, r.info.run_id, "model/model.pt", cache_root() / "runs" / r.info.run_id)
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
    """The variant's fold models (+ boneseg.json) as the variant run's `ensemble` artifact,
    registered as a new version of `name`; returns models:/<name>/<version>."""
    from mlflow.exceptions import MlflowException

    client.log_artifacts(run_id, str(model_dir), "ensemble")
    try:
        client.create_registered_model(
            name, description="boneseg fold-model ensembles: `boneseg segment --model models:/NAME/VERSION`")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    s, pre, variant = manifest["scores"], manifest.get("preprocessing", {}), manifest["variant"]
    mv = client.create_model_version(
        name, f"runs:/{run_id}/ensemble", run_id=run_id,
        tags={"variant": variant, "classes": manifest.get("classes", ""),
              "folds": ",".join(map(str, manifest["folds"])), "image_size": str(pre.get("image_size", "")),
              "window": json.dumps(pre.get("window", [])), "sweep_id": manifest["sweep_run_id"],
              "bone_dice_mean": f"{s['bone_dice_mean']:.4f}", "onnx": onnx_tag(manifest)},
        description=f"{variant}: {len(manifest['folds'])} fold models, softmax-averaged; "
                    f"bone Dice {s['bone_dice_mean']:.4f} +- {s['bone_dice_std']:.4f} over folds")
    return f"models:/{name}/{mv.version}"
