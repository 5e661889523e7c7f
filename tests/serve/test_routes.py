"""The endpoint as clients see it, against a real server process."""

import base64
import http.client
import io
import json
import threading
import urllib.error
import urllib.parse
import urllib.request

import pytest
from PIL import Image

from dogbreed.runtime.presets import load_image


def call(url, path, body=b"", headers=None, method="POST"):
    req = urllib.request.Request(url + path, data=body if method == "POST" else None, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def invoke(url, body, ctype="image/jpeg", **headers):
    return call(url, "/invocations", body, {"Content-Type": ctype, **headers})


def test_ping_is_200_once_ready(server):
    assert call(server, "/ping", method="GET")[:1] == (200,)


def test_ping_is_503_before_the_model_is_loaded(trained_run):
    from starlette.testclient import TestClient

    from dogbreed.serve import ServeConfig
    from dogbreed.serve.routes import create_app

    client = TestClient(create_app(ServeConfig(model=str(trained_run.artifact))))  # lifespan not started
    assert client.get("/ping").status_code == 503


def test_the_api_spec_gives_every_operation_its_own_id():
    """FastAPI warns "Duplicate Operation ID" into the server's log when /docs reads a spec with one."""
    import warnings

    from dogbreed.serve import ServeConfig
    from dogbreed.serve.routes import create_app

    app = create_app(ServeConfig(model="model.tar.gz"))  # the spec needs no model
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spec = app.openapi()
    ids = [operation["operationId"] for path in spec["paths"].values() for operation in path.values()]
    assert len(ids) == len(set(ids)) and {"get", "head"} <= set(spec["paths"]["/ping"])


def test_invocations_answers_with_the_seeds_field_names(server, samples):
    status, headers, body = invoke(server, (samples / "Beagle_01125.jpg").read_bytes())
    assert status == 200 and headers["content-type"] == "application/json"
    answer = json.loads(body)
    # the original project's keys first, as they were; then the verdict and its score
    assert list(answer) == ["topk_labels", "topk_indices", "topk_probs", "breeds", "low_confidence", "verdict",
                            "ood_score"]
    assert len(answer["topk_labels"]) == 4 and answer["topk_labels"][0].startswith("00")
    assert answer["topk_probs"] == sorted(answer["topk_probs"], reverse=True)


def test_every_image_type_decodes_to_the_same_answer(server, samples):
    """Lossless encodings of one photo, under every image content type: the same pixels, so the same
    answer (JPEG, being lossy, is compared on its own labels)."""
    photo = load_image(samples / "Collie_03797.jpg")
    photo.thumbnail((400, 400))

    def encode(fmt, **options):
        buf = io.BytesIO()
        photo.save(buf, fmt, **options)
        return buf.getvalue()

    png = encode("PNG")
    reference = json.loads(invoke(server, png, "image/png")[2])
    for body, ctype in ((encode("WEBP", lossless=True), "image/webp"), (encode("BMP"), "application/octet-stream"),
                        (png, "application/x-image")):
        status, _, out = invoke(server, body, ctype)
        answer = json.loads(out)
        assert status == 200 and answer.pop("topk_probs") == pytest.approx(reference["topk_probs"], abs=1e-6), ctype
        assert answer == {k: v for k, v in reference.items() if k != "topk_probs"}, ctype
    jpeg = json.loads(invoke(server, encode("JPEG", quality=95), "image/jpeg")[2])
    assert sorted(jpeg["topk_labels"]) == sorted(reference["topk_labels"])  # all 4 classes, in some order


def test_json_instances_are_answered_as_a_list_in_order(server, samples):
    photos = [samples / n for n in ("Boxer_02426.jpg", "cat_01.jpg", "Poodle_07956.jpg")]
    singles = [json.loads(invoke(server, p.read_bytes())[2]) for p in photos]
    body = json.dumps({"instances": [{"b64": base64.b64encode(p.read_bytes()).decode()} for p in photos]}).encode()
    status, _, out = invoke(server, body, "application/json")
    assert status == 200
    many = json.loads(out)
    assert [a["topk_labels"] for a in many] == [a["topk_labels"] for a in singles]
    for a, b in zip(many, singles):
        assert a["topk_probs"] == pytest.approx(b["topk_probs"], abs=1e-4)


def test_custom_attributes_set_topk_and_threshold(server, samples):
    body = (samples / "Dalmatian_04068.jpg").read_bytes()
    answer = json.loads(invoke(server, body, **{"X-Amzn-SageMaker-Custom-Attributes": "topk=2,threshold=0"})[2])
    assert len(answer["topk_labels"]) == 2 and answer["low_confidence"] is False
    answer = json.loads(invoke(server, body, **{"X-Amzn-SageMaker-Custom-Attributes": "threshold=1"})[2])
    assert answer["low_confidence"] is True


def test_multipart_predict(server, samples):
    boundary = "dogbreedboundary"
    data = (samples / "Saint_bernard_08010.jpg").read_bytes()
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"dog.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    status, _, out = call(server, "/predict", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 200 and "breeds" in json.loads(out)


def _bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (2000, 2000)).save(buf, "PNG")  # 4 megapixels in a few kilobytes
    return buf.getvalue()


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 120, 40)).save(buf, "PNG")
    return buf.getvalue()


