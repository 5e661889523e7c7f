"""``dogbreed monitor run`` on what a real server captured, and model quality from ground truth."""

import importlib.util
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone

import pytest

from dogbreed.capture import records
from dogbreed.capture.writer import CaptureWriter
from dogbreed.cli import main
from dogbreed.data.synth import requests
from dogbreed.drift import execute

from ..conftest import free_port, run_cli
from ..serve.conftest import running_server
from .conftest import WORLD


def send(url: str, image: bytes, inference_id: str) -> int:
    request = urllib.request.Request(f"{url}/invocations", data=image, method="POST", headers={
        "Content-Type": "image/jpeg", "X-Amzn-SageMaker-Inference-Id": inference_id})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status
    except urllib.error.HTTPError as err:
        return err.code


def test_monitor_run_finds_a_darker_world_in_a_servers_capture(trained_run, big_data, tmp_path):
    capture, out, truth_dir = tmp_path / "capture", tmp_path / "monitoring", tmp_path / "truth"
    dark = requests(30, draw=7, drift="dark", **WORLD)
    with running_server(trained_run.artifact, "--capture", str(capture), "--backend", "eager") as url:
        statuses = [send(url, image, f"req-{i}") for i, (image, _) in enumerate(dark)]
        statuses += [send(url, b"GIF89a but not really", "bad-1"), send(url, b"", "bad-2")]
    assert statuses == [200] * 30 + [400, 400]
    # ground truth for every image, as SageMaker's records, sent "later"
    hour = truth_dir / "2026" / "12" / "07" / "09"
    hour.mkdir(parents=True)
    hour.joinpath("truth.jsonl").write_text("".join(json.dumps(records.ground_truth(name, inference_id=f"req-{i}")) + "\n"
                                                    for i, (_, name) in enumerate(dark)))

    made = run_cli("monitor", "baseline", "--model", str(trained_run.artifact), "--data", str(big_data),
                   "--out", str(tmp_path / "baseline"), "--no-progress")
    assert made.returncode == 0 and "baseline of" in made.stdout, made.stderr[-2000:]
    done = run_cli("monitor", "run", "--capture", str(capture), "--baseline", str(tmp_path / "baseline"), "--model",
                   str(trained_run.artifact), "--ground-truth", str(truth_dir), "--out", str(out), "--no-progress",
                   "--backend", "eager")
    assert done.returncode == execute.VIOLATIONS_EXIT, done.stdout + done.stderr[-2000:]
    assert "32 captured images from 32 requests" in done.stdout  # refused requests are captured too
    (execution,) = (out / "executions").iterdir()
    violations = json.loads((execution / "constraint_violations.json").read_text())["violations"]
    assert {"feature_name": "brightness", "constraint_check_type": "baseline_drift_check"}.items() <= \
        next(v for v in violations if v["feature_name"] == "brightness").items()
    assert any(v["feature_name"] == "unreadable" for v in violations)  # 2 of 32: over 1%
    stats = json.loads((execution / "statistics.json").read_text())
    assert stats["dataset"]["item_count"] == 32
    by_name = {f["name"]: f for f in stats["features"]}
    assert by_name["brightness"]["inferred_type"] == "Fractional"
    assert by_name["brightness"]["numerical_statistics"]["common"]["num_present"] == 30
    quality = json.loads((execution / "model_quality.json").read_text())
    assert quality["dataset"]["item_count"] == 30 and quality["dataset"]["without_ground_truth"] == 2
    metrics = quality["multiclass_classification_metrics"]
    assert set(metrics) >= {"accuracy", "weighted_f1", "confusion_matrix", "recall_per_class"}
    assert "standard_deviation" not in metrics["accuracy"]  # under 200 records
    page = (out / "report.html").read_text()
    assert "brightness" in page and page.count("<figure>") == 8 and "data:image/png;base64," in page


def test_ground_truth_gives_the_window_its_known_accuracy_and_counts_what_it_cannot_match(trained_run, tmp_path):
    """240 captured requests whose answers are right for 180 (by construction), ground truth for
    all but 20 of them (half joined on inferenceId, half on eventId), and some for requests never
    captured; then only the first hour's records, through --start/--end."""
    capture, truth_dir = tmp_path / "capture", tmp_path / "truth"
    images = requests(260, draw=11, **WORLD)
    hour = datetime(2026, 5, 1, 10, tzinfo=timezone.utc)
    writer = CaptureWriter(capture, "dogbreed").start()
    truth = []
    for i, (image, name) in enumerate(images):
        label = int(name.split(".")[0]) - 1
        answered = label if i % 4 else (label + 1) % WORLD["classes"]  # every 4th answer wrong
        event, inference = f"event-{i}", (f"inf-{i}" if i % 2 else None)
        writer.submit(event, inference_id=inference, request=(image, "image/jpeg"),
                      response=(json.dumps({"topk_indices": [answered]}).encode(), "application/json"),
                      when=hour + timedelta(seconds=i))
        if i < 240:  # the last 20 get no ground truth
            truth.append(records.ground_truth(name, event_id=None if inference else event, inference_id=inference))
    writer.submit("later", request=(images[0][0], "image/jpeg"), when=hour + timedelta(hours=1, minutes=5))
    writer.close()
    truth += [records.ground_truth("001.Affenpinscher", event_id=f"never-captured-{i}") for i in range(5)]
    (truth_dir / "2026/05/01/12").mkdir(parents=True)
    (truth_dir / "2026/05/01/12/t.jsonl").write_text("".join(json.dumps(t) + "\n" for t in truth))

    tracked = importlib.util.find_spec("mlflow") is not None  # the execution logged to MLflow too, where installed
    store = f"sqlite:///{tmp_path / 'mlflow.db'}" if tracked else None
    done = execute.run(str(capture), str(trained_run.artifact), ground_truth=str(truth_dir), out=str(tmp_path / "out"),
                       start="2026-05-01T10:00:00Z", end="2026-05-01T11:00:00Z", backend="eager", progress=False,
                       tracking_uri=store)
    assert done.requests == 260  # "later" is outside the window
    doc = done.quality
    assert doc["dataset"] == {"item_count": 240, "without_ground_truth": 20, "unknown_or_unreadable": 0,
                              "ground_truth_records": 245}
    metrics = doc["multiclass_classification_metrics"]
    assert metrics["accuracy"]["value"] == pytest.approx(180 / 240)
    assert 0 < metrics["accuracy"]["standard_deviation"] < 0.05  # 240 records: five 80% resamples
    assert sum(sum(row.values()) for row in metrics["confusion_matrix"].values()) == 240
    accuracy_check = next(c for c in done.checks if c.name == "accuracy")
    assert accuracy_check.value == pytest.approx(0.75)
    if tracked:  # the artifact names no run: the execution is a run of its own, at its window's end
        from mlflow.tracking import MlflowClient

        client = MlflowClient(store)
        run, = client.search_runs([client.get_experiment_by_name("dogbreed").experiment_id])
        history, = client.get_metric_history(run.info.run_id, "monitor.accuracy")
        assert history.value == pytest.approx(180 / 240) and history.step == int(hour.timestamp()) + 3600
        assert run.data.metrics["monitor.requests"] == 260
        files = {a.path for a in client.list_artifacts(run.info.run_id, f"monitoring/{done.folder.name}")}
        assert f"monitoring/{done.folder.name}/model_quality.json" in files


