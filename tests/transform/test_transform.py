"""``dogbreed transform`` on this machine: failures kept to their input, resuming, sharding,
manifests, DataProcessing's filters and the refusals of bad settings. (Its answers equal the
endpoint's: tests/serve/test_parity.py; on S3: tests/test_s3.py; on Ray: test_ray.py.)"""

import base64
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from dogbreed.cli import main
from dogbreed.transform import filters, sources
from dogbreed.transform.sources import Input


def photo(path: Path, colour, size=(96, 72), fmt="JPEG") -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, fmt)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def outs(dest: Path) -> dict[str, object]:
    return {p.relative_to(dest).as_posix(): json.loads(p.read_text()) for p in dest.rglob("*.out")}


def transform(model, src, dest, *flags) -> int:
    return main(["transform", "--model", str(model), "--input", str(src), "--output", str(dest), "--backend", "eager",
                 "--no-progress", *map(str, flags)])


def test_a_bad_input_fails_alone_and_a_rerun_scores_only_what_has_no_out(trained_run, tmp_path, capsys):
    src, dest = tmp_path / "in", tmp_path / "out"
    for i in range(5):
        photo(src / f"dog{i}.jpg", (40 * i, 90, 30))
    photo(src / "sub" / "deep.png", (10, 200, 10), fmt="PNG")
    (src / "notes.jpg").write_bytes(b"not an image")
    noise = Image.frombytes("RGB", (300, 300), os.urandom(300 * 300 * 3))
    noise.save(src / "huge.png")  # about 270 KB of noise: over --max-payload-mb 0.1
    (src / ".hidden.jpg").write_bytes(b"skipped: hidden")

    assert transform(trained_run.artifact, src, dest, "--max-payload-mb", "0.1") == 3
    said = capsys.readouterr()
    assert "transform: 8 input(s), 0 already done, 6 written, 2 failed; 6 record(s), 6 image(s)" in said.out
    assert "2 input(s) failed, each named with its reason in" in said.err
    written = outs(dest)
    assert set(written) == {f"dog{i}.jpg.out" for i in range(5)} | {"sub/deep.png.out"}
    assert all(doc["verdict"] in ("breed", "unsure", "not_a_dog") and len(doc["topk_labels"]) == 4 for doc in written.values())
    failures = [json.loads(line) for line in (dest / "_failures.jsonl").read_text().splitlines()]
    assert [(f["key"], f["input"]) for f in failures] == [("huge.png", str(src / "huge.png")), ("notes.jpg", str(src / "notes.jpg"))]
    assert re.fullmatch(r"0\.\d MB is over --max-payload-mb 0\.1", failures[0]["reason"])
    assert "cannot decode" in failures[1]["reason"]

    stamps = {p: p.stat().st_mtime_ns for p in dest.rglob("*.out")}
    assert transform(trained_run.artifact, src, dest, "--max-payload-mb", "0.1") == 3
    assert "8 input(s), 6 already done, 0 written, 2 failed; 0 record(s)" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in dest.rglob("*.out")} == stamps  # nothing scored twice

    (src / "notes.jpg").unlink()
    assert transform(trained_run.artifact, src, dest, "--max-payload-mb", "1") == 0  # huge.png fits now
    assert "7 input(s), 6 already done, 1 written, 0 failed" in capsys.readouterr().out
    assert "huge.png.out" in outs(dest) and not (dest / "_failures.jsonl").exists()  # the old list goes with its failures


def test_a_killed_job_resumed_scores_each_input_exactly_once(trained_run, tmp_path):
    src, dest = tmp_path / "in", tmp_path / "out"
    for i in range(400):
        photo(src / f"{i:03d}.jpg", (i % 256, (7 * i) % 256, 90), size=(320, 240))
    cmd = [sys.executable, "-m", "dogbreed", "transform", "--model", str(trained_run.artifact), "--input", str(src),
           "--output", str(dest), "--backend", "eager", "--batch-size", "1", "--no-progress"]
    job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while len(list(dest.glob("*.out"))) < 20 and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    job.send_signal(signal.SIGKILL)
    job.communicate(timeout=60)
    done = {p.name for p in dest.glob("*.out")}
    assert 20 <= len(done) < 400, "the job was not cut mid-way"
    assert all(json.loads((dest / name).read_text())["topk_labels"] for name in done)  # whole, every one

    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"400 input(s), {len(done)} already done, {400 - len(done)} written, 0 failed" in resumed.stdout
    assert {p.name for p in dest.glob("*.out")} == {f"{i:03d}.jpg.out" for i in range(400)}
    assert all(json.loads(p.read_text())["topk_labels"] for p in dest.glob("*.out"))


def test_shards_together_cover_every_input_once(trained_run, tmp_path, capsys):
    src, dest = tmp_path / "in", tmp_path / "out"
    for i in range(12):
        photo(src / f"p{i}.jpg", (20 * i, 50, 200))
    written = []
    for k in (1, 2, 3):
        assert transform(trained_run.artifact, src, dest, "--shard", f"{k}/3") == 0
        line = capsys.readouterr().out
        written.append(int(re.search(r"(\d+) written", line)[1]))
        assert f"transform (shard {k}/3): " in line
    assert sum(written) == 12 and set(outs(dest)) == {f"p{i}.jpg.out" for i in range(12)}
    keys = [f"photos/{i}.jpg" for i in range(1000)]
    shards = [{i.key for i in sources.shard([Input(k, k) for k in keys], (k, 3))} for k in (1, 2, 3)]
    assert sum(map(len, shards)) == 1000 and set().union(*shards) == set(keys)
    assert all(250 < len(s) < 420 for s in shards)  # a hash of the key: about a third each


