"""A lab's own CT: nothing lost, nothing mixed up, nothing leaked (the raw stage, the id
map, crash safety, bounded reads, header refusals, locks, unlabelled cases)."""
from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from boneseg.cli import main
from boneseg.core.config import Config, to_yaml
from boneseg.core.data.importing import ImportOptions, import_cohort
from boneseg.core.data.raw import build_raw
from boneseg.core.data.synth import synthesize
from boneseg.core.imaging.nifti import Volume, load_volume, save_volume
from boneseg.core.layout import find_cases
from boneseg.core.project import exclusive, id_map_path
from boneseg.errors import DataError
from conftest import RAS, make_ct, make_labels, write_dicom_series

ROOT = Path(__file__).resolve().parents[2]


def files(d: Path) -> dict:
    return {p.relative_to(d): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def project(tmp_path: Path, sources=(), **data) -> Config:
    """A project folder (its own dvc.yaml) and a Config whose paths lie in it."""
    (tmp_path / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    (tmp_path / "data/sources").mkdir(parents=True, exist_ok=True)
    d = {"raw_dir": str(tmp_path / "data/raw"), "sources_dir": str(tmp_path / "data/sources"),
         "corrections_dir": str(tmp_path / "data/corrections"), "labels_dir": str(tmp_path / "data/labels"),
         "proposals_dir": str(tmp_path / "data/proposals"), "splits_file": str(tmp_path / "data/splits.json"),
         "synth": {"seed": 3, "abdomen": 2, "thigh": 1, "matrix": 48, "slices": 5},
         "sources": [dict(s) for s in sources], **data}
    return Config.model_validate({"data": d})


def nifti_source(root: Path, seeds, name="patient1", labels=True) -> Path:
    for i, seed in enumerate(seeds):
        ct = make_ct(seed=seed)
        stem = name if len(seeds) == 1 else f"{name}_{i}"
        save_volume(ct, root / "images" / f"{stem}.nii.gz")
        if labels:
            save_volume(make_labels(ct), root / "labels" / f"{stem}.nii.gz")
    return root


# ------------------------------------------------------------------ the raw stage
def test_raw_stage_without_sources_is_the_synthetic_cohort(tmp_path):
    cfg = project(tmp_path)
    res = build_raw(cfg, progress=False)
    synthesize(cfg.data.synth, tmp_path / "direct", progress=False)
    assert res["cases"] == 3 and files(tmp_path / "data/raw") == files(tmp_path / "direct")


def test_raw_stage_imports_the_sources_with_the_same_ids_every_time(tmp_path):
    nifti_source(tmp_path / "data/sources/siteA", [1, 2])
    write_dicom_series(make_ct(seed=3), tmp_path / "data/sources/siteB/study/series")
    cfg = project(tmp_path, [{"path": str(tmp_path / "data/sources/siteA"), "layout": "nifti"},
                             {"path": str(tmp_path / "data/sources/siteB"), "layout": "dicom"}])
    build_raw(cfg, progress=False)
    first = files(tmp_path / "data/raw")
    assert [c["case"] for c in find_cases(cfg.data.raw_dir)] == ["ct0000", "ct0001", "ct0002"]
    source_bytes = files(tmp_path / "data/sources")
    # as `dvc repro` does it: the output is deleted, the stage runs again
    import shutil

    shutil.rmtree(tmp_path / "data/raw")
    build_raw(cfg, progress=False)
    assert files(tmp_path / "data/raw") == first
    assert files(tmp_path / "data/sources") == source_bytes  # the sources are only read
    imap = id_map_path(tmp_path / "data/raw")
    assert imap == tmp_path / ".boneseg/import_idmap.json"
    assert imap.stat().st_mode & 0o777 == 0o600 and imap.parent.stat().st_mode & 0o777 == 0o700
    assert "patient1" not in imap.read_text()


def test_raw_stage_refusals(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    cfg = project(tmp_path, [{"path": str(tmp_path / "elsewhere"), "layout": "nifti"}])
    with pytest.raises(DataError, match=r"data.sources\[0\].path .*not under data.sources_dir"):
        build_raw(cfg, progress=False)
    cfg = project(tmp_path, [{"path": str(tmp_path / "data/sources/nope"), "layout": "nifti"}])
    with pytest.raises(DataError, match=r"data.sources\[0\].path .*folder not found"):
        build_raw(cfg, progress=False)
    # a lost id map with corrections made under its ids: never re-import
    nifti_source(tmp_path / "data/sources/a", [1])
    cfg = project(tmp_path, [{"path": str(tmp_path / "data/sources/a"), "layout": "nifti"}])
    (tmp_path / "data/corrections").mkdir(parents=True)
    (tmp_path / "data/corrections/ct0000.nii.gz").write_bytes(b"hand work")
    with pytest.raises(DataError, match="id map is missing.*Restore the map"):
        build_raw(cfg, progress=False)
    assert not (tmp_path / "data/raw").exists()
    # a case that no source gives any more is not silently dropped by a direct run
    (tmp_path / "data/corrections/ct0000.nii.gz").unlink()
    build_raw(cfg, progress=False)
    nifti_source(tmp_path / "data/sources/a", [5], name="other")
    (tmp_path / "data/sources/a/images/patient1.nii.gz").unlink()
    (tmp_path / "data/sources/a/labels/patient1.nii.gz").unlink()
    with pytest.raises(DataError, match="ct0000.*come from no configured source.*--force"):
        build_raw(cfg, progress=False)
    assert build_raw(cfg, force=True, progress=False)["cases"] == 1


def test_cli_import_and_synth_refuse_a_stage_output(tmp_path, monkeypatch, capsys):
    cfg = project(tmp_path)
    (tmp_path / "params.yaml").write_text(to_yaml(cfg))
    nifti_source(tmp_path / "src", [1])
    monkeypatch.chdir(tmp_path)
    assert main(["import", "--source", "src"]) == 2
    err = capsys.readouterr().err
    assert "data/raw is the output of the DVC stage `raw`" in err and "data.sources" in err
    assert main(["synth"]) == 2
    assert not (tmp_path / "data/raw").exists()
    assert main(["import", "--source", "src", "--out", "mine"]) == 0
    assert len(find_cases(tmp_path / "mine")) == 1


# ------------------------------------------------------------------ pseudonyms
def test_two_sites_patient1_get_two_ids_and_reimport_is_a_no_op(tmp_path):
    out = tmp_path / "raw"
    a = nifti_source(tmp_path / "siteA", [1])
    b = nifti_source(tmp_path / "siteB", [2])
    import_cohort(a, out)
    before = files(out)
    written, same, _ = import_cohort(b, out)
    assert [d.name for d in written] == ["ct0001"] and same == []
    assert {k: v for k, v in files(out).items() if k.parts[1] == "ct0000"} == before  # the first is untouched
    written, same, _ = import_cohort(a, out)
    assert written == [] and [d.name for d in same] == ["ct0000"]
    # the same CT under another name is the same case
    save_volume(make_ct(seed=1), tmp_path / "siteC/images/renamed.nii.gz")
    save_volume(make_labels(make_ct(seed=1)), tmp_path / "siteC/labels/renamed.nii.gz")
    written, same, _ = import_cohort(tmp_path / "siteC", out)
    assert written == [] and [d.name for d in same] == ["ct0000"]
    assert len(find_cases(out)) == 2


def test_a_changed_source_replaces_its_case_only_with_force(tmp_path):
    out = tmp_path / "raw"
    src = nifti_source(tmp_path / "s", [1])
    import_cohort(src, out)
    before = files(out)
    lab = make_labels(make_ct(seed=1))
    lab.data[lab.data == 4] = 2
    save_volume(lab, src / "labels/patient1.nii.gz")
    with pytest.raises(DataError, match="case ct0000 exists with other data.*--force"):
        import_cohort(src, out)
    assert files(out) == before
    written, _, _ = import_cohort(src, out, options=ImportOptions(force=True))
    assert [d.name for d in written] == ["ct0000"] and files(out) != before
    assert not list(tmp_path.glob("**/.*.replaced"))


def test_a_missing_map_beside_imported_cases_is_refused(tmp_path):
    out = tmp_path / "raw"
    import_cohort(nifti_source(tmp_path / "a", [1]), out)
    id_map_path(out).unlink()
    with pytest.raises(DataError, match="id map .* is missing.*Restore the map"):
        import_cohort(nifti_source(tmp_path / "b", [2]), out)
    assert [c["case"] for c in find_cases(out)] == ["ct0000"]


def test_a_second_import_into_one_folder_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "raw"
    code = ("import sys, time; from boneseg.core.project import exclusive, lock_name; "
            f"cm = exclusive({str(out)!r}, lock_name('import', {str(out)!r}), 'an import'); cm.__enter__(); "
            "print('held', flush=True); time.sleep(30)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        want = rf"refused, an import is already running \(pid {holder.pid} on .*Wait for it"
        with pytest.raises(DataError, match=want):
            import_cohort(nifti_source(tmp_path / "a", [1]), out)
    finally:
        holder.kill()
        holder.wait()
    assert len(import_cohort(tmp_path / "a", out).written) == 1  # the lock went with its holder
    with exclusive(out, "x", "one"), pytest.raises(DataError, match="two: refused, one is already running"):
        with exclusive(out, "x", "two"):
            pass
    with exclusive(out, "sweep-boneseg-/abs/experiments/e.yaml", "a named sweep"):  # a path as the name
        assert (tmp_path / ".boneseg/locks/sweep-boneseg-_abs_experiments_e.yaml.lock").is_file()


def test_sigkill_mid_import_leaves_only_whole_cases_and_the_rerun_completes(tmp_path):
    src = tmp_path / "src"
    for i in range(8):
        save_volume(make_ct(shape=(200, 200, 60), seed=i), src / "images" / f"p{i}.nii.gz")
    out = tmp_path / "raw"
    import_cohort(nifti_source(tmp_path / "first", [42]), out)  # one case there before
    code = f"from boneseg.core.data.importing import import_cohort; import_cohort({str(src)!r}, {str(out)!r})"
    proc = subprocess.Popen([sys.executable, "-c", code])
    staging = tmp_path / ".raw.import-staging/cases"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(staging.glob("*/ct.nii.gz"))) < 3:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(list(staging.glob("*/ct.nii.gz"))) >= 3, "the import was not killed mid-way"
    # what `boneseg splits` sees (its case glob): exactly the cases that completed
    assert [c["case"] for c in find_cases(out)] == ["ct0000"]
    import_cohort(src, out)  # the same command again: it clears the staging and completes
    cases = find_cases(out)
    assert [c["case"] for c in cases] == [f"ct{i:04d}" for i in range(9)]
    assert not staging.parent.exists()
    keys = json.loads(id_map_path(out).read_text())["cases"]
    assert sorted(keys.values()) == [c["case"] for c in cases]  # no case without its map entry, no duplicate


# ------------------------------------------------------------------ bounded reads, headers
def bomb(path: Path, shape=(2048, 2048, 1024)) -> Path:
    """A small .nii.gz whose header declares a huge int16 volume of zeros."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.int16)
    hdr.set_qform(RAS, 1)
    hdr.set_sform(RAS, 1)
    body = hdr.binaryblock + b"\0" * 4
    with gzip.open(path, "wb", compresslevel=9) as fh:
        fh.write(body)
        chunk = b"\0" * (1 << 20)
        for _ in range(64):  # 64 MiB of zeros: ~64 KB compressed
            fh.write(chunk)
    return path


def test_a_gzip_bomb_is_refused_from_its_header(tmp_path):
    p = bomb(tmp_path / "bomb.nii.gz")
    assert p.stat().st_size < 200_000
    with pytest.raises(DataError, match=r"bomb\.nii\.gz: the header declares 2048 x 2048 x 1024 voxels .*"
                                        r"data\.max_voxels"):
        load_volume(p)
    with pytest.raises(DataError, match="over the limit of 100 voxels"):
        load_volume(save_volume(make_ct(), tmp_path / "ok.nii.gz"), max_voxels=100)


def test_sform_qform_disagreement_shear_and_offsets_are_refused(tmp_path):
    ct = make_ct()
    img = nib.Nifti1Image(ct.data, RAS)
    q = RAS.copy()
    q[0, 3] += 5
    img.set_qform(q, 1)
    nib.save(img, tmp_path / "forms.nii.gz")
    with pytest.raises(DataError, match="sform and qform disagree .*5 mm"):
        load_volume(tmp_path / "forms.nii.gz")
    shear = RAS.copy()
    shear[0, 1] = 0.3
    img = nib.Nifti1Image(ct.data, shear)
    img.set_qform(None, 0)
    nib.save(img, tmp_path / "shear.nii.gz")
    with pytest.raises(DataError, match="sform is sheared"):
        load_volume(tmp_path / "shear.nii.gz")
    img = nib.Nifti1Image(ct.data, RAS)
    img.header["vox_offset"] = 1e12
    raw = img.header.binaryblock + b"\0" * 4 + ct.data.tobytes(order="F")
    (tmp_path / "offset.nii").write_bytes(raw)
    with pytest.raises(DataError, match="vox_offset 1e\\+12"):
        load_volume(tmp_path / "offset.nii")


def test_scaled_nifti_reads_as_float32_hu(tmp_path):
    ct = make_ct()
    img = nib.Nifti1Image((ct.data + 1024).astype(np.uint16), RAS)
    img.header.set_slope_inter(1.0, -1024.0)
    nib.save(img, tmp_path / "scaled.nii.gz")
    vol = load_volume(tmp_path / "scaled.nii.gz")
    assert vol.data.dtype == np.float32 and np.array_equal(vol.data, ct.data.astype(np.float32))


def _poke(path: Path, marker: bytes, value: bytes) -> None:
    """Put a value pydicom would not write (malformed) over a marker of the same length."""
    raw = path.read_bytes()
    assert raw.count(marker) == 1 and len(marker) == len(value)
    path.write_bytes(raw.replace(marker, value))


def dicom_defect(folder: Path, defect: str) -> list[Path]:
    files = write_dicom_series(make_ct(), folder)
    ds = pydicom.dcmread(files[1])
    poke = None
    if defect == "frames":
        ds.NumberOfFrames, poke = "7654321", (b"7654321", b"abcdefg")
    elif defect == "ipp":
        ds.ImagePositionPatient = [1234.5678, 0, 0]
        poke = (b"1234.5678", b"xxxxxxxxx")
    elif defect in ("spacing0", "spacing_nan", "spacing_neg"):
        ds.PixelSpacing = {"spacing0": [0, 0.8], "spacing_nan": [0.8123, 0.8],
                           "spacing_neg": [-0.8, 0.8]}[defect]
        poke = (b"0.8123", b"NaN   ") if defect == "spacing_nan" else None
    elif defect == "slope0":
        ds.RescaleSlope = 0
    elif defect == "no_ipp":
        del ds.ImagePositionPatient
    elif defect == "iop":
        ds.ImageOrientationPatient = [1, 0, 0, 0.5, 0.5, 0]
    elif defect == "compressed":
        from pydicom.encaps import encapsulate
        from pydicom.uid import JPEG2000Lossless

        ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
        ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\0" * 60])
        ds["PixelData"].VR = "OB"
    elif defect == "multiframe":
        ds.NumberOfFrames = 3
    ds.save_as(files[1], enforce_file_format=True)
    if poke:
        _poke(files[1], *poke)
    return files


@pytest.mark.parametrize("defect, match", [
    ("frames", r"malformed NumberOfFrames"),
    ("ipp", r"malformed ImagePositionPatient"),
    ("spacing0", r"PixelSpacing \[0.0, 0.8\]: both must be positive"),
    ("spacing_nan", r"malformed PixelSpacing"),
    ("spacing_neg", r"PixelSpacing \[-0.8, 0.8\]: both must be positive"),
    ("slope0", r"RescaleSlope 0"),
    ("no_ipp", r"has no ImagePositionPatient"),
    ("iop", r"ImageOrientationPatient .*not two orthogonal unit vectors"),
    ("compressed", r"compressed \(JPEG 2000.*\) and no installed decoder"),
    ("multiframe", r"enhanced multi-frame CT object \(NumberOfFrames > 1\)"),
])
def test_each_dicom_header_defect_is_a_clean_refusal_and_skip_invalid_skips_it(tmp_path, defect, match):
    files = dicom_defect(tmp_path / "src/bad", defect)
    write_dicom_series(make_ct(seed=7), tmp_path / "src/good", series_number=9)
    with pytest.raises(DataError, match=match) as err:
        import_cohort(tmp_path / "src", tmp_path / "raw", "dicom")
    msg = str(err.value)
    assert "series 2 in bad" in msg and (defect == "multiframe" or files[1].name in msg)
    assert not (tmp_path / "raw").exists()
    written, _, skipped = import_cohort(tmp_path / "src", tmp_path / "raw", "dicom",
                                        options=ImportOptions(skip_invalid=True))
    assert len(written) == 1 and len(skipped) == 1 and skipped[0].startswith("series 2 in bad")


def test_a_dicom_series_over_the_size_limit_is_refused_before_its_pixels(tmp_path):
    write_dicom_series(make_ct(), tmp_path / "src")
    with pytest.raises(DataError, match=r"Rows x Columns x 6 files = 2,880 voxels, over the limit of 1,000"):
        import_cohort(tmp_path / "src", tmp_path / "raw", "dicom", options=ImportOptions(max_voxels=1000))


# ------------------------------------------------------------------ unlabelled cases, no thigh cohort
def test_unlabelled_cases_are_left_out_of_splits_and_listed(tmp_path, capsys):
    from boneseg.core.data.splits import write_splits

    out = tmp_path / "data/raw"
    synthesize(project(tmp_path).data.synth.model_copy(update={"abdomen": 6, "thigh": 0}), out,
               progress=False)
    for c in ("abd004", "abd005"):  # as if imported without labels
        (out / "abdomen" / c / "truth.nii.gz").unlink()
    cfg = project(tmp_path)
    cfg.splits.folds, cfg.splits.test_cases = 2, 1
    (tmp_path / "data/corrections").mkdir(parents=True)
    save_volume(Volume(np.zeros(nib.load(out / "abdomen/abd005/ct.nii.gz").shape, np.uint8), RAS),
                tmp_path / "data/corrections/abd005.nii.gz")
    s = write_splits(cfg)
    used = set(s["test"]) | {c for f in s["folds"] for c in f["val"]}
    assert s["to_label"] == ["abd004"] and "abd004" not in used and "abd005" in used
    cfg.splits.include_unreviewed = True
    s = write_splits(cfg)
    assert "to_label" not in s and "abd004" in set(s["test"]) | {c for f in s["folds"] for c in f["val"]}


def test_an_abdominal_cohort_without_thigh_cts_proposes_nothing_and_labels_from_threshold(tmp_path):
    from boneseg.core.labelling.labels import derive_labels
    from boneseg.core.labelling.vnet import propose

    cfg = project(tmp_path)
    cfg.labels.proposal = "vnet"
    synthesize(cfg.data.synth.model_copy(update={"thigh": 0}), cfg.data.raw_dir, progress=False)
    s = propose(cfg, progress=False)
    assert s["skipped"] == "no thigh CT to learn from" and s["train_cases"] == 0
    assert sorted(p.name for p in Path(cfg.data.proposals_dir).iterdir()) == ["propose.json"]
    qa = derive_labels(cfg, progress=False)
    assert {r["proposal"] for r in qa["cases"]} == {"filled"}


def test_correct_import_keeps_an_existing_correction_without_force(tiny_pipeline, tmp_path):
    from boneseg.core.labelling.correct import export_case, import_correction

    cfg = tiny_pipeline.model_copy(update={"data": tiny_pipeline.data.model_copy(update={
        "corrections_dir": str(tmp_path / "corr"), "annotate_dir": str(tmp_path / "ann")})})
    case = next(c["case"] for c in find_cases(cfg.data.raw_dir) if c["cohort"] == "abdomen")
    ws, _ = export_case(cfg, case)
    import_correction(cfg, case, ws / "start.nii.gz")
    before = files(tmp_path / "corr")
    with pytest.raises(DataError, match=f"{case} has a correction already.*--force"):
        import_correction(cfg, case, ws / "start.nii.gz")
    assert files(tmp_path / "corr") == before
    record = import_correction(cfg, case, ws / "start.nii.gz", force=True)
    assert record["case"] == case and os.path.isfile(tmp_path / "corr" / f"{case}.nii.gz")


def test_a_second_sweep_of_one_experiment_is_refused(tmp_path, monkeypatch, capsys):
    cfg = project(tmp_path)
    (tmp_path / "params.yaml").write_text(to_yaml(cfg))
    monkeypatch.chdir(tmp_path)
    name = f"sweep-{cfg.tracking.experiment}-params"
    with exclusive(tmp_path / cfg.sweep.metrics_file, name, "a sweep of params.yaml"):
        assert main(["sweep"]) == 2
    err = capsys.readouterr().err
    want = f"a sweep of params.yaml: refused, a sweep of params.yaml is already running (pid {os.getpid()}"
    assert want in err
    assert not (tmp_path / "results").exists()


def test_sources_that_give_no_case_are_one_clear_refusal(tmp_path):
    (tmp_path / "data/sources/empty/images").mkdir(parents=True)
    (tmp_path / "data/sources/empty/images/broken.nii.gz").write_bytes(b"not a CT")
    cfg = project(tmp_path, [{"path": str(tmp_path / "data/sources/empty"), "layout": "nifti",
                              "skip_invalid": True}])
    with pytest.raises(DataError, match=r"data.sources gave no case \(1 skipped; the first: broken"):
        build_raw(cfg, progress=False)
    assert not (tmp_path / "data/raw").exists()


def test_a_queued_dvc_experiments_copy_keeps_the_projects_state_tracking_and_storage(tmp_path, monkeypatch):
    """`dvc exp run --queue` runs stages in <project>/.dvc/tmp/exps/<copy> with DVC_ROOT set to
    the project: the sqlite store, Ray storage and the private state stay the project's."""
    from boneseg.core.project import anchored_path, anchored_uri, project_root, queued_workspace_root

    project = tmp_path / "project"
    copy = project / ".dvc" / "tmp" / "exps" / "tmpabc"
    copy.mkdir(parents=True)
    (project / "dvc.yaml").write_text("stages: {}\n")
    (copy / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(copy)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert queued_workspace_root() is None and anchored_uri("sqlite:///mlflow.db") == "sqlite:///mlflow.db"
    monkeypatch.setenv("DVC_ROOT", str(project))
    assert queued_workspace_root() == project.resolve()
    assert anchored_uri("sqlite:///mlflow.db") == f"sqlite:///{project.resolve()}/mlflow.db"
    assert anchored_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"  # absolute: as given
    assert anchored_uri("http://mlflow:5000") == "http://mlflow:5000"
    assert anchored_path("ray_results") == str(project.resolve() / "ray_results")
    assert anchored_path("s3://ray/x") == "s3://ray/x"
    assert project_root(copy / "data" / "raw") == project.resolve()  # the id map and locks: the project's
    monkeypatch.chdir(project)  # `dvc repro` in the project itself: nothing changes
    assert queued_workspace_root() is None and project_root(project / "data") == project.resolve()
    (project / "sub").mkdir()
    monkeypatch.chdir(project / "sub")  # a stage with a wdir inside the project
    assert queued_workspace_root() is None
