"""The registered version as an MLflow pyfunc model, which `mlflow models serve` can serve.

The model is a LoggedModel whose `data/ensemble/` folder holds the fold models, their ONNX
exports and boneseg.json (postprocessing rule, scores, inference settings). MLflow loads it
through this module (`loader_module`): nothing is unpickled and no code is read from the
store. `_load_pyfunc` reads the fold models once, on the backend and with the rule that
`boneseg segment` would use, so a served label map equals segment's.

A request is one CT per row: `nifti` (the .nii/.nii.gz bytes, base64 in JSON) or `path`
(a file the server can read, or a file:// URI). The answer per row: `labels` (the label
map as .nii.gz bytes, on the CT's own grid) and `bone_ml`. Every request must carry the
server's token as `params.token`: the token is read from BONESEG_SERVE_TOKEN when the
model loads, and a model without one does not load.
"""
from __future__ import annotations

import hmac
import json
import os
import tempfile
import warnings
from pathlib import Path

TOKEN_ENV = "BONESEG_SERVE_TOKEN"
NAME = "ensemble"  # the LoggedModel's name, and its data folder
MAX_CT_BYTES = 2 << 30  # one uploaded CT; a larger one is refused before it is written


def signature():
    """Inputs `nifti` (binary) or `path` (string), outputs `labels` (binary NIfTI) and
    `bone_ml`; the parameter `token`."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("binary", "nifti", required=False),
                       ColSpec("string", "path", required=False)]),
        outputs=Schema([ColSpec("binary", "labels"), ColSpec("double", "bone_ml")]),
        params=ParamSchema([ParamSpec("token", "string", "")]))


def requirements() -> list[str]:
    """The packages the served model imports, at this environment's versions (boneseg
    itself is installed from its repository: `--env-manager local`)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in ("torch", "timm", "onnxruntime", "nibabel", "numpy", "scipy", "pydantic", "pandas", "mlflow"):
        try:
            out.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            pass
    return out


def log_pyfunc(client, run_id: str, model_dir: Path) -> tuple[str, str]:
    """The fold models of `model_dir` as a pyfunc LoggedModel of run `run_id` (its
    outputs, in the run's experiment); returns (models:/m-<id> URI, model id)."""
    import mlflow.pyfunc
    from mlflow.models import Model
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    with tempfile.TemporaryDirectory(prefix="boneseg-pyfunc-") as tmp:
        staged = Path(tmp) / NAME
        staged.mkdir()
        for f in sorted(model_dir.iterdir()):
            if f.is_file():  # hard links where the file system allows: no copy of the weights
                try:
                    os.link(f, staged / f.name)
                except OSError:
                    (staged / f.name).write_bytes(f.read_bytes())
        # created here, in the run's own experiment (MLflow's fluent path would use the active
        # experiment, which a team server's user may only read)
        run = client.get_run(run_id)
        model = client.create_logged_model(run.info.experiment_id, name=NAME, source_run_id=run_id,
                                           params=dict(run.data.params), model_type="boneseg-ensemble")
        with _use_tracking_uri(client.tracking_uri), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*input example was not provided")  # a CT: none
            info = Model.log(artifact_path=None, name=NAME, flavor=mlflow.pyfunc, run_id=run_id,
                             model_id=model.model_id, loader_module=__name__, data_path=str(staged),
                             signature=signature(), pip_requirements=requirements(),
                             metadata={"boneseg": "fold-model ensemble; params.token required"})
    return info.model_uri, info.model_id


class ServedEnsemble:
    """What MLflow calls `predict` on: the fold ensemble, loaded once."""

    def __init__(self, folder: Path, token: str):
        from boneseg.core.config import Config
        from boneseg.core.inference.predict import ModelRequest, find_checkpoints, inference_setup

        manifest = json.loads((folder / "boneseg.json").read_text())
        self.cfg = Config.model_validate({"infer": manifest.get("infer", {})})
        self.setup = inference_setup(self.cfg, ModelRequest(find_checkpoints(folder)))
        self._token = token

    def predict(self, model_input, params=None):
        import pandas as pd

        if not hmac.compare_digest(str((params or {}).get("token", "")), self._token):
            raise _refused("a missing or wrong token: pass params.token (the server's BONESEG_SERVE_TOKEN)",
                           "PERMISSION_DENIED")
        rows = model_input.to_dict("records") if isinstance(model_input, pd.DataFrame) else list(model_input)
        return pd.DataFrame([self._one(i, row) for i, row in enumerate(rows)], columns=["labels", "bone_ml"])

    def _one(self, i: int, row: dict) -> dict:
        from boneseg.core.imaging.nifti import Volume, load_ct, save_volume
        from boneseg.core.inference.predict import bone_ml, segment_volume
        from boneseg.errors import BonesegError

        s = self.setup
        with tempfile.TemporaryDirectory(prefix="boneseg-serve-") as tmp:
            src = self._source(i, row, Path(tmp))
            try:
                ct = load_ct(src)
            except BonesegError as exc:  # the message names the server's temporary file: say the row
                raise _refused(f"row {i}: {str(exc).replace(str(src), 'the CT')}") from None
            labels = segment_volume(s.models, ct, s.rt, "all", s.tc.eval_batch_size, None, s.rule)
            dst = Path(tmp) / "labels.nii.gz"
            save_volume(Volume(labels, ct.affine), dst)
            return {"labels": dst.read_bytes(), "bone_ml": bone_ml(labels, ct.spacing)}

    @staticmethod
    def _source(i: int, row: dict, tmp: Path) -> Path:
        """The row's CT as a file: the uploaded bytes written to `tmp`, or the given path."""
        data, path = row.get("nifti"), row.get("path")
        if isinstance(data, (bytes, bytearray)) and data:
            if len(data) > MAX_CT_BYTES:
                raise _refused(f"row {i}: {len(data)} bytes is over the {MAX_CT_BYTES} a CT may have.")
            dst = tmp / ("ct.nii.gz" if data[:2] == b"\x1f\x8b" else "ct.nii")
            dst.write_bytes(data)
            return dst
        if isinstance(path, str) and path:
            if "://" in path and not path.startswith("file://"):
                raise _refused(f"row {i}: path {path}: only server paths and file:// URIs; send other CTs "
                               "as `nifti` bytes.")
            return Path(path.removeprefix("file://"))
        raise _refused(f"row {i}: no CT: give `nifti` (the .nii/.nii.gz bytes) or `path`.")


def _refused(message: str, code: str = "INVALID_PARAMETER_VALUE"):
    """An MlflowException the scoring server answers with its HTTP status (400, or 403 for
    PERMISSION_DENIED) and this one line, no stack trace."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos import databricks_pb2

    return MlflowException(f"boneseg: {message}", error_code=getattr(databricks_pb2, code))


def _load_pyfunc(data_path: str) -> ServedEnsemble:
    """MLflow's entry point (`loader_module`): the ensemble in `data_path`, behind the token."""
    token = os.environ.get(TOKEN_ENV, "")
    if len(token) < 16:
        raise _refused(f"{TOKEN_ENV} is not set (or shorter than 16 characters): the served model answers "
                       "only requests that carry it. Set it from a private file, e.g. "
                       f"`export {TOKEN_ENV}=\"$(cat ~/.boneseg-serve-token)\"` (docs/results.md).")
    return ServedEnsemble(Path(data_path), token)
