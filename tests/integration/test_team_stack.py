"""The team stack on loopback (infra/team/stack.py: PostgreSQL + SeaweedFS S3 + MLflow with
basic auth), started in a temp folder with free ports and stopped after; boneseg used
against it exactly as a team would, with faults: a SIGKILLed driver, an MLflow outage."""

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import boto3
import mlflow
import pytest
from test_sweep import BIN, assert_no_tune_errors, boneseg_cmd, check_tree, sweep_cfg

from boneseg.core.config import to_yaml
from boneseg.errors import ConfigError
from boneseg.sweep.driver import run_sweep

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
STACK = [sys.executable, str(ROOT / "infra/team/stack.py")]
sys.path.insert(0, str(ROOT / "infra/team"))
from stack import http_status, read_env  # noqa: E402  (the stack's own env reader and HTTP probe)

sys.path.insert(0, str(ROOT / "bench"))
from stack_ports import probe  # noqa: E402  (what each port answers without credentials)


def stack(*args, state: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*STACK, *args, "--dir", str(state)], capture_output=True, text=True, timeout=240, check=True
    )


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    """The stack, up once for this module; its folder is one the postgres user can reach."""
    base = Path(tempfile.mkdtemp(prefix="bsteam", dir="/tmp"))
    os.chmod(base, 0o755)
    state = base / "state"
    t0 = time.time()
    first = stack("up", "--free-ports", state=state)
    started = time.time() - t0
    assert "stack: up in" in first.stdout
    second = stack("up", state=state)  # idempotent: a no-op while it runs
    assert "already running" in second.stdout
    check_private(state)
    yield {
        "state": state,
        "client": read_env(state / "client.env"),
        "secrets": read_env(state / "team.env"),
        "start_s": started,
        "logs": [first.stdout + first.stderr, second.stdout + second.stderr],
    }
    t0 = time.time()
    stack("down", state=state)
    print(f"\nteam stack: up {started:.1f} s, down {time.time() - t0:.1f} s")
    left = subprocess.run(["pgrep", "-af", str(state)], capture_output=True, text=True).stdout
    assert not left.strip(), f"processes left behind: {left}"
    shutil.rmtree(base, ignore_errors=True)


def check_private(state: Path) -> None:
    """DIR is 0700 (0710, group postgres, as root: PostgreSQL passes through); every file
    the stack wrote in it is 0600 and every folder 0700."""
    st = state.stat()
    if os.geteuid() == 0:
        import grp

        assert stat.S_IMODE(st.st_mode) == 0o710 and st.st_gid == grp.getgrnam("postgres").gr_gid
    else:
        assert stat.S_IMODE(st.st_mode) == 0o700
    for p in state.iterdir():
        want = 0o700 if p.is_dir() else 0o600
        assert stat.S_IMODE(p.stat().st_mode) == want, f"{p}: {oct(p.stat().st_mode)}"
    logs = [p for p in (state / "logs").rglob("*") if p.is_file()]
    assert logs and all(stat.S_IMODE(p.stat().st_mode) & 0o077 == 0 for p in logs)


@pytest.fixture
def client_env(team, monkeypatch):
    for k, v in team["client"].items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return {**os.environ}


def psql(team, sql: str) -> str:
    s = team["secrets"]
    return subprocess.run(
        ["psql", "-h", "127.0.0.1", "-p", s["PG_PORT"], "-U", "postgres", "-d", "mlflow", "-At", "-c", sql],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PGPASSWORD": s["PG_SUPERUSER_PASSWORD"]},
    ).stdout


def s3(team, secret=None):
    c = team["client"]
    return boto3.client(
        "s3",
        endpoint_url=c["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id=c["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=secret or c["AWS_SECRET_ACCESS_KEY"],
    )


def keys(team, bucket: str, prefix: str = "") -> list[str]:
    pages = s3(team).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for p in pages for o in p.get("Contents", [])]


def team_cfg(base, tmp_path, team, prefix: str):
    storage = team["client"]["BONESEG_RAY_STORAGE"].replace("s3://ray/boneseg", f"s3://ray/{prefix}")
    cfg = sweep_cfg(
        base, tmp_path, variants=("multi-random",), epochs=2, storage_path=storage, log_model=True
    )
    return cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"outage_s": 90})})