def test_a_manifest_names_its_inputs_under_a_prefix(trained_run, tmp_path, capsys):
    src, dest = tmp_path / "photos", tmp_path / "out"
    for name in ("a.jpg", "sub/b.jpg", "left-out.jpg"):
        photo(src / name, (120, 60, 30))
    manifest = tmp_path / "job.manifest"
    manifest.write_text(json.dumps([{"prefix": str(src) + "/"}, "a.jpg", "sub/b.jpg", "a.jpg"]))
    assert transform(trained_run.artifact, manifest, dest) == 0
    assert set(outs(dest)) == {"a.jpg.out", "sub/b.jpg.out"}
    out, err = capsys.readouterr()
    assert "2 input(s)" in out and "2 written" in out and "1 entr(ies) more than once" in err  # a.jpg scored once
    (tmp_path / "list.json").write_text(json.dumps([{"prefix": "photos"}, "left-out.jpg"]))  # relative to the manifest
    assert transform(trained_run.artifact, tmp_path / "list.json", dest, "--data-type", "ManifestFile") == 0
    assert "left-out.jpg.out" in outs(dest)
    (tmp_path / "bad.manifest").write_text(json.dumps([{"prefix": str(src)}, "../escape.jpg"]))
    assert transform(trained_run.artifact, tmp_path / "bad.manifest", dest) == 1
    assert "entry '../escape.jpg' leaves the prefix" in capsys.readouterr().err


def test_json_lines_records_joined_and_filtered_as_dataprocessing_does(trained_run, tmp_path):
    src, dest = tmp_path / "in", tmp_path / "out"
    images = [photo(tmp_path / "img" / f"{i}.png", (60 * i, 20, 90), fmt="PNG") for i in range(3)]
    records = [{"id": i, "image": base64.b64encode(b).decode(), "owner": "x"} for i, b in enumerate(images)]
    src.mkdir()
    (src / "batch.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    assert transform(trained_run.artifact, src, dest, "--split-type", "Line", "--input-filter", "$.image",
                     "--join-source", "Input", "--output-filter", "$['id','SageMakerOutput']") == 0
    lines = (dest / "batch.jsonl.out").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["id"] for r in rows] == [0, 1, 2] and all(set(r) == {"id", "SageMakerOutput"} for r in rows)
    assert all(r["SageMakerOutput"]["topk_labels"] for r in rows)

    (src / "batch.jsonl").write_text(json.dumps(records[0]) + "\n" + json.dumps({"id": 9}) + "\n")
    assert transform(trained_run.artifact, src, tmp_path / "out2", "--split-type", "Line", "--input-filter", "$.image") == 3
    failure = json.loads((tmp_path / "out2" / "_failures.jsonl").read_text())
    assert failure["reason"] == "line 2: --input-filter $.image: no key 'image'"


@pytest.mark.parametrize("text, value, expected", [
    ("$", {"a": 1}, {"a": 1}),
    ("$.a.b", {"a": {"b": [1, 2]}}, [1, 2]),
    ("$['a','c']", {"a": 1, "b": 2, "c": 3}, {"a": 1, "c": 3}),
    ("$['a']", {"a": 1}, 1),
    ("$[1:]", [1, 2, 3], [2, 3]),
    ("$[0,2]", [1, 2, 3], [1, 3]),
    ("$[*]", [1, 2], [1, 2]),
    ("$.SageMakerOutput.verdict", {"SageMakerOutput": {"verdict": "breed"}}, "breed"),
])
def test_jsonpath_selectors(text, value, expected):
    assert filters.compile_path(text, "--output-filter")(value) == expected


def test_jsonpath_refusals_and_joins():
    for bad in ("a.b", "$..a", "$[x]", "$.a["):
        with pytest.raises(ValueError, match="--input-filter"):
            filters.compile_path(bad, "--input-filter")
    with pytest.raises(filters.FilterError, match="no key 'z'"):
        filters.compile_path("$.z", "--output-filter")({"a": 1})
    assert filters.join({"id": 1}, {"v": 2}) == {"id": 1, "SageMakerOutput": {"v": 2}}
    assert filters.join([1, 2], "x") == [1, 2, "x"]
    with pytest.raises(filters.FilterError, match="needs JSON objects or arrays"):
        filters.join("AAAA", {})


@pytest.mark.parametrize("flags, message", [
    (["--shard", "4/3"], "--shard '4/3' must be K/N with 1 <= K <= N"),
    (["--join-source", "Input"], "--join-source works on JSON records: add --split-type Line"),
    (["--accept", "text/csv"], "--accept 'text/csv': answers are application/json or application/jsonlines"),
    (["--split-type", "Line", "--content-type", "image/jpeg"], "--split-type Line reads JSON lines"),
    (["--content-type", "text/csv"], "--content-type 'text/csv' is not one the model reads"),
    (["--split-type", "Lines"], "--split-type 'Lines' is not valid; choose one of: None, Line"),
    (["--max-payload-mb", "0"], "--max-payload-mb must be over 0 and at most 100, got 0"),
    (["--output-filter", "id"], "--output-filter 'id' must start with $"),
])
def test_bad_settings_are_one_line_before_the_model_loads(tmp_path, capsys, flags, message):
    (tmp_path / "in").mkdir()
    photo(tmp_path / "in" / "a.jpg", (1, 2, 3))
    assert transform(tmp_path / "missing.tar.gz", tmp_path / "in", tmp_path / "out", *flags) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_an_output_inside_the_input_is_refused(tmp_path, capsys):
    photo(tmp_path / "in" / "a.jpg", (1, 2, 3))
    assert transform(tmp_path / "m.tar.gz", tmp_path / "in", tmp_path / "in" / "scored") == 1
    assert "is inside --input" in capsys.readouterr().err
