"""DICOM export -> import -> labels -> slices -> `boneseg train` into a real MLflow store:
no header identifier and no source UID reaches any file the pipeline writes."""
import gzip
import shutil

import numpy as np
import pydicom
import pytest

from boneseg.cli import main
from boneseg.core.config import Config, to_yaml
from boneseg.core.data.importing import import_cohort
from boneseg.core.data.slices import build_slices
from boneseg.core.data.splits import write_splits
from boneseg.core.data.synth import synthesize
from boneseg.core.imaging.nifti import Volume, load_ct, load_volume, save_volume
from boneseg.core.labelling.labels import derive_labels
from conftest import PLANTED, UID_ROOT, write_dicom_series

pytestmark = pytest.mark.slow


def as_scanner_stores_it(vol: Volume) -> Volume:
    """The same patient with columns running right -> left and rows anterior -> posterior (LPS)."""
    flip = np.eye(4)
    flip[0, 0] = flip[1, 1] = -1
    flip[0, 3], flip[1, 3] = vol.shape[0] - 1, vol.shape[1] - 1
    return Volume(np.ascontiguousarray(vol.data[::-1, ::-1, :]), vol.affine @ flip)


def test_no_header_identifier_reaches_data_or_mlflow(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    cfg = Config.model_validate({
        "data": {"raw_dir": "raw", "labels_dir": "labels", "corrections_dir": "corr",
                 "proposals_dir": "proposals",
                 "splits_file": "splits.json", "slices_dir": "slices", "image_size": 32,
                 "synth": {"seed": 4, "abdomen": 5, "thigh": 2, "matrix": 64, "slices": 6}},
        "splits": {"folds": 2, "test_cases": 1},
        "train": {"epochs": 1, "batch_size": 2, "out_dir": "train", "threads": 2},
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    })
    synthesize(cfg.data.synth, cfg.data.raw_dir, progress=False)
    # the abdominal cases leave as DICOM series from a "PACS", with names in their headers
    export, truths = tmp_path / "pacs_export", {}
    for k, case in enumerate(sorted((tmp_path / "raw/abdomen").iterdir())):
        ct = load_ct(case / "ct.nii.gz")
        files = write_dicom_series(as_scanner_stores_it(Volume(ct.data.astype(np.int16), ct.affine)),
                                   export / f"{PLANTED['PatientID']}_{k}/CT", series_number=2 + k)
        truths[pydicom.dcmread(files[0]).SeriesInstanceUID] = (ct.data, load_volume(case / "truth.nii.gz"))
    shutil.rmtree(tmp_path / "raw/abdomen")
    dirs, _, _ = import_cohort(export, tmp_path / "raw", "dicom", id_map_path=tmp_path / ".boneseg/map.json")
    assert len(dirs) == 5
    # a reader labels them by hand (here: the synthetic truth) under the new ids; the map keys
    # cases by content, so each imported CT is matched to its source by its voxels
    for d in dirs:
        got = load_ct(d / "ct.nii.gz").data
        (uid,) = [u for u, (ct, _) in truths.items() if np.array_equal(ct, got)]
        save_volume(truths[uid][1], tmp_path / "corr" / f"{d.name}.nii.gz")
    qa = derive_labels(cfg, progress=False)
    assert sorted(r["label_source"] for r in qa["cases"] if r["cohort"] == "abdomen") == ["correction"] * 5
    write_splits(cfg)
    build_slices(cfg, progress=False)
    (tmp_path / "params.yaml").write_text(to_yaml(cfg))
    assert main(["--params", "params.yaml", "train", "--variant", "multi-random", "--fold", "0"]) == 0
    printed = capsys.readouterr()
    assert (tmp_path / "mlflow.db").stat().st_size > 0 and list((tmp_path / "mlruns").rglob("*.json"))

    planted = [v.encode() for v in PLANTED.values()] + [UID_ROOT.encode(), b"Planted"]
    planted += [uid.encode() for uid in truths]
    scanned = 0
    for f in tmp_path.rglob("*"):
        if not f.is_file() or export in f.parents or f.name == "map.json":
            continue
        raw = f.read_bytes()
        if f.name.endswith(".gz"):
            raw += gzip.decompress(raw)
        hit = [p for p in planted if p in raw]
        assert not hit, f"{f.relative_to(tmp_path)} holds {hit}"
        scanned += 1
    assert scanned > 40  # raw, labels, slices, splits, the trial's files, mlflow.db and its artifacts
    text = printed.out + printed.err
    assert not any(p.decode() in text for p in planted)
