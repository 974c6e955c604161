"""The infra scripts' safety without servers: infra/team/stack.py signals only the process it
started (a pidfile names a pid and its start time; a pid reused by an unrelated process after
a reboot or a crash is left alone), and infra/mlflow/server.sh, which has no authentication,
refuses to listen beyond loopback; and the secrets it makes never read as a command-line option."""
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "infra/team"))
from stack import pid_alive, settings, start_time, stop_group, write_pidfile  # noqa: E402


@pytest.fixture
def stranger():
    """An unrelated process leading its own process group, as a server would."""
    p = subprocess.Popen(["sleep", "60"], start_new_session=True)
    yield p
    p.kill()
    p.wait()


def test_the_stacks_secrets_are_letters_and_digits(tmp_path):
    """A secret that starts with '-' is taken for an option by the tools it is handed to
    (argparse: `unrecognized arguments`); token_urlsafe's do, one in 64. Each stack makes 10."""
    made = [settings(tmp_path / f"s{i}", free_ports=False) for i in range(200)]
    assert (tmp_path / "s0/team.env").stat().st_mode & 0o777 == 0o600
    drawn = [v for env in made for k, v in env.items() if any(w in k for w in ("PASSWORD", "SECRET", "JWT"))]
    assert len(drawn) == 200 * 10 and len(set(drawn)) == len(drawn)
    bad = [v for v in drawn if not (v.isascii() and v.isalnum() and len(v) >= 24)]
    assert not bad, f"{len(bad)} of {len(drawn)} secrets have other characters or are short"
    again = settings(tmp_path / "s0", free_ports=False)  # made once, then reused
    assert again == made[0]


def test_a_stale_pidfile_signals_nothing(stranger, tmp_path):
    pidfile = tmp_path / "seaweedfs.pid"
    real = int(start_time(stranger.pid))
    pidfile.write_text(f"{stranger.pid} {real - 1}\n")  # the pid, but an earlier process's start time
    assert pid_alive(pidfile) is None
    stop_group(pidfile, timeout=2)
    assert stranger.poll() is None, "down killed an unrelated process"
    assert not pidfile.exists()  # the stale file is gone
    pidfile.write_text(f"{stranger.pid}\n")  # an old-style pidfile with no start time: not trusted either
    stop_group(pidfile, timeout=2)
    assert stranger.poll() is None


def test_a_matching_pidfile_stops_its_process(stranger, tmp_path):
    pidfile = tmp_path / "mlflow.pid"
    write_pidfile(pidfile, stranger.pid)
    assert pidfile.stat().st_mode & 0o777 == 0o600
    assert pid_alive(pidfile) == stranger.pid
    stop_group(pidfile, timeout=5)
    assert stranger.wait(timeout=5) is not None and not pidfile.exists()


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "::"])
def test_the_unauthenticated_mlflow_server_refuses_a_network_address(host, tmp_path):
    script = Path(__file__).resolve().parents[2] / "infra/mlflow/server.sh"
    env = {"HOST": host, "STORE": str(tmp_path / "store"), "PATH": "/usr/bin:/bin"}
    r = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and f"HOST={host}" in r.stderr
    assert not (tmp_path / "store").exists()