def _thin() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (300_000, 1)).save(buf, "PNG")  # under the pixel limit, but resized it would be 232 x 70 million
    return buf.getvalue()


BAD = [
    ("empty body", b"", "image/jpeg", {}, 400, "empty body"),
    ("not an image", b"hello", "image/jpeg", {}, 400, "cannot decode"),
    ("decompression bomb", _bomb(), "image/png", {}, 400, "over the limit of 1000000"),
    ("elongated image", _thin(), "image/png", {}, 400, "too elongated to classify (aspect ratio over 100:1)"),
    ("content type", b"x", "text/plain", {}, 415, "unsupported Content-Type 'text/plain'"),
    ("accept", b"x", "image/jpeg", {"Accept": "text/csv"}, 406, "answers are application/json"),
    ("malformed json", b"{oops", "application/json", {}, 400, "malformed JSON"),
    ("bad base64", b'{"instances": [{"b64": "@@@"}]}', "application/json", {}, 400, "malformed base64"),
    ("too many instances", json.dumps({"instances": [{"b64": "AAAA"}] * 5}).encode(), "application/json", {}, 400,
     "5 instances is over the limit of 4"),
    ("one bad instance", json.dumps({"instances": [{"b64": base64.b64encode(_png()).decode()},
                                                   {"b64": base64.b64encode(b"hello").decode()}]}).encode(),
     "application/json", {}, 400, "instance 1: image: cannot decode"),
    ("far too many instances", json.dumps({"instances": [{"b64": "AAAA"}] * 70}).encode(), "application/json", {}, 400,
     "70 instances is over the limit of 4"),  # the server's limit, whatever the handlers' own default
    ("bad attribute", b"x", "image/jpeg", {"X-Amzn-SageMaker-Custom-Attributes": "topk=lots"}, 400, "expected topk=N"),
]


@pytest.mark.parametrize("name, body, ctype, headers, status, fragment", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_a_4xx_json_error_and_the_server_keeps_serving(server, samples, name, body, ctype, headers,
                                                                        status, fragment):
    got, response_headers, out = invoke(server, body, ctype, **headers)
    assert got == status
    error = json.loads(out)["error"]
    assert fragment in error
    assert invoke(server, (samples / "Beagle_01125.jpg").read_bytes())[0] == 200  # still serving


@pytest.mark.parametrize("method, path, body, headers, status", [
    ("GET", "/no/such/route", None, {}, 404),
    ("GET", "/invocations", None, {}, 405),
    ("POST", "/predict", b"--x\r\n", {"Content-Type": "multipart/form-data"}, 400),  # no boundary
    ("POST", "/predict", None, {}, 400),
])
def test_routing_and_form_errors_are_json_too(server, method, path, body, headers, status):
    got, _, out = call(server, path, body or b"", headers, method=method)
    assert got == status and json.loads(out)["error"]
    if path == "/predict" and body is None:
        assert "multipart form with the photo in the field 'image'" in json.loads(out)["error"]


def test_oversized_headers_are_refused_and_the_server_keeps_serving(server, samples):
    host, port = urllib.parse.urlsplit(server).netloc.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.putrequest("GET", "/ping")
        conn.putheader("X-Padding", "a" * 200_000)  # over the 64 KB bound: refused, not read into memory
        conn.endheaders()
        status = conn.getresponse().status
    except (BrokenPipeError, ConnectionResetError):  # refused while the client was still sending
        status = None
    finally:
        conn.close()
    assert status in (400, None)
    assert call(server, "/ping", method="GET")[0] == 200


def test_a_body_over_the_limit_is_refused_from_its_headers(server, samples):
    # The server answers 413 before reading a byte of the body; sending the body first would race
    # its close (a broken pipe), so the client sends the headers alone and reads the answer.
    host, port = urllib.parse.urlsplit(server).netloc.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.putrequest("POST", "/invocations")
    conn.putheader("Content-Type", "image/jpeg")
    conn.putheader("Content-Length", str(1024 * 1024 + 1))
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413
    assert "over the limit of 1048576 bytes" in json.loads(response.read())["error"]
    conn.close()
    assert invoke(server, (samples / "Beagle_01125.jpg").read_bytes())[0] == 200  # still serving


def test_a_streamed_body_over_the_limit_is_refused(server, samples):
    # No Content-Length (chunked): the server counts while it reads and refuses one byte past the limit.
    status, _, out = call(server, "/invocations", iter([b"\xff" * 65536] * 16 + [b"\xff"]), {"Content-Type": "image/jpeg"})
    assert status == 413 and "over the limit of 1048576 bytes" in json.loads(out)["error"]
    assert invoke(server, (samples / "Beagle_01125.jpg").read_bytes())[0] == 200


def test_truncated_jpeg(server, samples):
    data = (samples / "Golden_retriever_05182.jpg").read_bytes()
    status, _, out = invoke(server, data[: len(data) // 2])
    assert status == 400 and "cannot decode" in json.loads(out)["error"]


def test_concurrent_requests_are_batched_with_identical_results(server, samples):
    photos = sorted(samples.glob("*.jpg"))[:8]
    alone = {p.name: json.loads(invoke(server, p.read_bytes())[2]) for p in photos}
    together, errors = {}, []

    def one(p):
        try:
            together[p.name] = json.loads(invoke(server, p.read_bytes())[2])
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(p,)) for p in photos]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    for name, answer in alone.items():
        assert together[name]["topk_labels"] == answer["topk_labels"]
        assert together[name]["topk_probs"] == pytest.approx(answer["topk_probs"], abs=1e-4)
    metrics = call(server, "/metrics", method="GET")[2].decode()
    sizes = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines() if line.startswith("dogbreed_batch_size_")}
    assert sizes["dogbreed_batch_size_count"] < sizes["dogbreed_batch_size_sum"]  # some batch held more than one image


