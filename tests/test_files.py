"""Files that matter are written whole or not at all; folders in the way are named."""

import pytest

from dogbreed.errors import DogbreedError
from dogbreed.files import atomic_path, atomic_write_text, make_folder


def test_a_failed_write_leaves_neither_the_file_nor_a_temporary(tmp_path):
    target = tmp_path / "results.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_make_folder_names_a_file_in_the_way(tmp_path):
    assert make_folder(tmp_path / "a" / "b", "--out").is_dir()
    (tmp_path / "notes").write_text("x")
    with pytest.raises(DogbreedError, match=f"--out {tmp_path / 'notes' / 'runs'}: {tmp_path / 'notes'} is a file"):
        make_folder(tmp_path / "notes" / "runs", "--out")
