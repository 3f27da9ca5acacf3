import stat

import pytest

from kdmem.io import UMASK, atomic_dir, atomic_path, write_json_atomic


def test_outputs_get_the_usual_permissions(tmp_path):
    """mkstemp would leave results readable by their owner alone (0600); others on a shared
    machine must be able to read a run's outputs, as they could any other program's."""
    write_json_atomic(tmp_path / "a.json", {"x": 1})
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o666 & ~UMASK
    with atomic_dir(tmp_path / "folder") as tmp:
        (tmp / "inside.txt").write_text("x")
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o777 & ~UMASK


def test_a_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "out.parquet") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []
