"""The trial's resume point in the sweep's storage (local folder here; the team-stack test
runs the same code against S3)."""
from boneseg.sweep.storage import RESUME_DIR, Storage


def test_resume_point_is_replaced_whole_read_back_and_dropped(tmp_path):
    storage = Storage(str(tmp_path / "ray"))
    dest = tmp_path / "scratch" / "checkpoint.pt"
    dest.parent.mkdir()
    assert storage.get_resume("sweep-x", "multi-random-fold0", dest) is False
    assert not dest.exists()
    for epoch in (b"epoch 0 state", b"epoch 1 state, longer"):
        src = tmp_path / "checkpoint.pt"
        src.unlink(missing_ok=True)  # fit() writes a new file each time (temp + rename)
        src.write_bytes(epoch)
        storage.put_resume("sweep-x", "multi-random-fold0", src)
    stored = tmp_path / "ray" / "sweep-x" / RESUME_DIR
    assert [p.name for p in stored.iterdir()] == ["multi-random-fold0.pt"]  # no temp file left
    assert storage.get_resume("sweep-x", "multi-random-fold0", dest) is True
    assert dest.read_bytes() == b"epoch 1 state, longer"
    assert storage.get_resume("sweep-x", "multi-random-fold1", dest) is False  # another trial's
    storage.drop_resume("sweep-x", "multi-random-fold0")
    storage.drop_resume("sweep-x", "multi-random-fold0")  # gone already: fine
    assert storage.get_resume("sweep-x", "multi-random-fold0", dest) is False
