"""`boneseg segment`: label maps for new CTs from trained fold models, ensembled.

A model reference is a checkpoint (a fold's model.pt, or a folder of them such as the
sweep's results/model), a registered model (`models:/boneseg/<version>` or
`models:/boneseg@<alias>`), or an MLflow run id (a fold run, a case run: its folds, or
a sweep's parent run: the best case's folds). Registry and run references are read
from the tracking store (sqlite file + local artifacts work offline) and cached.

Per CT: reorient to the closest RAS+ order (lossless), window and resample in-plane
exactly as `boneseg slices` does, predict every 2.5-D slice with every fold model,
average the softmax probabilities, resample them back to the CT's grid, argmax, undo
the reorientation and write uint8 ids (DESIGN.md) with the input's own affine, plus
an ITK-SNAP label description file beside the outputs.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from boneseg.config import Config
from boneseg.errors import ConfigError, DataError
from boneseg.evaluate import predict_slices
from boneseg.nifti import LABEL_IDS, Volume, atomic_write_text, load_ct, save_volume
from boneseg.slices import resize_back, window_planes

REGISTERED_MODEL = "boneseg"
MANIFEST = "boneseg.json"
LABEL_FILE = "itksnap_labels.txt"
# ITK-SNAP colours per label id (R, G, B)
COLOURS = {1: (241, 214, 145), 2: (185, 102, 83), 3: (216, 101, 79), 4: (221, 130, 101)}
RUN_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class FoldModel:
    net: torch.nn.Module
    classes: str  # "multi" | "single"
    case: str
    fold: int
    preprocessing: dict  # image_size, window


# ---------------------------------------------------------------- model references
def _cache_root() -> Path:
    return Path(os.environ.get("BONESEG_CACHE", Path.home() / ".cache" / "boneseg"))


def _checkpoints_in(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        found = sorted(path.glob("fold*.pt")) or sorted(path.rglob("model.pt"))
        if found:
            return found
        raise DataError(f"--model {path}: no fold*.pt or model.pt checkpoints in this folder.")
    raise DataError(f"--model {path}: not found.")


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
    tags = run.data.tags
    level = tags.get("level") or tags.get("kind")
    if level == "sweep":
        case = tags.get("best_case")
        if not case:
            raise DataError(f"--model {run.info.run_id}: this sweep has not finished (no best_case tag).")
        sweep = run.info.run_id
    elif level == "case":
        case, sweep = tags["case"], tags["sweep_id"]
    else:
        return [run]
    flt = f"tags.sweep_id = '{sweep}' and tags.level = 'fold' and tags.`case` = '{case}'"
    runs = [r for r in client.search_runs([run.info.experiment_id], flt) if r.info.status == "FINISHED"]
    if not runs:
        raise DataError(f"--model {run.info.run_id}: no finished fold runs of case {case}.")
    return sorted(runs, key=lambda r: int(r.data.tags.get("fold", 0)))


def resolve_model(ref: str, tracking_uri: str) -> list[Path]:
    """--model REF -> local checkpoint files (one per fold model)."""
    if Path(ref).exists():
        return _checkpoints_in(Path(ref))
    if not (ref.startswith("models:/") or RUN_ID.match(ref)):
        raise DataError(f"--model {ref}: not an existing checkpoint file/folder, a models:/{REGISTERED_MODEL}/"
                        "<version> URI or a 32-character MLflow run id.")
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri)
    try:
        if ref.startswith("models:/"):
            m = re.match(r"^models:/([^/@]+)(?:/(\d+)|@([\w-]+))$", ref)
            if not m:
                raise DataError(f"--model {ref}: expected models:/<name>/<version> or models:/<name>@<alias>.")
            name, version, alias = m.groups()
            mv = client.get_model_version(name, version) if version else client.get_model_version_by_alias(name, alias)
            # keyed by the version's run too: another store's "boneseg/1" is another model
            dst = _cache_root() / "models" / f"{name}-v{mv.version}-{mv.run_id}"
            return _checkpoints_in(_download(tracking_uri, mv.run_id, _artifact_of(mv.source, mv.run_id), dst))
        run = client.get_run(ref)
        paths = []
        for r in _fold_runs(client, run):
            rid = r.info.run_id
            paths.append(_download(tracking_uri, rid, "model/model.pt", _cache_root() / "runs" / rid))
        return paths
    except MlflowException as exc:
        raise DataError(f"--model {ref}: not found in the tracking store {tracking_uri} "
                        f"({exc.message.splitlines()[0]}). Set MLFLOW_TRACKING_URI or tracking.uri.") from None


def _artifact_of(source: str, run_id: str) -> str:
    prefix = f"runs:/{run_id}/"
    if not source.startswith(prefix):
        raise DataError(f"registered model source {source}: expected {prefix}<path>.")
    return source[len(prefix):]


def load_fold_models(paths: list[Path], device: torch.device, folds: list[int] | None = None,
                     channels_last: bool = True) -> list[FoldModel]:
    from boneseg.models import build_model

    out = []
    for p in paths:
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise DataError(f"{p}: not a boneseg model checkpoint ({type(exc).__name__}). Pass a fold's model.pt.") \
                from None
        if not isinstance(state, dict) or not {"model", "classes", "preprocessing"} <= set(state):
            raise DataError(f"{p}: not a boneseg model.pt (needs model, classes, preprocessing). A training "
                            "checkpoint.pt holds optimiser state; use the trial's model.pt.")
        if folds is not None and int(state.get("fold", -1)) not in folds:
            continue
        net, _ = build_model(5 if state["classes"] == "multi" else 2, "none")
        net.load_state_dict(state["model"])
        net.to(device).eval()
        if channels_last:
            net.to(memory_format=torch.channels_last)
        out.append(FoldModel(net, state["classes"], state.get("case", "?"), int(state.get("fold", -1)),
                             dict(state["preprocessing"])))
    if not out:
        raise DataError(f"--folds {folds}: none of the {len(paths)} fold models "
                        f"({sorted(_fold_of(p) for p in paths)}) matches.")
    kinds = {(m.classes, m.preprocessing["image_size"], tuple(m.preprocessing["window"])) for m in out}
    if len(kinds) > 1:
        raise DataError(f"--model: the fold models differ in classes or preprocessing {sorted(kinds)}; "
                        "an ensemble needs one kind. Pick them with --folds.")
    return out


def _fold_of(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True).get("fold", -1))


# ---------------------------------------------------------------- inference
def ensemble_probabilities(models: list[FoldModel], planes_zss: np.ndarray, device, autocast: dict,
                           batch: int = 32, progress=None) -> np.ndarray:
    """(Z, S, S) windowed slices -> (Z, K, S, S) float32: the mean over fold models of the
    softmax probabilities."""
    total = None
    for m in models:
        probs = predict_slices(m.net, planes_zss, device, autocast, batch).softmax(dim=1)
        total = probs if total is None else total.add_(probs)
        if progress is not None:
            progress.update(1)
    return (total / len(models)).numpy()


def _orientations(affine: np.ndarray):
    """(to RAS+, back to the file's order) as nibabel orientation transforms."""
    ornt = nib.orientations.io_orientation(affine)
    back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), ornt)
    return ornt, back