def test_metrics_and_docs(server, samples):
    assert invoke(server, (samples / "Beagle_01125.jpg").read_bytes())[0] == 200
    status, headers, out = call(server, "/metrics", method="GET")
    text = out.decode()
    assert status == 200 and "text/plain" in headers["content-type"]
    for name in ("dogbreed_requests_total", "dogbreed_request_seconds_bucket", "dogbreed_batch_size_bucket",
                 "dogbreed_queue_depth", "dogbreed_model_load_seconds"):
        assert name in text
    assert 'route="/invocations",status="200"' in text
    status, _, page = call(server, "/docs", method="GET")
    assert status == 200 and b"<script src" not in page and b"cdn" not in page.lower()  # works offline
    spec = json.loads(call(server, "/openapi.json", method="GET")[2])
    assert {"/ping", "/invocations", "/endpoints/{name}/invocations", "/predict", "/metrics"} <= set(spec["paths"])


def test_every_answer_carries_a_verdict_from_the_artifacts_own_thresholds(server, trained_run, samples, synth_data,
                                                                          tmp_path):
    """A cat, noise, a breed the model never saw and a known breed, through the real server: the
    original keys intact, and a verdict that follows model.json's "not a dog" threshold and the
    probability threshold. (Whether a tiny random-weight model can tell a cat from its breeds is
    measured in benchmarks/ood_bench.py, not asserted here.)"""
    import numpy as np

    from dogbreed.archive import safe_extract_tar
    from dogbreed.data.synth import synth

    safe_extract_tar(trained_run.artifact, tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    cut = meta["rejection"]["threshold"]
    # the session's data set again (same seed: the same known breeds), with one breed the model never saw
    again = synth(tmp_path / "again", classes=4, per_class=16, size=64, seed=1, unseen=1, progress=False)
    noise = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(noise, "PNG")
    images = {"cat": (samples / "cat_01.jpg").read_bytes(), "noise": noise.getvalue(),
              "unseen": sorted((again / "unseen").rglob("*.jpg"))[0].read_bytes(),
              "known": sorted((synth_data / "train").glob("*/*.jpg"))[0].read_bytes()}
    for what, body in images.items():
        status, _, raw = invoke(server, body)
        answer = json.loads(raw)
        assert status == 200 and len(answer["topk_labels"]) == len(answer["topk_probs"]) == 4, what
        expected = ("not_a_dog" if answer["ood_score"] < cut else
                    "unsure" if answer["topk_probs"][0] < meta["threshold"] else "breed")
        assert answer["verdict"] == expected, (what, answer)
        # a request may ask for another share of known breeds kept: all of them (under the lowest valid
        # score) or 1% (under the 99th percentile)
        q = meta["rejection"]["quantiles"]
        for keep, below in (("1", q[0]), ("0.01", q[99])):
            other = json.loads(invoke(server, body, **{"X-Amzn-SageMaker-Custom-Attributes": f"keep={keep}"})[2])
            assert other["verdict"] == ("not_a_dog" if answer["ood_score"] < below else
                                        "unsure" if answer["topk_probs"][0] < meta["threshold"] else "breed"), what
    status, _, raw = invoke(server, images["known"], **{"X-Amzn-SageMaker-Custom-Attributes": "keep=0"})
    assert status == 400 and "keep must be in (0, 1]" in raw.decode()
