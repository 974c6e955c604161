"""Reaching Ray: a failure to reach or start it is one line, with no credentials."""


def test_a_ray_that_cannot_be_reached_or_started_is_one_line_without_the_token():
    from boneseg.sweep.cluster import ray_start_error

    exc = RuntimeError("Failed to start GCS.  Last 0 lines of error files:\n\ntraceback ...")
    line = ray_start_error(exc, None)
    assert "\n" not in line and line.startswith("a local Ray: RuntimeError: Failed to start GCS.")
    assert "RAY_AUTH_MODE=token" in line
    leaked = ConnectionError("could not reach s3://AKIAEXAMPLE:supersecret@bucket/x")
    line = ray_start_error(leaked, "10.0.0.5:6379")
    assert line.startswith("the Ray cluster at 10.0.0.5:6379: ConnectionError") and "supersecret" not in line