def segment_volume(models: list[FoldModel], ct: Volume, device, autocast: dict, classes: str = "all",
                   batch: int = 32, chunk: int = 8, progress=None) -> np.ndarray:
    """CT in any orientation -> uint8 label ids on exactly its voxel grid."""
    to_ras, back = _orientations(ct.affine)
    ras = nib.orientations.apply_orientation(ct.data, to_ras)  # (X, Y, Z) in RAS+ order
    pre = models[0].preprocessing
    planes = window_planes(np.asarray(ras, dtype=np.float32), int(pre["image_size"]), pre["window"])
    probs = ensemble_probabilities(models, planes, device, autocast, batch, progress)  # (Z, K, S, S)
    labels = np.empty(ras.shape, np.uint8)
    for z in range(0, probs.shape[0], chunk):  # a few full-size planes at a time
        labels[:, :, z:z + chunk] = resize_back(probs[z:z + chunk], ras.shape[:2]).argmax(axis=-1)
    if classes == "bone":
        labels[labels != 1] = 0
    return np.ascontiguousarray(nib.orientations.apply_orientation(labels, back))


def label_description(ids: list[int]) -> str:
    """An ITK-SNAP label description file (Segmentation > Import Label Descriptions)."""
    lines = ["################################################",
             "# ITK-SnAP Label Description File (boneseg)",
             "# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL",
             "################################################",
             '    0     0    0    0     0  0  0    "Clear Label"']
    for i in ids:
        r, g, b = COLOURS[i]
        lines.append(f'{i:5d} {r:5d} {g:4d} {b:4d}  1.00  1  1    "{LABEL_IDS[i]}"')
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- files
def _nifti_name(p: Path) -> bool:
    return p.name.endswith((".nii", ".nii.gz"))


