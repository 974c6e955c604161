"""Reaching Ray: a failure to reach or start it is one line, with no credentials; the local
dashboard answers only with Ray's token."""
import pytest


def test_a_ray_that_cannot_be_reached_or_started_is_one_line_without_the_token():
    from boneseg.sweep.cluster import ray_start_error

    exc = RuntimeError("Failed to start GCS.  Last 0 lines of error files:\n\ntraceback ...")
    line = ray_start_error(exc, None)
    assert "\n" not in line and line.startswith("a local Ray: RuntimeError: Failed to start GCS.")
    assert "RAY_AUTH_MODE=token" in line
    leaked = ConnectionError("could not reach s3://AKIAEXAMPLE:supersecret@bucket/x")
    line = ray_start_error(leaked, "10.0.0.5:6379")
    assert line.startswith("the Ray cluster at 10.0.0.5:6379: ConnectionError") and "supersecret" not in line


def test_the_local_dashboard_answers_only_with_rays_token():
    """sweep.dashboard: true starts the dashboard on 127.0.0.1 behind Ray's token (401 without)."""
    import urllib.error
    import urllib.request
    from pathlib import Path

    import ray

    from boneseg.sweep.session import connect

    where = connect(None, dashboard=True)
    try:
        assert where and where.startswith("127.0.0.1:")  # loopback only
        url = f"http://{where}/api/cluster_status"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=10)
        assert refused.value.code == 401
        token = Path("~/.ray/auth_token").expanduser().read_text().strip()
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        assert urllib.request.urlopen(req, timeout=10).status == 200
    finally:
        ray.shutdown()


def test_a_local_ray_that_times_out_starting_is_cleaned_up_and_tried_again(monkeypatch, capsys):
    """Ray gives a new local node a fixed 30 s; a start that misses it (a busy machine) has the
    processes it left killed and is tried again; one that never starts is one line."""
    import subprocess
    import sys

    import ray

    from boneseg.errors import ConfigError
    from boneseg.sweep import cluster

    started, calls = [], []

    def init(**kwargs):  # the fault: Ray's own start-up timeout, after it started a process
        calls.append(kwargs["address"])
        started.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"]))
        if len(calls) < 2:
            raise Exception("The current node timed out during startup. This could happen because ...")
        return object()

    monkeypatch.setattr(ray, "init", init)
    assert cluster.connect(None) is None and calls == [None, None]
    assert started[0].wait(timeout=10) == -9  # the half-started node's process is gone
    assert started[1].poll() is None  # the running one's is not
    started[1].kill()
    assert "trying again (1/2)" in capsys.readouterr().err

    def never(**kwargs):
        raise Exception("The current node timed out during startup.")

    monkeypatch.setattr(ray, "init", never)
    with pytest.raises(ConfigError, match=r"^a local Ray: Exception: The current node timed out during "
                                          r"startup\..*a busy machine"):
        cluster.connect(None)
    monkeypatch.setattr(ray, "init", never)
    with pytest.raises(Exception, match="timed out"):  # a cluster's address is not retried
        cluster.connect("10.0.0.5:6379")
