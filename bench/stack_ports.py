"""What each port of a running team stack answers without credentials.

An object is planted through S3 with the admin key (`dvc/.probe/secret.txt`, then
removed); every port the stack's processes listen on is then asked, with no credentials,
for that object (S3 path-style, the filer's /buckets path, the volume and master's
status pages), from the bind address and from 127.0.0.1. Each row: the port's role, the
address, and the answer: `refused` (nothing listens there), an HTTP status, or
`SERVES THE OBJECT`. Listeners are found from the processes (psutil), so a port the
stack did not declare shows up too.

    python bench/stack_ports.py --dir infra/team/state      # a stack that is up
"""
from __future__ import annotations

import argparse
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "infra/team"))
from stack import read_env, s3_client  # noqa: E402

SECRET = b"boneseg-probe: a CT would be here\n"
PATHS = ("/dvc/.probe/secret.txt", "/buckets/dvc/.probe/secret.txt", "/buckets/", "/status", "/dir/status",
         "/api/2.0/mlflow/experiments/search?max_results=1")


def roles(env: dict[str, str]) -> dict[int, str]:
    out = {int(v): k.removesuffix("_PORT").lower() for k, v in env.items() if k.endswith("_PORT")}
    for k in ("WEED_MASTER_PORT", "WEED_VOLUME_PORT", "WEED_FILER_PORT", "S3_PORT", "WEED_S3_PORT"):
        if k in env:
            out[int(env[k]) + 10000] = k.removesuffix("_PORT").lower() + " grpc"
    return out


def listeners(state: Path) -> set[tuple[str, int]]:
    """(address, port) of every TCP listener of a process whose command line names `state`,
    or of a process in such a process's group (the servers)."""
    import psutil

    groups = set()
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(str(state) in part for part in p.info["cmdline"] or []):
                groups.add(__import__("os").getpgid(p.pid))
        except (psutil.Error, ProcessLookupError):
            pass
    out = set()
    for c in psutil.net_connections("tcp"):
        if c.status == psutil.CONN_LISTEN and c.pid:
            try:
                if __import__("os").getpgid(c.pid) in groups:
                    out.add((c.laddr.ip, c.laddr.port))
            except ProcessLookupError:
                pass
    return out


def answer(host: str, port: int) -> str:
    """`refused`, or the best any of PATHS got: SERVES THE OBJECT > 2xx > other statuses."""
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError:
        return "refused"
    seen = []
    for path in PATHS:
        try:
            with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=3) as r:
                body = r.read(1 << 20)
                if SECRET in body:
                    return "SERVES THE OBJECT"
                seen.append(f"{r.status}")
        except urllib.error.HTTPError as exc:
            seen.append(str(exc.code))
        except Exception:
            seen.append("no HTTP")
    return "/".join(sorted(set(seen)))


def probe(state: Path) -> list[tuple[str, str, int, str]]:
    """[(role, address, port, answer)] for every declared and listening port."""
    env = read_env(state / "team.env")
    local = {**env, "S3_PORT": env.get("WEED_S3_PORT", env["S3_PORT"])} if env["BIND"] != "127.0.0.1" else env
    s3 = s3_client(local)
    s3.put_object(Bucket="dvc", Key=".probe/secret.txt", Body=SECRET)
    try:
        names = roles(env)
        ports = set(names) | {port for _, port in listeners(state)}
        hosts = ["127.0.0.1"] + ([env["BIND"]] if env["BIND"] not in ("127.0.0.1", "0.0.0.0", "::") else [])
        return [(names.get(p, "undeclared"), h, p, answer(h, p)) for p in sorted(ports) for h in hosts]
    finally:
        s3.delete_object(Bucket="dvc", Key=".probe/secret.txt")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default=str(ROOT / "infra/team/state"))
    args = ap.parse_args()
    rows = probe(Path(args.dir).resolve())
    print("| port | role | address | answer without credentials |\n| --- | --- | --- | --- |")
    for role, host, port, ans in rows:
        print(f"| {port} | {role} | {host} | {ans} |")


if __name__ == "__main__":
    main()