@pytest.mark.parametrize("flags, message", [
    (["--capture", "{tmp}/nowhere"], "is not a folder; pass the folder `dogbreed serve --capture` wrote to"),
    (["--baseline", "{tmp}"], "holds no baseline"),
    (["--start", "yesterday"], "--start 'yesterday' is not a time"),
    (["--every", "0s"], "--every '0s' is not a period; use e.g. 30m, 1h or 1d"),
    (["--every", "1h", "--end", "2026-01-01T00:00:00Z"], "--every runs over each period as it ends; drop --start and --end"),
    (["--alpha", "2"], "--alpha must be between 0 and 1"),
    (["--out", "s3://bucket/monitoring"], "--out s3://bucket/monitoring: each execution adds to the history"),
])
def test_monitor_run_mistakes_are_one_line_each(trained_run, tmp_path, capsys, flags, message):
    (tmp_path / "capture").mkdir()
    given = dict(zip(flags[::2], flags[1::2]))
    args = {"--capture": str(tmp_path / "capture"), "--baseline": str(trained_run.artifact), **given}
    argv = [part.replace("{tmp}", str(tmp_path)) for pair in args.items() for part in pair]
    assert main(["monitor", "run", *argv]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_every_runs_one_execution_per_period_and_serves_the_last_as_gauges(trained_run, tmp_path):
    capture, out, port = tmp_path / "capture", tmp_path / "out", free_port()
    capture.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "dogbreed", "monitor", "run", "--every", "2s", "--metrics-port", str(port),
                             "--capture", str(capture), "--baseline", str(trained_run.artifact), "--out", str(out),
                             "--backend", "eager", "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(list(out.glob("executions/*/checks.json"))) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() is not None else "slow"
            time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            metrics = r.read().decode()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert "dogbreed_monitor_violations 0.0" in metrics and "dogbreed_monitor_images 0.0" in metrics
    stamp = float(next(line for line in metrics.splitlines() if line.startswith("dogbreed_monitor_last_execution_timestamp")).split()[-1])
    assert time.time() - 120 < stamp <= time.time()
    ends = sorted(p.name for p in (out / "executions").iterdir())
    first, second = (datetime.strptime(e, "%Y-%m-%dT%H-%M-%SZ") for e in ends[:2])
    assert (second - first).total_seconds() == 2  # back to back, one period each
    assert proc.returncode in (0, 130)


def test_a_captured_json_lines_request_is_one_item_per_image_with_its_answer(tmp_path):
    """A Batch Transform style body (JSON lines; one record a list of two) is read as the endpoint
    read it: one item per image, each with its own answer from the answer lines."""
    import base64

    from dogbreed.drift import window

    images = [image for image, _ in requests(3, draw=5, **WORLD)]
    body = "\n".join([json.dumps(base64.b64encode(images[0]).decode()),
                      json.dumps({"instances": [{"b64": base64.b64encode(b).decode()} for b in images[1:]]})]).encode()
    answers = "\n".join([json.dumps({"topk_indices": [0]}), json.dumps([{"topk_indices": [1]}, {"topk_indices": [2]}])])
    writer = CaptureWriter(tmp_path, "dogbreed").start()
    writer.submit("batch", request=(body, "application/jsonlines"), response=(answers.encode(), "application/jsonlines"))
    writer.submit("broken", request=(b"{oops", "application/jsonlines"), response=(b'{"error": "x"}', "application/json"))
    writer.close()
    found = window.read(tmp_path, records.Window())
    assert found.requests == 2
    assert [(i.key, i.image, i.answer) for i in found.items[:3]] == [
        ("batch#0", images[0], {"topk_indices": [0]}), ("batch#1", images[1], {"topk_indices": [1]}),
        ("batch#2", images[2], {"topk_indices": [2]})]
    assert (found.items[3].key, found.items[3].image) == ("broken", b"{oops")  # refused: one unreadable input
