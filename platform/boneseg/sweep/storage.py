"""Where Ray Tune keeps the sweep's experiments: a local folder, or object storage
(`s3://bucket/prefix?endpoint_override=HOST:PORT&scheme=http`, credentials from the
environment), through pyarrow's filesystems as Ray itself uses them. No Ray here.

The driver keeps one small state file per experiment beside Tune's own
(`<experiment>/boneseg_sweep.json`: the grid's fingerprint, the MLflow parent run and
the status), and finds an unfinished experiment to resume by listing those.

Each running trial keeps its resume point there too (`<experiment>/resume/<variant>-fold<k>.pt`,
the full training state of its last validated epoch), one object it overwrites whole, not
a Tune checkpoint: Tune's experiment state is uploaded a little after each checkpoint, so a
driver killed in between leaves a state that names a checkpoint Tune has already replaced
and deleted (`num_to_keep`), which it then cannot restore. Tune's only checkpoint of a
trial is its final result, which nothing replaces.

Object storage that is down or restarting is waited out: each read and write retries with
backoff (0.5 s doubling to 8 s) for `sweep.storage_outage_s` after its first failure, then
`StorageOutage` says so in one line. Only transient failures are retried (no connection, a
timeout, a 5xx); a refused key or a missing object is raised at once. Locations are
printed through `core.redact`, and never with their query string.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from boneseg.core.io import atomic_path
from boneseg.core.project import anchored_path
from boneseg.core.redact import redact
from boneseg.core.retry import with_backoff
from boneseg.errors import BonesegError

STATE_FILE = "boneseg_sweep.json"
RESUME_DIR = "resume"


TRANSIENT = ("NETWORK_CONNECTION", "Couldn't connect", "curlCode: 7", "curlCode: 28", "Connection refused",
             "Connection reset", "timed out", "Timeout", "SERVICE_UNAVAILABLE", "SLOW_DOWN",
             "INTERNAL_FAILURE", "HTTP response code: 5", "Empty reply", "Recv failure", "Send failure")


class StorageOutage(BonesegError):
    """Sweep storage stayed unreachable for longer than sweep.storage_outage_s."""


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError) and \
        any(k in str(exc) for k in TRANSIENT)


class Storage:
    """`sweep.storage_path` as a folder of experiments."""

    def __init__(self, location: str, outage_s: float = 120.0, sleep=time.sleep):
        self.remote = "://" in location
        if self.remote:
            self.uri = location
        else:
            self.uri = str(Path(anchored_path(location)).resolve())  # a queued DVC experiment: the project's
        self._fs = None
        self.outage_s, self._sleep = outage_s, sleep

    @property
    def where(self) -> str:
        """The location for messages and tags: no query string, no credentials."""
        return redact(self.uri.split("?")[0])

    def retrying(self, what: str, fn, *args):
        """`fn(*args)`, retried while the storage is down (remote storage only)."""

        def tell(event: str, detail) -> None:
            if event == "down":
                print(f"storage: {self.where} unreachable ({what}); retrying for up to {self.outage_s:.0f} s",
                      file=sys.stderr, flush=True)
            else:
                print(f"storage: {self.where} answers again after {detail:.0f} s; {what} went through",
                      file=sys.stderr, flush=True)

        def gave_up(exc: Exception, seconds: float) -> StorageOutage:
            return StorageOutage(
                f"Ray storage {self.where}: unreachable for {seconds:.0f} s ({what}; "
                f"{redact(str(exc).splitlines()[0])[:120]}). Start the S3 server and run the same "
                "command again, or raise sweep.storage_outage_s.")

        out, _ = with_backoff(lambda: fn(*args), lambda exc: self.remote and is_transient(exc), self.outage_s,
                              self._sleep, tell, gave_up)
        return out

    def _filesystem(self):
        if self._fs is None:
            from pyarrow import fs

            self._fs = fs.FileSystem.from_uri(self.uri) if self.remote else (fs.LocalFileSystem(), self.uri)
        return self._fs

    def experiment(self, name: str) -> str:
        """The URI (or path) of one experiment: the name joined before any ?query."""
        if not self.remote:
            return str(Path(self.uri) / name)
        parts = urlsplit(self.uri)
        return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/" + name))

    def _path(self, name: str, leaf: str = "") -> str:
        fs, base = self._filesystem()
        return "/".join(p for p in (base.rstrip("/"), name, leaf) if p)

    def write_state(self, name: str, state: dict) -> None:
        """Atomic for objects (a PUT appears whole); temp + rename on a local disk."""
        self.retrying(f"writing {name}/{STATE_FILE}", self._write_state, name, state)

    def _write_state(self, name: str, state: dict) -> None:
        if not self.remote:
            from boneseg.core.io import write_json

            write_json(Path(self.uri) / name / STATE_FILE, state, indent=None)
            return
        fs, _ = self._filesystem()
        with fs.open_output_stream(self._path(name, STATE_FILE)) as out:
            out.write((json.dumps(state) + "\n").encode())

    def resume_point(self, name: str, key: str) -> ResumePoint:
        """The resume point `key` (a trial's `<variant>-fold<k>`) of experiment `name`."""
        return ResumePoint(self, name, key)

    def read_state(self, name: str) -> dict:
        return self.retrying(f"reading {name}/{STATE_FILE}", self._read_state, name)

    def _read_state(self, name: str) -> dict:
        fs, _ = self._filesystem()
        with fs.open_input_stream(self._path(name, STATE_FILE)) as f:
            return json.loads(f.read().decode())

    def find_unfinished(self, fingerprint: str) -> str | None:
        """The newest experiment with this fingerprint that did not finish, by name."""
        return self.retrying("listing experiments", self._find_unfinished, fingerprint)

    def _find_unfinished(self, fingerprint: str) -> str | None:
        from pyarrow import fs as pafs

        fs, base = self._filesystem()
        try:
            infos = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
        except FileNotFoundError:
            return None
        for name in sorted((i.base_name for i in infos if i.type == pafs.FileType.Directory), reverse=True):
            if fs.get_file_info(self._path(name, STATE_FILE)).type != pafs.FileType.File:
                continue
            state = self._read_state(name)
            if state.get("fingerprint") == fingerprint and state.get("status") != "finished":
                return name
        return None

    def progress(self, name: str) -> tuple[int, int]:
        """(trials finished, trials with a resume point) of experiment `name`: what a resume keeps."""
        return self.retrying(f"listing {name}", self._progress, name)

    def _progress(self, name: str) -> tuple[int, int]:
        from pyarrow import fs as pafs

        fs, _ = self._filesystem()
        infos = fs.get_file_info(pafs.FileSelector(self._path(name), recursive=True, allow_not_found=True))
        files = [i.path for i in infos if i.type == pafs.FileType.File]
        finished = {f.rsplit("/", 3)[-3] for f in files if f.endswith("/final.json") and "/checkpoint_" in f}
        resuming = [f for f in files if f"/{RESUME_DIR}/" in f and f.endswith(".pt")]
        return len(finished), len(resuming)

    def problem(self) -> str | None:
        """None if the storage can be listed and written, else one line: what and the fix."""
        if not self.remote:
            return None
        from pyarrow import fs as pafs

        where = self.where
        try:
            fs, base = self._filesystem()
            bucket = base.split("/")[0]
            if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
                return (f"Ray storage {where}: bucket {bucket!r} does not exist. Create it "
                        "(infra/team/stack.py up creates 'ray'), or fix sweep.storage_path.")
            probe = self._path(".boneseg-write-probe")
            with fs.open_output_stream(probe) as out:
                out.write(b"ok\n")
            fs.delete_file(probe)
            return None
        except OSError as exc:
            text = str(exc)
            if any(k in text for k in ("SIGNATURE_DOES_NOT_MATCH", "INVALID_ACCESS_KEY", "ACCESS_DENIED",
                                       "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied")):
                return (f"Ray storage {where}: the S3 server refused the key. Check AWS_ACCESS_KEY_ID / "
                        "AWS_SECRET_ACCESS_KEY (infra/team/state/client.env).")
            return (f"Ray storage {where}: not reachable ({redact(text)[:160]}). Start the S3 server or fix "
                    "endpoint_override in sweep.storage_path.")
        except Exception as exc:  # a malformed URI, an unknown scheme
            why = redact(str(exc))[:160]
            return f"Ray storage {where}: {type(exc).__name__}: {why}. Fix sweep.storage_path."


@dataclass(frozen=True)
class ResumePoint:
    """One trial's resume point, `<experiment>/resume/<key>.pt` in a sweep's storage."""

    storage: Storage
    experiment: str
    key: str

    @property
    def path(self) -> str:
        return self.storage._path(self.experiment, f"{RESUME_DIR}/{self.key}.pt")

    @property
    def name(self) -> str:
        """For messages: the storage's location (redacted), then the point's own path in it."""
        return f"{self.storage.where} {self.experiment}/{RESUME_DIR}/{self.key}.pt"

    def put(self, src: Path) -> None:
        """Store `src` as the resume point, replacing it whole."""
        self.storage.retrying(f"storing resume point {self.key}", self._put, src)

    def get(self, dest: Path) -> bool:
        """Copy the resume point to `dest`; False if there is none."""
        return self.storage.retrying(f"reading resume point {self.key}", self._get, dest)

    def drop(self) -> None:
        """Remove the resume point (none is fine)."""
        self.storage.retrying(f"removing resume point {self.key}", self._drop)

    def _put(self, src: Path) -> None:
        if not self.storage.remote:
            with atomic_path(self.path) as tmp:
                tmp.unlink()  # the unique temp name, for the link
                try:  # a hard link when the scratch folder is on the same disk: no copy
                    os.link(src, tmp)
                except OSError:
                    shutil.copyfile(src, tmp)
            return
        fs, _ = self.storage._filesystem()
        with open(src, "rb") as f, fs.open_output_stream(self.path) as out:
            shutil.copyfileobj(f, out, 8 << 20)  # the object appears when the upload completes

    def _get(self, dest: Path) -> bool:
        from pyarrow import fs as pafs

        fs, _ = self.storage._filesystem()
        if fs.get_file_info(self.path).type != pafs.FileType.File:
            return False
        with atomic_path(dest) as tmp, fs.open_input_stream(self.path) as f, open(tmp, "wb") as out:
            shutil.copyfileobj(f, out, 8 << 20)
        return True

    def _drop(self) -> None:
        fs, _ = self.storage._filesystem()
        try:
            fs.delete_file(self.path)
        except FileNotFoundError:
            pass
