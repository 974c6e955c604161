"""RetryingClient on a real MLflow sqlite store, with faults injected around it: a lost
answer to create_run leaves one run, an outage past tracking.outage_s stops in one line."""
import mlflow
import pytest
from mlflow.exceptions import MlflowException

from boneseg.tracking.retry import CREATE_KEY, RetryingClient, TrackingOutage, is_transient


class LosesAnswers:
    """The real client, but the first `n` calls of `name` run on the server and then fail
    as a dropped connection would (the write happened, the answer was lost)."""

    def __init__(self, client, name, n):
        self.client, self.name, self.n = client, name, n

    def __getattr__(self, attr):
        fn = getattr(self.client, attr)
        if attr != self.name:
            return fn

        def flaky(*a, **kw):
            out = fn(*a, **kw)
            if self.n > 0:
                self.n -= 1
                raise MlflowException("API request failed: Max retries exceeded (Connection reset)")
            return out
        return flaky


def test_a_lost_create_run_answer_leaves_exactly_one_run(tmp_path):
    real = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    exp = real.create_experiment("e")
    waits = []
    client = RetryingClient(LosesAnswers(real, "create_run", 2), outage_s=60, sleep=waits.append)
    run = client.create_run(exp, tags={"level": "fold"})
    runs = real.search_runs([exp])
    assert [r.info.run_id for r in runs] == [run.info.run_id]  # two duplicates deleted
    assert runs[0].data.tags["level"] == "fold" and CREATE_KEY in runs[0].data.tags
    assert waits == [0.5, 1.0] and client.retries == 2


def test_metrics_retried_after_a_lost_answer_are_stored_once(tmp_path):
    real = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    rid = real.create_run(real.create_experiment("e")).info.run_id
    client = RetryingClient(LosesAnswers(real, "log_metric", 1), outage_s=60, sleep=lambda s: None)
    client.log_metric(rid, "val_bone_dice", 0.5, timestamp=1000, step=3)
    assert [(m.step, m.value) for m in real.get_metric_history(rid, "val_bone_dice")] == [(3, 0.5)]


def test_an_outage_longer_than_the_budget_stops_in_one_line(tmp_path, monkeypatch):
    clock = [0.0]
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the client's own retries: none here
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    monkeypatch.setattr("boneseg.tracking.retry.time.monotonic", lambda: clock[0])

    def sleep(s):
        clock[0] += s

    client = RetryingClient(mlflow.MlflowClient("http://127.0.0.1:9"), outage_s=30, uri="http://127.0.0.1:9",
                            sleep=sleep)
    with pytest.raises(TrackingOutage, match=r"127.0.0.1:9 unreachable for 30 s .* same command"):
        client.search_experiments(max_results=1)
    assert 30 < clock[0] < 45  # waited the budget (backoff capped at 8 s), not much longer


def test_client_errors_are_not_retried(tmp_path):
    real = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    client = RetryingClient(real, outage_s=60, sleep=lambda s: pytest.fail("retried a client error"))
    with pytest.raises(MlflowException):
        client.get_run("0" * 32)
    assert not is_transient(MlflowException("error code 401 != 200"))
    assert is_transient(MlflowException("API request failed with error code 503 != 200"))