def test_auth_and_preflight_name_the_failing_service(team, client_env, tiny_pipeline, tmp_path, monkeypatch):
    url = team["client"]["MLFLOW_TRACKING_URI"] + "/api/2.0/mlflow/experiments/search?max_results=1"
    user, pw = team["client"]["MLFLOW_TRACKING_USERNAME"], team["client"]["MLFLOW_TRACKING_PASSWORD"]
    assert http_status(url, timeout=10) == 401
    assert http_status(url, (user, "wrong-" + pw), 10) == 401
    assert http_status(url, (user, pw), 10) == 200
    with pytest.raises(Exception, match="SignatureDoesNotMatch|InvalidAccessKeyId|AccessDenied"):
        s3(team, secret="wrong-secret").list_objects_v2(Bucket="mlflow")
    monkeypatch.chdir(tmp_path)
    good = team_cfg(tiny_pipeline, tmp_path, team, "preflight")
    cases = {
        "MLFLOW_TRACKING_PASSWORD": ("wrong", "refused the credentials (401, user 'boneseg')"),
        "AWS_SECRET_ACCESS_KEY": ("wrong", "the S3 server refused the key"),
    }
    for var, (value, message) in cases.items():
        monkeypatch.setenv(var, value)
        with pytest.raises(ConfigError, match=r"no trial was started") as err:
            run_sweep(good)
        assert (
            message in str(err.value)
            and len([ln for ln in str(err.value).splitlines() if message in ln]) == 1
        )
        monkeypatch.setenv(var, team["client"][var])
    nobucket = good.model_copy(
        update={
            "sweep": good.sweep.model_copy(
                update={"storage_path": good.sweep.storage_path.replace("s3://ray/", "s3://nobucket/")}
            )
        }
    )
    with pytest.raises(ConfigError, match="bucket 'nobucket' does not exist"):
        run_sweep(nobucket)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    with pytest.raises(ConfigError, match=r"MLflow: http://127.0.0.1:9 not reachable"):
        run_sweep(good)


