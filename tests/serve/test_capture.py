"""Data capture: the real server writes SageMaker's capture records, and the readers read them back."""

import base64
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from dogbreed.capture import records
from dogbreed.capture.writer import CaptureWriter

from ..conftest import free_port
from .conftest import running_server
from .test_boto3 import client
from .test_routes import invoke


def metric(url: str, result: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
        text = r.read().decode()
    line = next(x for x in text.splitlines() if x.startswith(f'dogbreed_capture_records_total{{result="{result}"}}'))
    return float(line.split()[-1])


def captured(dest: Path) -> list[dict]:
    return list(records.read(dest))


@pytest.fixture(scope="module")
def photos(synth_data):
    return [p.read_bytes() for p in sorted(synth_data.glob("valid/*/*.jpg"))]


def test_every_answered_request_is_captured_exactly_once_with_its_bytes_and_ids(trained_run, photos, tmp_path):
    dest = tmp_path / "capture"
    sent = {}  # event id -> (inference id, body, answer)
    with running_server(trained_run.artifact, "--capture", str(dest), "--workers", "2", "--backend", "eager") as url:
        def one(i: int):
            body = photos[i % len(photos)]
            status, headers, answer = invoke(url, body, **{"X-Amzn-SageMaker-Inference-Id": f"req-{i}"})
            assert status == 200
            return headers["x-dogbreed-event-id"], (f"req-{i}", body, answer)

        with ThreadPoolExecutor(8) as pool:
            sent = dict(pool.map(one, range(48)))
        assert metric(url, "dropped_queue_full") == 0
    assert len(sent) == 48  # one event id each
    docs = captured(dest)
    assert sorted(d["eventMetadata"]["eventId"] for d in docs) == sorted(sent)
    for doc in docs:
        inference_id, body, answer = sent[doc["eventMetadata"]["eventId"]]
        assert doc["eventVersion"] == "0" and doc["eventMetadata"]["inferenceId"] == inference_id
        records.parse_time(doc["eventMetadata"]["inferenceTime"])
        request, response = doc["captureData"]["endpointInput"], doc["captureData"]["endpointOutput"]
        assert (request["mode"], request["encoding"], request["observedContentType"]) == ("INPUT", "BASE64", "image/jpeg")
        assert records.decode(request) == body
        assert (response["mode"], response["encoding"]) == ("OUTPUT", "JSON")
        assert json.loads(response["data"]) == json.loads(answer)
    for path in records.files(dest):  # each worker its own files, whole lines only
        assert path.relative_to(dest).parts[:2] == ("dogbreed", "AllTraffic")
        assert all(json.loads(line) for line in path.read_text().splitlines())


def test_sampling_share_refusals_and_the_caller_id(trained_run, photos, tmp_path):
    dest = tmp_path / "capture"
    with running_server(trained_run.artifact, "--capture", str(dest), "--capture-percent", "30",
                        "--backend", "eager") as url:
        with ThreadPoolExecutor(8) as pool:
            events = list(pool.map(lambda i: invoke(url, photos[i % len(photos)])[1].get("x-dogbreed-event-id"), range(200)))
        status, headers, body = invoke(url, b"not an image")  # a refused image is captured (if sampled) with its error
        bad_id = invoke(url, photos[0], **{"X-Amzn-SageMaker-Inference-Id": "x" * 65})
        not_sampled = metric(url, "not_sampled")
    taken = [e for e in events if e]
    # 30% of 200: mean 60, standard deviation 6.5; the bound is five of them either side
    assert 28 <= len(taken) <= 92
    assert not_sampled == 200 - len(taken) + (0 if headers.get("x-dogbreed-event-id") else 1)
    assert status == 400 and bad_id[0] == 400 and b"1 to 64 printable" in bad_id[2]
    docs = {d["eventMetadata"]["eventId"]: d for d in captured(dest)}
    assert set(taken) <= set(docs)
    if headers.get("x-dogbreed-event-id"):
        refused = docs[headers["x-dogbreed-event-id"]]["captureData"]
        assert records.decode(refused["endpointInput"]) == b"not an image"
        assert "cannot decode" in json.loads(refused["endpointOutput"]["data"])["error"]


def test_zero_percent_and_a_full_disk_capture_nothing_and_fail_no_request(trained_run, photos, tmp_path):
    for flags, result in ((("--capture-percent", "0"), "not_sampled"), (("--capture-max-disk", "0.0001"), "dropped_disk_full")):
        dest = tmp_path / result
        with running_server(trained_run.artifact, "--capture", str(dest), *flags, "--backend", "eager") as url:
            assert all(invoke(url, photos[i])[0] == 200 for i in range(6))
            assert metric(url, result) == 6 and metric(url, "captured") == 0
        assert records.files(dest) == []


def test_boto3_inference_id_is_kept_and_the_event_id_comes_back(trained_run, photos, tmp_path):
    dest = tmp_path / "capture"
    with running_server(trained_run.artifact, "--capture", str(dest), "--capture-mode", "input",
                        "--backend", "eager") as url:
        response = client(url).invoke_endpoint(EndpointName="dogbreed", ContentType="image/jpeg", Body=photos[0],
                                               InferenceId="order-17")
        event_id = response["ResponseMetadata"]["HTTPHeaders"]["x-dogbreed-event-id"]
    (doc,) = captured(dest)
    assert doc["eventMetadata"]["eventId"] == event_id and doc["eventMetadata"]["inferenceId"] == "order-17"
    assert set(doc["captureData"]) == {"endpointInput"}  # --capture-mode input


def test_kill_9_under_load_leaves_files_of_whole_lines(trained_run, photos, tmp_path):
    dest = tmp_path / "capture"
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "dogbreed", "serve", "--model", str(trained_run.artifact), "--port",
                             str(port), "--capture", str(dest), "--backend", "eager"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    answered = []
    stop = threading.Event()
    try:
        deadline = time.monotonic() + 120
        while ready(url) is None:
            assert time.monotonic() < deadline and proc.poll() is None, "the server did not start"
            time.sleep(0.2)

        def load():
            for i in range(400):  # bounded: stops at the kill, or after 400 requests
                if stop.is_set():
                    return
                try:
                    if invoke(url, photos[i % len(photos)])[0] == 200:
                        answered.append(i)
                except OSError:
                    return

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while len(answered) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        stop.set()
        for t in threads:
            t.join(timeout=70)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert len(answered) >= 20
    files = records.files(dest)
    assert files
    whole = 0
    for path in files:
        lines = path.read_bytes().split(b"\n")
        assert lines[-1] == b"" or path == files[-1]  # only the last file written can end mid-line
        for line in filter(None, lines):
            json.loads(line)
            whole += 1
    assert whole == len(captured(dest)) and whole >= 1


def ready(url):
    try:
        with urllib.request.urlopen(f"{url}/ping", timeout=2) as r:
            return r.status == 200 or None
    except OSError:
        return None


def test_a_full_queue_drops_and_counts_without_blocking(tmp_path):
    heard = []
    writer = CaptureWriter(tmp_path, "ep", queue_records=2, on_result=lambda result, n: heard.append((result, n)))
    # the writer thread is not started yet: the queue fills
    outcomes = [writer.submit(f"e{i}", request=(b"\xff\xd8 bytes", "image/jpeg"), response=(b'{"a": 1}', "application/json"))
                for i in range(5)]
    assert outcomes == [True, True, False, False, False]
    assert writer.counts["dropped_queue_full"] == 3
    writer.start().close()
    docs = captured(tmp_path)
    assert [d["eventMetadata"]["eventId"] for d in docs] == ["e0", "e1"]
    assert json.loads(docs[0]["captureData"]["endpointOutput"]["data"]) == {"a": 1}
    assert writer.counts["captured"] == 2 and ("captured", 2) in heard


def test_a_queue_over_its_bytes_drops_the_record_that_would_not_fit(tmp_path):
    writer = CaptureWriter(tmp_path, "ep", queue_bytes=100)
    assert writer.submit("a", request=(b"x" * 60, "image/jpeg")) is True
    assert writer.submit("b", request=(b"x" * 60, "image/jpeg")) is False
    writer.start().close()
    assert [d["eventMetadata"]["eventId"] for d in captured(tmp_path)] == ["a"]


def test_records_go_to_the_hour_they_were_made_in_and_a_window_reads_only_its_own(tmp_path):
    writer = CaptureWriter(tmp_path, "ep").start()
    for hour in (1, 2, 3):
        writer.submit(f"h{hour}", response=(b"{}", "application/json"), when=records.parse_time(f"2026-05-01T0{hour}:30:00Z"))
    writer.close()
    assert [p.relative_to(tmp_path).parts[2:6] for p in records.files(tmp_path)] == [
        ("2026", "05", "01", f"0{h}") for h in (1, 2, 3)]
    window = records.Window(records.parse_time("2026-05-01T02:00:00"), records.parse_time("2026-05-01T03:00:00"))
    assert [d["eventMetadata"]["eventId"] for d in records.read(tmp_path, window)] == ["h2"]


def test_a_torn_last_line_is_skipped_with_a_warning(tmp_path, caplog):
    folder = tmp_path / "ep" / "AllTraffic" / "2026" / "05" / "01" / "02"
    folder.mkdir(parents=True)
    good = records.record("e1", records.parse_time("2026-05-01T02:00:00Z"), request=(b"abc", "image/png"))
    (folder / "a.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(good)[:40])
    with caplog.at_level(logging.WARNING):
        docs = captured(tmp_path)
    assert len(docs) == 1 and records.decode(docs[0]["captureData"]["endpointInput"]) == b"abc"
    assert "torn" in caplog.text


def test_json_and_csv_bodies_are_kept_as_text():
    doc = records.record("e", records.parse_time("2026-01-01T00:00:00Z"),
                         request=(b'{"instances": []}', "application/json; charset=utf-8"), response=(b"1,2", "text/csv"))
    assert doc["captureData"]["endpointInput"]["encoding"] == "JSON"
    assert doc["captureData"]["endpointInput"]["data"] == '{"instances": []}'
    assert doc["captureData"]["endpointOutput"]["encoding"] == "CSV"
    assert base64.b64decode(records.record("e", records.parse_time("2026-01-01T00:00:00Z"), request=(b"\x00\x01", "image/png"))
                            ["captureData"]["endpointInput"]["data"]) == b"\x00\x01"
