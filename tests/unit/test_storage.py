"""The trial's resume point in the sweep's storage (local folder here; the team-stack test
runs the same code against S3)."""
from boneseg.sweep.storage import RESUME_DIR, Storage


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