def run_driver(cfg, tmp_path, env, on_line=None, kill_after_done=False) -> tuple[int, str]:
    params = tmp_path / "params.yaml"
    params.write_text(to_yaml(cfg))
    proc = subprocess.Popen(
        boneseg_cmd(params, "sweep"),
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    out = []
    for line in proc.stdout:
        out.append(line)
        if on_line:
            on_line(line)
        if kill_after_done and line.startswith("sweep: done"):
            os.killpg(proc.pid, signal.SIGKILL)
            break
    out.append(proc.stdout.read())
    return proc.wait(600), "".join(out)


class Outage:
    """Stops one service of the stack for `seconds` (then starts it again) on a background
    thread, the first time the driver prints a line starting with `when`."""

    def __init__(self, team, service: str, seconds: float, when: str):
        self.team, self.service, self.down_s, self.when = team, service, seconds, when
        self.thread, self.seconds = None, 0.0

    def on_line(self, line: str) -> None:
        if line.startswith(self.when) and self.thread is None:
            self.thread = threading.Thread(target=self._cycle)
            self.thread.start()

    def _cycle(self) -> None:
        t0 = time.time()
        stack("down", "--only", self.service, state=self.team["state"])
        time.sleep(self.down_s)
        stack("up", state=self.team["state"])
        self.seconds = time.time() - t0


def test_sweeps_resume_and_an_outage_on_the_team_stack(team, client_env, tiny_pipeline, tmp_path):
    env = {k: v for k, v in client_env.items() if k != "RAY_ADDRESS"}
    # A: an uninterrupted sweep, the reference result
    a_dir = tmp_path / "a"
    a_dir.mkdir()
    cfg_a = team_cfg(tiny_pipeline, a_dir, team, "sweep-a")
    rc, out_a = run_driver(cfg_a, a_dir, env)
    assert rc == 0, out_a[-3000:]
    assert_no_tune_errors(out_a)
    uri = team["client"]["MLFLOW_TRACKING_URI"]
    check_tree(uri, ["multi-random"], 2)
    # ... its runs are rows in PostgreSQL, its artifacts objects in S3, its Tune state in S3
    assert psql(team, "select count(*) from runs where lifecycle_stage = 'active'").strip() == "4"
    assert (
        psql(team, "select count(*) from metrics where key = 'val_bone_dice'").strip() == "4"
    )  # 2 folds x 2
    art = keys(team, "mlflow")
    assert sum(k.endswith("/summary.json") for k in art) == 2
    assert (
        sum(k.endswith(".pt") for k in art) >= 4
    )  # each fold's model.pt (log_model), + the registered copies
    ray_keys = keys(team, "ray", "sweep-a/")
    assert any(k.split("/")[-1].startswith("experiment_state") for k in ray_keys)
    assert any(k.endswith("/boneseg_sweep.json") for k in ray_keys)
    assert any("checkpoint_" in k for k in ray_keys)
    metrics_a = json.loads((a_dir / "metrics.json").read_text())

    # B: the same grid; its driver is SIGKILLed after one trial, and while the same command
    # resumes it, the MLflow server is stopped for 15 s and started again
    b_dir = tmp_path / "b"
    b_dir.mkdir()
    cfg_b = team_cfg(tiny_pipeline, b_dir, team, "sweep-b")
    rc, out_b1 = run_driver(cfg_b, b_dir, env, kill_after_done=True)
    assert "sweep: done" in out_b1
    outage = Outage(team, "mlflow", 15, "sweep: resuming")
    rc, out_b2 = run_driver(cfg_b, b_dir, env, on_line=outage.on_line)
    outage.thread.join(120)
    assert rc == 0, out_b2[-3000:]
    assert "resuming" in out_b2 and outage.seconds >= 15
    # the driver's writes met the outage, waited, and went through
    assert "tracking: MLflow at http://127.0.0.1:" in out_b2 and "MLflow answers again after" in out_b2
    assert_no_tune_errors(out_b2)
    print(f"\nMLflow outage survived: {outage.seconds:.1f} s (stopped 15 s + restart)")
    assert json.loads((b_dir / "metrics.json").read_text()) == metrics_a
    # nothing duplicated or lost: one more tree of 4 runs, each fold with val_bone_dice at epochs 0 and 1
    assert psql(team, "select count(*) from runs where lifecycle_stage = 'active'").strip() == "8"
    assert psql(team, "select count(*) from runs where lifecycle_stage = 'deleted'").strip() == "0"
    c = mlflow.MlflowClient(uri)
    parents = [
        r for r in c.search_runs([c.get_experiment_by_name("boneseg").experiment_id], "tags.kind = 'sweep'")
    ]
    assert len(parents) == 2 and {r.info.status for r in parents} == {"FINISHED"}
    b_parent = next(r for r in parents if r.info.run_id != check_tree_parent(c, "sweep-a"))
    folds = c.search_runs(
        [b_parent.info.experiment_id], f"tags.sweep_id = '{b_parent.info.run_id}' and tags.level = 'fold'"
    )
    assert len(folds) == 2
    for f in folds:
        assert [m.step for m in c.get_metric_history(f.info.run_id, "val_bone_dice")] == [0, 1]

    # the registered model, from a fresh cache, through the server's artifact proxy
    seg_env = {**env, "BONESEG_CACHE": str(tmp_path / "fresh-cache")}
    ct = tiny_ct(tiny_pipeline)
    r = subprocess.run(
        boneseg_cmd(
            a_dir / "params.yaml",
            "segment",
            "--input",
            str(ct),
            "--output",
            str(tmp_path / "seg.nii.gz"),
            "--model",
            "models:/boneseg/1",
        ),
        cwd=tmp_path,
        env=seg_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "seg.nii.gz").is_file() and any((tmp_path / "fresh-cache").rglob("*.pt"))
    no_secret_anywhere(team, [out_a, out_b1, out_b2, r.stdout, r.stderr], [a_dir, b_dir])


def test_an_s3_outage_mid_sweep_is_ridden_out(team, client_env, tiny_pipeline, tmp_path):
    """SeaweedFS is stopped for 30 s once the first epoch is reported and then started again:
    resume points, Tune's checkpoints and the driver's state wait for it (sweep.storage_outage_s),
    and the grid finishes with each (variant, fold) FINISHED once and metrics.json complete."""
    env = {k: v for k, v in client_env.items() if k != "RAY_ADDRESS"}
    ray_tmp = Path(tempfile.mkdtemp(prefix="bs", dir="/tmp"))  # short: Ray's socket paths
    env.update(RAY_TMPDIR=str(ray_tmp), TMPDIR=str(ray_tmp))
    c_dir = tmp_path / "c"
    c_dir.mkdir()
    cfg = team_cfg(tiny_pipeline, c_dir, team, "sweep-c")
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": 3}),
                                 "sweep": cfg.sweep.model_copy(update={"storage_outage_s": 120})})
    outage = Outage(team, "seaweedfs", 30, "sweep: epoch")
    t0 = time.time()
    rc, out = run_driver(cfg, c_dir, env, on_line=outage.on_line)
    outage.thread.join(120)
    assert rc == 0, out[-4000:]
    assert outage.seconds >= 30
    print(f"\nS3 outage survived: {outage.seconds:.1f} s down; sweep {time.time() - t0:.0f} s")
    uri = team["client"]["MLFLOW_TRACKING_URI"]
    c = mlflow.MlflowClient(uri)
    parent = check_tree_parent(c, "sweep-c")
    folds = c.search_runs([c.get_experiment_by_name("boneseg").experiment_id],
                          f"tags.sweep_id = '{parent}' and tags.level = 'fold'")
    assert sorted(f.data.tags["fold"] for f in folds) == ["0", "1"]  # once each
    assert {f.info.status for f in folds} == {"FINISHED"}
    for f in folds:
        assert [m.step for m in c.get_metric_history(f.info.run_id, "val_bone_dice")] == [0, 1, 2]
    metrics = json.loads((c_dir / "metrics.json").read_text())
    assert metrics["multi-random"]["n_folds"] == 2
    # the driver's terminal: one line about the outage, no Tune error or traceback
    assert sum("did not answer Tune's state sync" in line for line in out.splitlines()) <= 1
    assert "Traceback" not in out
    assert_no_tune_errors(out)
    # a trial's resume-point write met the outage, waited and went through (its worker's log)
    workers = "".join(p.read_text(errors="replace") for p in ray_tmp.rglob("worker-*.err"))
    assert "unreachable (storing resume point multi-random-fold" in workers
    assert re.search(r"answers again after \d+ s; storing resume point", workers)
    shutil.rmtree(ray_tmp, ignore_errors=True)