def plan_outputs(inp: Path, out: Path) -> list[tuple[Path, Path]]:
    """(input, output) pairs: FILE -> FILE (or into a folder), DIR -> DIR by file name."""
    if inp.is_dir():
        files = sorted(p for p in inp.iterdir() if p.is_file() and _nifti_name(p))
        if not files:
            raise DataError(f"--input {inp}: no .nii/.nii.gz files in this folder.")
        if _nifti_name(out):
            raise DataError(f"--output {out}: a folder input needs a folder output.")
        pairs = [(p, out / p.name) for p in files]
    elif inp.is_file():
        if not _nifti_name(inp):
            raise DataError(f"--input {inp}: expected a .nii or .nii.gz file.")
        pairs = [(inp, out if _nifti_name(out) else out / inp.name)]
    else:
        raise DataError(f"--input {inp}: not found. Give a CT .nii/.nii.gz file or a folder of them.")
    for src, dst in pairs:
        if dst.resolve() == src.resolve():
            raise DataError(f"--output {dst}: would overwrite its input CT. Choose another output path.")
    return pairs


def segment_files(cfg: Config, inp: Path, out: Path, model_ref: str, folds: list[int] | None = None,
                  device: str = "auto", classes: str = "all", progress: bool = True) -> list[dict]:
    from tqdm import tqdm

    from boneseg.tracking import tracking_uri
    from boneseg.train import prepare_runtime

    pairs = plan_outputs(Path(inp), Path(out))
    tc = cfg.train.model_copy(update={"device": device})
    dev, autocast = prepare_runtime(tc)
    models = load_fold_models(resolve_model(model_ref, tracking_uri(cfg)), dev, folds, tc.channels_last)
    results = []
    for src, dst in pairs:
        t0 = time.perf_counter()
        ct = load_ct(src)
        with tqdm(total=len(models), desc=dst.name, unit="model", disable=not progress, leave=False) as bar:
            labels = segment_volume(models, ct, dev, autocast, classes, tc.eval_batch_size, progress=bar)
        save_volume(Volume(labels, ct.affine), dst)
        ml = float(np.prod(ct.spacing)) / 1000.0
        results.append({"output": str(dst), "shape": list(ct.shape), "seconds": time.perf_counter() - t0,
                        "bone_ml": round(int((labels == 1).sum()) * ml, 2)})
    ids = [1] if classes == "bone" or models[0].classes == "single" else [1, 2, 3, 4]
    for folder in {dst.parent for _, dst in pairs}:
        atomic_write_text(folder / LABEL_FILE, label_description(ids))
    return results


def parse_folds(text: str) -> list[int] | None:
    if text == "all":
        return None
    try:
        return sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise ConfigError(f"--folds {text!r}: expected 'all' or fold numbers like 0,1") from None


def add_parser(sub) -> None:
    p = sub.add_parser("segment", help="label maps for new CTs with trained fold models (ensembled)")
    p.add_argument("--input", required=True, help="a CT .nii/.nii.gz or a folder of them")
    p.add_argument("--output", required=True, help="the label map file, or a folder (one file per input)")
    p.add_argument("--model", required=True,
                   help="models:/boneseg/<version>, an MLflow run id, or a model.pt / folder of fold models")
    p.add_argument("--folds", default="all", help="fold models to ensemble: all (default) or e.g. 0,1")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--classes", default="all", choices=["all", "bone"], help="bone: keep bone (1) only")
    p.set_defaults(func=main)


def main(args: argparse.Namespace, cfg: Config) -> int:
    res = segment_files(cfg, Path(args.input), Path(args.output), args.model, parse_folds(args.folds),
                        args.device, args.classes)
    for r in res:
        print(f"segment: {r['output']}  {'x'.join(map(str, r['shape']))}  bone {r['bone_ml']} ml  "
              f"({r['seconds']:.1f} s)")
    print(json.dumps({"volumes": len(res), "seconds": round(sum(r["seconds"] for r in res), 2)}))
    return 0
