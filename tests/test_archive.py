"""Safe extraction: tar members outside the target and links are refused; damaged zips are one line."""

import io
import tarfile

import pytest

from dogbreed.archive import safe_extract_zip
from dogbreed.artifact import load_artifact
from dogbreed.errors import DogbreedError


@pytest.mark.parametrize("member", ["../escape.txt", "/abs.txt"])
def test_tar_with_paths_outside_the_target_is_refused(tmp_path, member):
    path = tmp_path / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(member)
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(DogbreedError, match="unsafe member path"):
        load_artifact(path)
    assert not (tmp_path / "escape.txt").exists()


def test_tar_with_a_symlink_is_refused(tmp_path):
    path = tmp_path / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("model.pth")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(DogbreedError, match="links and special files are not allowed"):
        load_artifact(path)


def _zip(path, data: bytes) -> bytes:
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("data/train/a.txt", data)
    return path.read_bytes()


def test_damaged_zip_data_is_one_clear_error(tmp_path):
    import random

    good = _zip(tmp_path / "good.zip", random.Random(0).randbytes(2000) * 4)
    start = good.index(b"a.txt") + len("a.txt")  # the compressed data follows the local header's name
    for offset in range(start, start + 40):
        damaged = bytearray(good)
        damaged[offset] ^= 0xFF
        (tmp_path / "bad.zip").write_bytes(bytes(damaged))
        with pytest.raises(DogbreedError, match="not a readable zip archive"):
            safe_extract_zip(tmp_path / "bad.zip", tmp_path / f"out-{offset}")


def test_encrypted_zip_is_one_clear_error(tmp_path):
    data = bytearray(_zip(tmp_path / "plain.zip", b"hello" * 100))
    for signature, flag_offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # local and central headers
        at = data.index(signature) + flag_offset
        data[at] |= 0x01  # "encrypted"
    (tmp_path / "enc.zip").write_bytes(bytes(data))
    with pytest.raises(DogbreedError, match="not a readable zip archive"):
        safe_extract_zip(tmp_path / "enc.zip", tmp_path / "out")
