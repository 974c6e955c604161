"""The per-case stages on local worker processes (`core.parallel`): byte-identical outputs to
a serial run (and the report's per-case scores equal to it), each worker's share of the
cores, a failure that names its case and leaves no index, and `data.workers: auto`
keeping small inputs in this process."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from boneseg.cli import main as cli_main
from boneseg.core.config import Config
from boneseg.core.data.importing import import_cohort
from boneseg.core.data.slices import build_slices
from boneseg.core.inference.folder import segment_files
from boneseg.core.inference.predict import ModelRequest, find_checkpoints
from boneseg.core.labelling.assist import score_case
from boneseg.core.labelling.labels import derive_labels
from boneseg.core.labelling.vnet import WEIGHTS, build_vnet, propose_case
from boneseg.core.layout import SLICE_INDEX, find_cases
from boneseg.core.parallel import AUTO_MIN_BYTES, Pool, cores
from boneseg.errors import DataError


def files_of(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def with_dirs(cfg: Config, tmp: Path, **dirs) -> Config:
    data = cfg.data.model_copy(update={k: str(tmp / v) for k, v in dirs.items()})
    return cfg.model_copy(update={"data": data})


def test_labels_slices_and_import_on_two_workers_are_byte_identical_to_serial(tiny_pipeline, tmp_path):
    cfg = with_dirs(tiny_pipeline, tmp_path, labels_dir="labels", slices_dir="slices")
    pool = Pool(2)
    qa = derive_labels(cfg, progress=False, pool=pool)
    assert pool.used == 2 and pool.where == "2 workers"
    assert [r["case"] for r in qa["cases"]] == [c["case"] for c in find_cases(cfg.data.raw_dir)]
    assert files_of(tmp_path / "labels") == files_of(Path(tiny_pipeline.data.labels_dir))
    build_slices(cfg, progress=False, pool=Pool(2))
    assert files_of(tmp_path / "slices") == files_of(Path(tiny_pipeline.data.slices_dir))
    truths = [c for c in find_cases(cfg.data.raw_dir) if c["truth"]]
    jobs = [(c["truth"], {"labels": tmp_path / "labels" / f"{c['case']}.nii.gz"}) for c in truths]
    scores = {n: Pool(n).map(score_case, jobs, [c["case"] for c in truths], "report", False) for n in (1, 2)}
    assert len(truths) > 1 and scores[1] == scores[2]  # the report's per-case scoring

    src = tmp_path / "src" / "images"
    src.mkdir(parents=True)
    for i, c in enumerate(find_cases(cfg.data.raw_dir)):
        shutil.copy(c["ct"], src / f"patient{i}.nii.gz")
    outs = {}
    for n in (1, 2):
        res = import_cohort(src.parent, tmp_path / f"raw{n}", id_map_path=tmp_path / f"ids{n}.json",
                            pool=Pool(n))
        assert len(res.written) == len(list(src.iterdir()))
        outs[n] = files_of(tmp_path / f"raw{n}")
    assert outs[1] == outs[2]
    assert (tmp_path / "ids1.json").read_bytes() == (tmp_path / "ids2.json").read_bytes()


@pytest.mark.slow  # each process builds the 45.6 M-parameter V-Net (~3 s)
def test_vnet_proposals_and_segment_on_two_workers_are_byte_identical_to_serial(tiny_pipeline, tmp_path):
    """The V-Net's inference (random weights: probabilities near 0.5 everywhere, so any
    difference in the arithmetic would flip voxels) and `segment` over a folder."""
    from safetensors.torch import save_file
    from test_segment import phantom, save_model

    cfg = tiny_pipeline.model_copy(update={"propose": tiny_pipeline.propose.model_copy(
        update={"spacing_mm": (3.0, 3.0, 4.0), "window": (16, 16, 16)})})
    torch.manual_seed(0)
    weights = tmp_path / WEIGHTS
    save_file({k: v.contiguous() for k, v in build_vnet().state_dict().items()}, str(weights))
    cases = [c for c in find_cases(cfg.data.raw_dir) if c["cohort"] == "abdomen"]
    for n in (1, 2):
        (tmp_path / f"p{n}").mkdir()
        Pool(n).map(propose_case, [(c, weights, cfg, tmp_path / f"p{n}") for c in cases],
                    [c["case"] for c in cases], "propose", False)
    assert files_of(tmp_path / "p1") == files_of(tmp_path / "p2")
    assert len(files_of(tmp_path / "p1")) == len(cases)
    masks = [np.asarray(nib.load(p).dataobj) for p in sorted((tmp_path / "p1").iterdir())]
    assert 0 < sum(int(m.sum()) for m in masks) < sum(m.size for m in masks)  # borderline: both labels

    (tmp_path / "model").mkdir()
    model = save_model(tmp_path / "model" / "fold0.pt", seed=0, steps=2)
    cts = tmp_path / "cts"
    cts.mkdir()
    for i in range(3):
        nib.save(nib.Nifti1Image(np.roll(phantom(), 3 * i, axis=0).astype(np.int16), np.eye(4)),
                 cts / f"ct{i}.nii.gz")
    seg_cfg = Config.model_validate({"train": {"device": "cpu"}})
    req = ModelRequest(find_checkpoints(model.parent))
    rows = {n: segment_files(seg_cfg, cts, tmp_path / f"seg{n}", req, progress=False, pool=Pool(n))
            for n in (1, 2)}
    assert files_of(tmp_path / "seg1") == files_of(tmp_path / "seg2")
    assert [r["bone_ml"] for r in rows[1]] == [r["bone_ml"] for r in rows[2]] and len(rows[2]) == 3


def worker_threads(_: int) -> int:
    return torch.get_num_threads()


def meet(folder: str, _: int) -> int:
    """A case that waits (up to 120 s) until two processes have each taken one."""
    import os
    import time

    Path(folder, str(os.getpid())).touch()
    deadline = time.monotonic() + 120
    while len(list(Path(folder).iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    return os.getpid()


def test_two_workers_are_this_process_and_a_child_taking_cases_from_one_queue(tmp_path):
    """The parent takes cases while its child starts, so its start-up costs the stage little."""
    import os

    pids = Pool(2).map(meet, [(str(tmp_path), i) for i in range(4)], list("abcd"), "t", False)
    assert os.getpid() in pids and len(set(pids)) == 2
    assert len(list(tmp_path.iterdir())) == 2


def test_each_worker_gets_its_share_of_the_cores_and_auto_keeps_small_inputs_here():
    pool = Pool(2)
    assert pool.map(worker_threads, [(0,), (1,)], ["a", "b"], "t", False) == [max(1, cores() // 2)] * 2
    small = Pool(2, auto=True)
    small.map(worker_threads, [(0,), (1,)], ["a", "b"], "t", False, sizes=[1, 1])
    assert small.used == 1 and small.where == "1 process"
    big = Pool(2, auto=True)
    big.map(worker_threads, [(0,), (1,)], ["a", "b"], "t", False, sizes=[AUTO_MIN_BYTES, 1])
    assert big.used == 2


def kept_after_free(n_bytes: int, folder: str | None = None) -> tuple[int, int]:
    """A case that makes and frees one array: (its pid, how much the process's resident
    memory grew). With `folder`, it first waits until two processes have a case each."""
    import os

    import psutil

    if folder:
        meet(folder, 0)
    me = psutil.Process()
    before = me.memory_info().rss
    a = np.ones(n_bytes // 8)
    del a
    return os.getpid(), me.memory_info().rss - before


# a stage's command in a fresh interpreter: a warm-up map (the pool's imports), then the map
# under test; this test process's heap, shaped by every earlier test, plays no part
KEEP_AND_HAND_BACK = """
import json, sys
import psutil
sys.path.insert(0, {here!r})
from test_parallel import kept_after_free
from boneseg.core.parallel import Pool

