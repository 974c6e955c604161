"""The trial's resume point in the sweep's storage (local folder here; the team-stack test
runs the same code against S3)."""
import pytest

from boneseg.sweep.storage import RESUME_DIR, Storage, StorageOutage


def test_resume_point_is_replaced_whole_read_back_and_dropped(tmp_path):
    storage = Storage(str(tmp_path / "ray"))
    point = storage.resume_point("sweep-x", "multi-random-fold0")
    dest = tmp_path / "scratch" / "checkpoint.pt"
    dest.parent.mkdir()
    assert point.get(dest) is False
    assert not dest.exists()
    for epoch in (b"epoch 0 state", b"epoch 1 state, longer"):
        src = tmp_path / "checkpoint.pt"
        src.unlink(missing_ok=True)  # fit() writes a new file each time (temp + rename)
        src.write_bytes(epoch)
        point.put(src)
    stored = tmp_path / "ray" / "sweep-x" / RESUME_DIR
    assert [p.name for p in stored.iterdir()] == ["multi-random-fold0.pt"]  # no temp file left
    assert point.get(dest) is True
    assert dest.read_bytes() == b"epoch 1 state, longer"
    assert storage.resume_point("sweep-x", "multi-random-fold1").get(dest) is False  # another trial's
    point.drop()
    point.drop()  # gone already: fine
    assert point.get(dest) is False


class Outage:
    """Fails like object storage that is down (pyarrow's OSError text) for `n` calls."""

    def __init__(self, n: int, text="AWS Error NETWORK_CONNECTION during PutObject operation: curlCode: 7"):
        self.n, self.text, self.calls = n, text, 0

    def __call__(self):
        self.calls += 1
        if self.calls <= self.n:
            raise OSError(self.text)
        return "stored"


def test_storage_retries_through_an_outage_with_backoff(capsys):
    waits = []
    uri = "s3://ray/boneseg?endpoint_override=127.0.0.1:9&scheme=http"
    st = Storage(uri, outage_s=60, sleep=waits.append)
    fn = Outage(5)
    assert st.retrying("storing resume point x", fn) == "stored" and fn.calls == 6
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0]
    err = capsys.readouterr().err
    assert err.count("unreachable (storing resume point x)") == 1 and "answers again after" in err
    assert "endpoint_override" not in err  # no query string in messages


def test_storage_outage_longer_than_the_budget_stops_in_one_line(monkeypatch):
    clock = iter(range(0, 1000, 5))
    monkeypatch.setattr("boneseg.sweep.storage.time.monotonic", lambda: next(clock))
    st = Storage("s3://ray/x", outage_s=20, sleep=lambda s: None)
    with pytest.raises(StorageOutage, match=r"Ray storage s3://ray/x: unreachable for 2\d s") as e:
        st.retrying("reading state", Outage(100))
    assert "\n" not in str(e.value) and "storage_outage_s" in str(e.value)


@pytest.mark.parametrize("text", ["AWS Error ACCESS_DENIED during PutObject", "Path does not exist"])
def test_refusals_and_missing_objects_are_not_retried(text):
    st = Storage("s3://ray/x", outage_s=60, sleep=lambda s: pytest.fail("retried"))
    fn = Outage(1, text)
    with pytest.raises(OSError, match=text):
        st.retrying("reading state", fn)
    assert fn.calls == 1


def test_a_local_folder_is_never_retried(tmp_path):
    st = Storage(str(tmp_path), sleep=lambda s: pytest.fail("retried"))
    with pytest.raises(OSError, match="NETWORK_CONNECTION"):
        st.retrying("x", Outage(1))