def check_tree_parent(c, storage_prefix: str) -> str:
    exp = c.get_experiment_by_name("boneseg").experiment_id
    for r in c.search_runs([exp], "tags.kind = 'sweep'"):
        if f"/{storage_prefix}/" in r.data.tags.get("ray_storage_path", ""):
            return r.info.run_id
    raise AssertionError(f"no sweep with storage {storage_prefix}")


def tiny_ct(cfg) -> Path:
    return next(Path(cfg.data.raw_dir).glob("abdomen/*/ct.nii.gz"))


def secrets_of(team) -> list[str]:
    s = team["secrets"]
    return [
        s[k]
        for k in (
            "PG_SUPERUSER_PASSWORD",
            "PG_MLFLOW_PASSWORD",
            "S3_SECRET_KEY",
            "MLFLOW_ADMIN_PASSWORD",
            "MLFLOW_USER_PASSWORD",
            "MLFLOW_FLASK_SECRET",
        )
    ]


def no_secret_anywhere(team, texts: list[str], folders: list[Path]) -> None:
    """No credential in the logs, the working folders, the repository, PostgreSQL or the S3 objects."""
    secrets = secrets_of(team)
    state = team["state"]
    blobs = {"driver output": "\n".join(texts), "stack output": "\n".join(team["logs"])}
    for log in (state / "logs").glob("*.log"):
        blobs[str(log)] = log.read_text(errors="replace")
    for folder in [*folders, ROOT / "infra", ROOT / "platform", ROOT / "params.yaml"]:
        files = [folder] if folder.is_file() else [p for p in folder.rglob("*") if p.is_file()]
        for f in files:
            if state not in f.parents and ".venv" not in f.parts and "__pycache__" not in f.parts:
                blobs[str(f)] = f.read_bytes().decode(errors="replace")
    s = team["secrets"]
    blobs["postgres dump"] = subprocess.run(
        ["pg_dump", "-h", "127.0.0.1", "-p", s["PG_PORT"], "-U", "postgres", "mlflow"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PGPASSWORD": s["PG_SUPERUSER_PASSWORD"]},
    ).stdout
    client = s3(team)
    for bucket in ("mlflow", "ray"):
        for key in keys(team, bucket):
            body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            blobs[f"s3://{bucket}/{key}"] = body.decode(errors="replace")
    hits = [
        (where, secret[:4] + "...") for where, text in blobs.items() for secret in secrets if secret in text
    ]
    assert not hits, hits
    assert len(blobs) > 50


def test_dvc_push_then_pull_in_a_fresh_clone_is_byte_identical(team, client_env, tmp_path):
    """infra/README.md's client steps: DVC takes the S3 keys from the sourced client.env, so
    they are never on a command line nor in a file under .dvc/."""
    c = team["client"]
    repo = tmp_path / "repo"
    repo.mkdir()

    def run(*cmd, cwd=repo):
        return subprocess.run(cmd, cwd=cwd, env=client_env, capture_output=True, text=True, check=True)

    run("git", "init", "-q")
    run("git", "config", "user.email", "t@example.invalid")
    run("git", "config", "user.name", "t")
    dvc = str(BIN / "dvc")
    run(dvc, "init", "-q")
    (repo / "data").mkdir()
    payload = os.urandom(300_000)
    (repo / "data/ct.nii.gz").write_bytes(payload)
    run(dvc, "add", "-q", "data/ct.nii.gz")
    run(dvc, "remote", "add", "-d", "team", "s3://dvc/test-repo")
    run(dvc, "remote", "modify", "team", "endpointurl", c["AWS_ENDPOINT_URL"])
    run("git", "add", "-A")
    run("git", "commit", "-qm", "data")
    run(dvc, "push", "-q")
    assert any(k.startswith("test-repo/") for k in keys(team, "dvc"))
    secret = c["AWS_SECRET_ACCESS_KEY"].encode()
    written = [p for p in (repo / ".dvc").rglob("*") if p.is_file()]
    assert written and not [p for p in written if secret in p.read_bytes()]
    assert "endpointurl" in run("git", "show", "HEAD:.dvc/config").stdout
    clone = tmp_path / "clone"
    run("git", "clone", "-q", str(repo), str(clone), cwd=tmp_path)
    run(dvc, "pull", "-q", cwd=clone)
    assert (clone / "data/ct.nii.gz").read_bytes() == payload
    # a wrong key is refused, and says so
    (clone / "data/ct.nii.gz").unlink()
    shutil.rmtree(clone / ".dvc/cache", ignore_errors=True)
    wrong = {**client_env, "AWS_SECRET_ACCESS_KEY": "wrong"}
    bad = subprocess.run([dvc, "pull"], cwd=clone, env=wrong, capture_output=True, text=True)
    assert bad.returncode != 0 and "Forbidden" in bad.stderr and "failed to pull" in bad.stderr


def test_runs_artifacts_and_dvc_objects_survive_down_and_up(team, client_env):
    """Last in this module: the whole stack stopped (no process left) and started again."""
    runs = psql(team, "select count(*) from runs").strip()
    objects = {b: sorted(keys(team, b)) for b in ("mlflow", "dvc", "ray")}
    assert int(runs) >= 4 and all(objects.values())
    t0 = time.time()
    stack("down", state=team["state"])
    down_s = time.time() - t0
    left = subprocess.run(["pgrep", "-af", str(team["state"])], capture_output=True, text=True).stdout
    assert not left.strip(), f"processes left behind: {left}"
    t0 = time.time()
    assert "stack: up in" in stack("up", state=team["state"]).stdout
    print(
        f"\nteam stack restart: down {down_s:.1f} s, up {time.time() - t0:.1f} s "
        f"(first up {team['start_s']:.1f} s)"
    )
    assert psql(team, "select count(*) from runs").strip() == runs
    assert {b: sorted(keys(team, b)) for b in objects} == objects
    c = mlflow.MlflowClient(team["client"]["MLFLOW_TRACKING_URI"])
    assert len(c.search_runs([c.get_experiment_by_name("boneseg").experiment_id])) == int(runs)
    assert c.get_model_version("boneseg", "1").status == "READY"


def test_a_network_bound_stack_answers_only_with_credentials_and_revokes_users(tmp_path):
    """A stack bound to 127.0.0.2 (an address other than the servers' 127.0.0.1, as another
    host would reach it): there only MLflow (401) and S3 (no object without a key) answer;
    on 127.0.0.1 the filer and volume servers demand SeaweedFS's JWT, so no port serves the
    planted object without credentials. A member added with `user add` gets in with their
    own MLflow account and S3 key; after `user remove` both are refused."""
    import boto3
    from botocore.config import Config as BotoConfig

    base = Path(tempfile.mkdtemp(prefix="bsnet", dir="/tmp"))
    os.chmod(base, 0o755)
    state = base / "state"
    env = {**os.environ, "BONESEG_TEAM_HOST": "127.0.0.2"}
    try:
        up = subprocess.run([*STACK, "up", "--free-ports", "--dir", str(state)], env=env, capture_output=True,
                            text=True, timeout=240, check=True)
        assert "warning: MLflow and S3 answer on 127.0.0.2 over plain HTTP" in up.stderr
        assert "s3-forward up" in stack("status", state=state).stdout
        check_private(state)
        cfg = read_env(state / "team.env")
        rows = probe(state)
        assert not [r for r in rows if r[3] == "SERVES THE OBJECT"], rows
        outside = {role: answer for role, host, _, answer in rows if host == "127.0.0.2"}
        assert outside.pop("mlflow") == "401" and "403" in outside.pop("s3"), outside
        assert set(outside.values()) == {"refused"}, outside  # every SeaweedFS server, PostgreSQL, gRPC
        assert dict((r[0], r[3]) for r in rows if r[1] == "127.0.0.1")["weed_filer"] == "401"

        added = stack("user", "add", "alice", state=state)
        assert "alice" in added.stdout and "password" not in added.stdout.lower()
        alice = read_env(state / "users/alice.env")
        assert alice["AWS_ACCESS_KEY_ID"] != cfg["S3_ACCESS_KEY"]  # not the admin's key
        assert alice["MLFLOW_TRACKING_USERNAME"] == "alice"
        search = alice["MLFLOW_TRACKING_URI"] + "/api/2.0/mlflow/experiments/search?max_results=1"
        who = (alice["MLFLOW_TRACKING_USERNAME"], alice["MLFLOW_TRACKING_PASSWORD"])
        s3 = boto3.client("s3", endpoint_url=alice["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id=alice["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=alice["AWS_SECRET_ACCESS_KEY"],
                          config=BotoConfig(retries={"max_attempts": 1}))
        assert alice["AWS_ENDPOINT_URL"].startswith("http://127.0.0.2:")  # through the forwarder
        assert http_status(search, who) == 200
        s3.put_object(Bucket="ray", Key="alice/x", Body=b"x")
        with pytest.raises(s3.exceptions.ClientError, match="AccessDenied"):
            s3.list_objects_v2(Bucket="mlflow")  # MLflow's artifacts: only through MLflow
        stack("user", "remove", "alice", state=state)
        assert http_status(search, who) == 401
        with pytest.raises(s3.exceptions.ClientError, match="InvalidAccessKeyId"):
            s3.get_object(Bucket="ray", Key="alice/x")
        assert not (state / "users/alice.env").exists()
    finally:
        subprocess.run([*STACK, "down", "--dir", str(state)], capture_output=True, timeout=120)
        left = subprocess.run(["pgrep", "-af", str(state)], capture_output=True, text=True).stdout
        shutil.rmtree(base, ignore_errors=True)
    assert not left.strip(), f"processes left behind: {left}"
