"""The trial adapter: a Ray Tune function trainable around the same `fit()` that
`boneseg train` runs, and a reporter that sends every epoch's metrics to Tune and, after
each validated epoch, stores the full training state as the trial's resume point in the
sweep's storage (`storage.ResumePoint`). Tune's one checkpoint of a trial is its final
result: an intermediate Tune checkpoint would be deleted when the next replaces it, while
the experiment state a killed driver left behind may still name it (see sweep.storage).
Trials only `tune.report`; the driver writes MLflow.

Scratch files (the training checkpoint, the final folder) live in a temporary folder
of the worker, never inside the trial folder that Tune syncs: Tune copies the reported
checkpoint into its storage before `tune.report` returns, so the scratch copy can go.
The folder is `<tmp>/boneseg-scratch-<uid>/<variant>-fold<k>-<host>-<pid>-<random>`, the
root private to its user (0700, checked to be theirs and not a link before use): a trial
removes its own on the way out, and a worker that was killed (SIGKILL, a lost driver)
cannot, so each trial first removes the folders of this host whose process is gone, and
the driver does the same for its own host when the grid ends.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import sys
import tempfile
import time
from pathlib import Path

from boneseg.core.config import Config
from boneseg.core.layout import PREDICTIONS
from boneseg.core.networks.checkpoint import CorruptCheckpoint, read_checkpoint
from boneseg.errors import DataError
from boneseg.sweep.storage import ResumePoint, Storage

FINAL = "final.json"  # in the last checkpoint: the trial's final result, reported again on restore
SCRATCH = "boneseg-scratch"  # + "-<uid>", under the worker's temporary folder


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (a SIGKILLed worker stays one until its
    parent, the raylet, reaps it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):  # no /proc (macOS) or it just ended: trust kill()
        return True
    return state not in ("Z", "X")


def _host() -> str:
    return socket.gethostname().replace("-", "_")  # the name's fields are split on "-"


def reap_scratch(root: Path) -> list[Path]:
    """Remove the scratch folders under `root` left by this host's dead trial processes
    (never a live one's, nor another host's on a shared /tmp). Returns what it removed."""
    host, gone = _host(), []
    for d in root.glob("*-fold*-*-*-*") if root.is_dir() else ():
        parts = d.name.rsplit("-", 3)  # [<variant>-fold<k>, host, pid, random]
        if len(parts) == 4 and parts[1] == host and parts[2].isdigit() and not _alive(int(parts[2])):
            shutil.rmtree(d, ignore_errors=True)
            gone.append(d)
    return gone


def scratch_root() -> Path:
    return Path(tempfile.gettempdir()) / f"{SCRATCH}-{os.getuid()}"


def private_root(root: Path) -> Path:
    """`root`, made 0700 if new; an error if it is a link, another user's, or open to others
    (on a shared /tmp someone could have made it first, to read or plant files)."""
    try:
        root.mkdir(mode=0o700)
    except FileExistsError:
        pass
    st = root.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise DataError(f"{root}: the trials' scratch folder is not a private folder of this user "
                        f"(owner uid {st.st_uid}, mode {stat.filemode(st.st_mode)}). Remove it, or point "
                        "TMPDIR elsewhere.")
    return root


def make_scratch(variant: str, fold: int) -> Path:
    root = private_root(scratch_root())
    reap_scratch(root)
    return Path(tempfile.mkdtemp(prefix=f"{variant}-fold{fold}-{_host()}-{os.getpid()}-", dir=root))


class TuneReporter:
    """fit() callback: every epoch's metrics go to `tune.report`; after each validated epoch
    (`train.val_every`) the full-state checkpoint becomes the trial's resume point first: a
    retried or resumed trial continues from there and re-trains the epochs after it bit for
    bit (the RNG state is in the checkpoint)."""

    def __init__(self, scratch: Path, variant: str, fold: int, resume: ResumePoint | None = None):
        import ray

        self.scratch, self.variant, self.fold = scratch, variant, fold
        self.resume = resume  # None: no resume point kept
        self.node = ray.get_runtime_context().get_node_id()
        self.meta: dict = {}
        self.report_seconds = 0.0  # in tune.report: Tune copies each checkpoint into its storage

    def on_start(self, info):
        self.meta = {"weights_source": info.weights.get("source", "none"), "device": info.device,
                     "amp": info.amp}

    def on_epoch(self, epoch, metrics, ckpt_path):
        from ray import tune

        t0 = time.perf_counter()
        result = {**metrics, **self.meta, "variant": self.variant, "fold": self.fold, "node_id": self.node}
        if "val_bone_dice" in metrics and self.resume:  # stored before Tune hears of the epoch
            self.resume.put(Path(ckpt_path))
        tune.report(result)
        self.report_seconds += time.perf_counter() - t0


def _restore(scratch: Path, resume: ResumePoint | None) -> dict | None:
    """A finished trial's final result (Tune's checkpoint of it, returned), else its resume
    point, copied to scratch for fit() to continue from (none: it starts afresh)."""
    from ray import tune

    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            if (Path(d) / FINAL).is_file():
                return {"final": json.loads((Path(d) / FINAL).read_text()), "checkpoint": ckpt}
    if resume and resume.get(scratch / "checkpoint.pt"):
        try:
            read_checkpoint(scratch / "checkpoint.pt")
        except CorruptCheckpoint as exc:  # it must not block the trial: drop it, train afresh
            (scratch / "checkpoint.pt").unlink()
            resume.drop()
            print(f"boneseg: warning: resume point {resume.name}: {exc}; discarded, the trial starts afresh.",
                  file=sys.stderr, flush=True)
    return None


def _resume_point(config: dict, variant: str, fold: int) -> ResumePoint | None:
    """This trial's resume point; None for an experiment
    started before resume points existed (its trials then start afresh)."""
    if not config.get("storage") or not config.get("experiment"):
        return None
    outage_s = config["cfg"]["sweep"]["storage_outage_s"]
    return Storage(config["storage"], outage_s).resume_point(config["experiment"], f"{variant}-fold{fold}")


def trainable(config: dict) -> None:
    """Ray Tune function trainable: restore, run fit(), report the final result."""
    import ray
    from ray import tune

    from boneseg.core.engine.training import fit

    t0 = time.perf_counter()
    cfg = Config.model_validate(config["cfg"])
    variant, fold = config["variant"], config["fold"]
    scratch = make_scratch(variant, fold)
    resume = _resume_point(config, variant, fold)
    try:
        done = _restore(scratch, resume)
        if done:  # finished before the driver died: report the same result again, train nothing
            tune.report(done["final"], checkpoint=done["checkpoint"])
            return
        reporter = TuneReporter(scratch, variant, fold, resume)
        r = fit(cfg, variant, fold, out_dir=scratch, callbacks=[reporter], resume=True)
        r.summary["timing"].update(report_s=reporter.report_seconds, trial_s=time.perf_counter() - t0)
        final_dir = scratch / "final"
        final_dir.mkdir()
        os.replace(scratch / "model.pt", final_dir / "model.pt")
        os.replace(scratch / PREDICTIONS, final_dir / PREDICTIONS)  # out-of-fold label maps
        shutil.copy2(scratch / "history.json", final_dir / "history.json")
        final = {
            "final": True,
            "variant": variant,
            "fold": fold,
            "bone_dice": r.bone_dice,
            "test_bone_dice": r.test_bone_dice,
            "summary": json.dumps(r.summary, default=float),
            "node_id": ray.get_runtime_context().get_node_id(),
            "resumed_from_epoch": r.resumed_from_epoch,
        }
        (final_dir / FINAL).write_text(json.dumps(final))
        tune.report(final, checkpoint=tune.Checkpoint.from_directory(str(final_dir)))
        if resume:  # the final result is in Tune's storage now
            resume.drop()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
