"""``data fetch`` against a real HTTP server on loopback that speaks Range and ETag, cuts
connections on demand and serves hostile archives."""

import hashlib
import io
import re
import socket
import stat
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dogbreed.cli import main
from dogbreed.data.fetch import download, fetch
from dogbreed.errors import DogbreedError

from ..conftest import free_port


class Origin:
    """A tiny S3-like origin: ETag = MD5, byte ranges, and an optional one-time cut."""

    def __init__(self, body: bytes):
        self.body = body
        self.cut_after: int | None = None
        self.ranges: list[str | None] = []
        self.etag = '"%s"' % hashlib.md5(body).hexdigest()
        origin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                origin.ranges.append(rng)
                start = int(re.match(r"bytes=(\d+)-", rng).group(1)) if rng else 0
                payload = origin.body[start:]
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(origin.body) - 1}/{len(origin.body)}")
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("ETag", origin.etag)
                self.end_headers()
                if origin.cut_after is not None:
                    self.wfile.write(payload[: origin.cut_after])
                    self.wfile.flush()
                    origin.cut_after = None
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/dog-project/dogImages.zip"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def origin_factory():
    servers = []

    def make(body: bytes) -> Origin:
        servers.append(Origin(body))
        return servers[-1]

    yield make
    for o in servers:
        o.server.shutdown()
        o.server.server_close()


def make_zip(entries: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return buf.getvalue()


def dataset_zip(synth_data) -> bytes:
    entries = {f"dogImages/{p.relative_to(synth_data)}": p.read_bytes() for p in synth_data.rglob("*.jpg")}
    entries["__MACOSX/dogImages/._junk"] = b"resource fork"
    return make_zip(entries)


def test_fetch_downloads_verifies_and_extracts(origin_factory, synth_data, tmp_path, capsys):
    origin = origin_factory(dataset_zip(synth_data))
    assert main(["data", "fetch", "--dest", str(tmp_path), "--url", origin.url, "--no-progress"]) == 0
    root = tmp_path / "dogImages"
    assert sorted(p.name for p in root.iterdir()) == ["test", "train", "valid"]
    assert len(list(root.rglob("*.jpg"))) == 64
    assert not (tmp_path / "__MACOSX").exists() and not list(tmp_path.glob(".*"))
    assert "data set ready" in capsys.readouterr().out


def test_interrupted_download_resumes_from_the_partial_file(origin_factory, tmp_path):
    body = bytes(range(256)) * 4000  # about 1 MB
    origin = origin_factory(body)
    origin.cut_after = 300_000
    target = tmp_path / "dogImages.zip"
    with pytest.raises(DogbreedError, match="run the same command again to resume"):
        download(origin.url, target, progress=False)
    part = tmp_path / "dogImages.zip.part"
    have = part.stat().st_size
    assert 0 < have < len(body) and not target.exists()
    download(origin.url, target, progress=False)
    assert target.read_bytes() == body
    assert origin.ranges == [None, f"bytes={have}-"]  # the second request asked only for the rest
    assert not part.exists()


def test_checksum_mismatch_deletes_the_file(origin_factory, tmp_path):
    origin = origin_factory(b"x" * 5000)
    origin.etag = '"%s"' % hashlib.md5(b"something else").hexdigest()
    with pytest.raises(DogbreedError, match="failed its MD5 check"):
        download(origin.url, tmp_path / "f.zip", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_sha256_is_checked_when_given(origin_factory, tmp_path):
    origin = origin_factory(b"y" * 100)
    with pytest.raises(DogbreedError, match="SHA-256 check"):
        download(origin.url, tmp_path / "f.zip", sha256="0" * 64, progress=False)
    good = hashlib.sha256(b"y" * 100).hexdigest()
    assert download(origin.url, tmp_path / "f.zip", sha256=good, progress=False).read_bytes() == b"y" * 100


@pytest.mark.parametrize("entries, links, match", [
    ({"dogImages/../../evil.txt": b"x"}, None, "unsafe member path"),
    ({"/etc/evil.txt": b"x"}, None, "unsafe member path"),
    ({"dogImages/train/a/1.jpg": b"x"}, {"dogImages/train/a/link.jpg": "/etc/passwd"}, "links and special files"),
])
def test_malicious_archive_is_refused_and_nothing_is_written(origin_factory, tmp_path, entries, links, match):
    origin = origin_factory(make_zip(entries, links))
    dest = tmp_path / "dest"
    with pytest.raises(DogbreedError, match=match):
        fetch(dest, url=origin.url, progress=False)
    assert sorted(p.name for p in dest.iterdir()) == ["dogImages.zip"]
    assert not (tmp_path / "evil.txt").exists()


def test_offline_is_one_clear_line_and_leaves_no_folder(tmp_path, capsys):
    port = free_port()
    url = f"http://127.0.0.1:{port}/dogImages.zip"
    assert main(["data", "fetch", "--dest", str(tmp_path / "new"), "--url", url, "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.startswith(f"error: cannot reach {url}") and "dogbreed data fetch --zip PATH" in err
    assert not (tmp_path / "new").exists()  # made for a download that never began


def test_zip_flag_extracts_a_local_copy(synth_data, tmp_path):
    local = tmp_path / "dogImages.zip"
    local.write_bytes(dataset_zip(synth_data))
    assert main(["data", "fetch", "--dest", str(tmp_path / "d"), "--zip", str(local), "--no-progress"]) == 0
    assert (tmp_path / "d" / "dogImages" / "valid" / "004.Akita").is_dir()


def test_a_bad_local_zip_leaves_no_folder_behind(tmp_path, capsys):
    local = tmp_path / "dogImages.zip"
    local.write_bytes(b"not a zip")
    assert main(["data", "fetch", "--dest", str(tmp_path / "d"), "--zip", str(local), "--no-progress"]) == 1
    assert "not a readable zip archive" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_sha256_is_checked_on_a_local_zip_and_on_an_earlier_download(synth_data, tmp_path, capsys):
    local = tmp_path / "dogImages.zip"
    local.write_bytes(dataset_zip(synth_data))
    wrong = "0" * 64
    for digest, message in (("abc", "is not a SHA-256 digest"), (wrong, f"does not match --sha256 {wrong}")):
        assert main(["data", "fetch", "--dest", str(tmp_path / "d"), "--zip", str(local), "--sha256", digest,
                     "--no-progress"]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err, err
        assert not (tmp_path / "d").exists()  # nothing extracted, no folder made
    # A zip an earlier `data fetch` downloaded into --dest is extracted without a download: checked all the same.
    (tmp_path / "earlier").mkdir()
    earlier = tmp_path / "earlier" / "dogImages.zip"
    earlier.write_bytes(local.read_bytes())
    assert main(["data", "fetch", "--dest", str(earlier.parent), "--url", "http://127.0.0.1:9/dogImages.zip",
                 "--sha256", wrong, "--no-progress"]) == 1
    assert "does not match --sha256" in capsys.readouterr().err
    assert [p.name for p in earlier.parent.iterdir()] == ["dogImages.zip"]
    good = hashlib.sha256(local.read_bytes()).hexdigest().upper()  # as some tools print it
    assert main(["data", "fetch", "--dest", str(tmp_path / "d"), "--zip", str(local), "--sha256", good,
                 "--no-progress"]) == 0
    assert (tmp_path / "d" / "dogImages" / "valid" / "004.Akita").is_dir()
