import hashlib

import pytest
from PIL import Image

from dogbreed.cli import main
from dogbreed.data.synth import synth
from dogbreed.errors import DogbreedError


def _digest(root):
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(root.rglob("*.jpg")))).hexdigest()


def test_writes_imagefolder_layout_with_split_shares(tmp_path):
    root = synth(tmp_path / "d", classes=3, per_class=20, size=48, seed=3, progress=False)
    counts = {s: len(list((root / s).rglob("*.jpg"))) for s in ("train", "valid", "test")}
    assert counts == {"train": 42, "valid": 9, "test": 9}
    img = Image.open(next((root / "train" / "001.Affenpinscher").glob("*.jpg")))
    assert img.size == (48, 48) and img.mode == "RGB"
    assert not list(tmp_path.glob(".*partial"))


def test_the_command_writes_the_set_its_flags_ask_for(tmp_path):
    assert main(["data", "synth", str(tmp_path / "d"), "--classes", "2", "--per-class", "6", "--size", "32",
                 "--unseen", "1", "--no-progress"]) == 0
    assert sorted(p.name for p in (tmp_path / "d" / "train").iterdir()) == ["001.Affenpinscher", "002.Afghan_hound"]
    assert sum(1 for _ in (tmp_path / "d").glob("*/*/*.jpg")) == 2 * 6 + 6 // 2  # and one unseen breed, half as many
    assert Image.open(next((tmp_path / "d" / "unseen").glob("*/*.jpg"))).size == (32, 32)


def test_same_seed_same_images_other_seed_other_images(tmp_path):
    a = synth(tmp_path / "a", classes=2, per_class=6, size=32, seed=0, progress=False)
    b = synth(tmp_path / "b", classes=2, per_class=6, size=32, seed=0, progress=False)
    c = synth(tmp_path / "c", classes=2, per_class=6, size=32, seed=1, progress=False)
    assert _digest(a) == _digest(b) != _digest(c)


def test_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("keep me")
    with pytest.raises(DogbreedError, match="exists and is not empty"):
        synth(tmp_path / "d", progress=False)
    assert (tmp_path / "d" / "x").read_text() == "keep me"


@pytest.mark.parametrize("kwargs, match", [({"classes": 1}, "--classes"), ({"per_class": 3}, "--per-class"), ({"size": 8}, "--size")])
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(DogbreedError, match=match):
        synth(tmp_path / "d", progress=False, **kwargs)
