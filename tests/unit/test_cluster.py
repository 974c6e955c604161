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
