"""Server limits that need their own server settings: API key, queue bound, timeout, backends."""

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import psutil
import pytest

from ..conftest import free_port
from .conftest import running_server
from .test_app import call, invoke


def test_api_key_guards_everything_but_ping_and_the_page(trained_run, samples):
    body = (samples / "Beagle_01125.jpg").read_bytes()
    with running_server(trained_run.artifact, "--api-key", "s3cret") as url:
        assert call(url, "/ping", method="GET")[0] == 200
        for page in ("/", "/docs", "/openapi.json"):  # static pages and the spec hold no secret
            assert call(url, page, method="GET")[0] == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            status, response_headers, out = invoke(url, body, **headers)
            assert status == 401 and "API key" in json.loads(out)["error"]
        assert call(url, "/metrics", method="GET")[0] == 401
        assert invoke(url, body, Authorization="Bearer s3cret")[0] == 200
        assert invoke(url, body, Authorization="bearer s3cret")[0] == 200  # the scheme is case-insensitive (RFC 7235)
        assert invoke(url, body, Authorization="Bearer s3cretX")[0] == 401
        # boto3 cannot send a bearer token; it signs with the key as its access key id
        import boto3

        sm = boto3.client("sagemaker-runtime", endpoint_url=url, region_name="us-east-1",
                          aws_access_key_id="s3cret", aws_secret_access_key="x")
        assert sm.invoke_endpoint(EndpointName="dogbreed", ContentType="image/jpeg", Body=body)["ResponseMetadata"]["HTTPStatusCode"] == 200
        bad = boto3.client("sagemaker-runtime", endpoint_url=url, region_name="us-east-1",
                           aws_access_key_id="other", aws_secret_access_key="x")
        with pytest.raises(Exception) as err:
            bad.invoke_endpoint(EndpointName="dogbreed", ContentType="image/jpeg", Body=body)
        assert err.value.response["Error"]["Code"] == "AccessDeniedException"


def test_a_full_queue_answers_503_with_retry_after_at_once(trained_run, samples):
    body = (samples / "Great_pyrenees_05367.jpg").read_bytes()
    statuses, retry_after = [], []
    with running_server(trained_run.artifact, "--queue-size", "1", "--max-instances", "1", "--max-batch-size", "1",
                        "--max-delay-ms", "0") as url:
        def one():
            status, headers, _ = invoke(url, body)
            statuses.append(status)
            if status == 503:
                retry_after.append(headers.get("retry-after"))

        threads = [threading.Thread(target=one) for _ in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert invoke(url, body)[0] == 200  # and it recovers
    assert set(statuses) <= {200, 503} and 200 in statuses and 503 in statuses
    assert retry_after and set(retry_after) == {"1"}


def test_a_request_waiting_too_long_gets_504(trained_run, samples):
    with running_server(trained_run.artifact, "--timeout-s", "0.000001") as url:
        status, _, out = invoke(url, (samples / "Boxer_02426.jpg").read_bytes())
        assert status == 504 and "no answer within" in json.loads(out)["error"]
        assert call(url, "/ping", method="GET")[0] == 200


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_matches_eager_and_serves(trained_run, samples, tmp_path, fmt):
    from dogbreed.artifact import load_artifact
    from dogbreed.export import export
    from dogbreed.predict import predict_files
    from dogbreed.runtime.pipeline import Options

    variant = export(trained_run.artifact, fmt, tmp_path / f"model-{fmt}.tar.gz")
    photos = sorted(samples.glob("*.jpg"))
    eager = dict(predict_files(load_artifact(trained_run.artifact), photos, Options(topk=4)))
    exported = dict(predict_files(load_artifact(variant, backend=fmt), photos, Options(topk=4)))
    for photo in photos:  # fp32 on real photos: the same answer within 1e-4
        assert exported[photo]["topk_labels"] == eager[photo]["topk_labels"]
        assert exported[photo]["topk_probs"] == pytest.approx(eager[photo]["topk_probs"], abs=1e-4)
    with running_server(variant, "--backend", fmt) as url:
        answer = json.loads(invoke(url, photos[0].read_bytes())[2])
        assert answer["topk_labels"] == eager[photos[0]]["topk_labels"]


def test_workers_end_when_the_server_is_killed_outright_and_the_port_is_free_again(trained_run):
    port = free_port()
    parent = subprocess.Popen([sys.executable, "-m", "dogbreed", "serve", "--model", str(trained_run.artifact), "--port",
                               str(port), "--workers", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        children = psutil.Process(parent.pid).children(recursive=True)
        assert len(children) >= 2
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        gone, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, f"server workers outlived the killed `dogbreed serve`: {[p.pid for p in alive]}"
        with running_server(trained_run.artifact, port=port) as url:  # the port is free again
            assert call(url, "/ping", method="GET")[0] == 200
    finally:
        for p in psutil.Process().children(recursive=True):
            p.kill()


def test_port_0_picks_a_free_port_says_which_and_ping_answers_head(trained_run):
    import re

    proc = subprocess.Popen([sys.executable, "-m", "dogbreed", "serve", "--model", str(trained_run.artifact), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()  # the serving line comes once the model is loaded, before requests are taken
        match = re.search(r"on http://127\.0\.0\.1:(\d+) ", line)
        assert match and int(match[1]) > 0, line
        url = f"http://127.0.0.1:{match[1]}"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(urllib.request.Request(url + "/ping", method="HEAD"), timeout=2) as r:
                    assert r.status == 200 and r.read() == b""
                    break
            except OSError:
                assert time.monotonic() < deadline, "the server did not answer"
                time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