Pool({workers}).map(kept_after_free, [(4096, None)] * 2, ["w", "x"], "t", False)
me = psutil.Process()
before = me.memory_info().rss
got = Pool({workers}).map(kept_after_free, [({size}, {folder!r})] * 6, list("abcdef"), "t", False)
print(json.dumps({{"got": got, "after": me.memory_info().rss - before}}))
"""


@pytest.mark.parametrize("workers", [1, 2])
def test_a_map_reuses_the_memory_its_cases_free_and_hands_it_back_after(workers, tmp_path):
    """Inside a map, a case's freed arrays stay with its process and serve the next case
    (no new pages to fault in and zero); after the map, freed memory goes back to the OS."""
    size = 64 * 2**20
    folder = str(tmp_path) if workers > 1 else None
    code = KEEP_AND_HAND_BACK.format(here=str(Path(__file__).parent), workers=workers, size=size,
                                     folder=folder)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert len({pid for pid, _ in out["got"]}) == workers
    seen = set()
    for pid, grew in out["got"]:  # each process claims its cases in order
        if pid not in seen:
            assert grew >= size * 0.9  # its first case's array stayed in the process
        else:
            assert grew < size * 0.1  # the next cases reuse it
        seen.add(pid)
    assert out["after"] < size * 0.1  # after the map: handed back


def test_the_defaults_return_after_a_map_even_where_raising_them_failed_half_way(monkeypatch):
    """An older glibc refuses an mmap threshold above 32 MiB (mallopt returns 0) after it has
    taken the raised trim threshold: the map must still put the trim threshold back."""
    from boneseg.core import parallel

    class OldGlibc:
        def __init__(self):
            self.set, self.trims = {}, 0

        def mallopt(self, param, value):
            if param == parallel.M_MMAP_THRESHOLD and value > 32 * 2**20:
                return 0
            self.set[param] = value
            return 1

        def malloc_trim(self, pad):
            self.trims += 1
            return 1

    libc = OldGlibc()
    monkeypatch.setattr(parallel, "_glibc", lambda: libc)
    Pool(1).map(worker_threads, [(0,)], ["a"], "t", False)
    assert libc.set == {parallel.M_TRIM_THRESHOLD: parallel.GLIBC_DEFAULT,
                        parallel.M_MMAP_THRESHOLD: parallel.GLIBC_DEFAULT}
    assert libc.trims == 1


def test_a_failing_case_is_named_and_the_stage_writes_no_index(tiny_pipeline, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(tiny_pipeline.data.raw_dir, raw)
    bad = find_cases(raw)[2]
    Path(bad["ct"]).write_bytes(b"not a nifti at all")
    cfg = with_dirs(tiny_pipeline, tmp_path, raw_dir="raw", slices_dir="slices")
    with pytest.raises(DataError) as err:
        build_slices(cfg, progress=False, pool=Pool(2))
    assert bad["case"] in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "slices" / SLICE_INDEX).exists()


def test_the_stage_commands_say_where_their_cases_ran(tiny_pipeline, tmp_path, capsys):
    cfg = with_dirs(tiny_pipeline, tmp_path, labels_dir="labels", slices_dir="slices")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    assert cli_main(["--params", str(params), "labels", "--set", "data.workers=2"]) == 0
    assert f"cases (2 workers) -> {cfg.data.labels_dir}" in capsys.readouterr().out
    assert cli_main(["--params", str(params), "slices"]) == 0  # auto: a tiny cohort stays in this process
    assert "(1 process)" in capsys.readouterr().out
    assert files_of(tmp_path / "slices") == files_of(Path(tiny_pipeline.data.slices_dir))
