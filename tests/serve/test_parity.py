"""One inference path: the same requests to the artifact's handlers (run by SageMaker's inference
toolkit, tests/toolkit.py) and to the real ``dogbreed serve`` process get the same status and the
same JSON, every content type, every Accept form, JSON instances and bad inputs alike."""

import base64
import http.client
import io
import json
import urllib.parse
import urllib.request

import numpy as np
import pytest
from PIL import Image

from dogbreed.archive import safe_extract_tar
from dogbreed.runtime.presets import load_image

from ..toolkit import run_handlers

# The server fixture's limits (tests/serve/conftest.py), given to the handlers the SageMaker way.
HANDLER_ENV = {"DOGBREED_MAX_PIXELS": "1000000", "DOGBREED_MAX_INSTANCES": "4", "DOGBREED_BACKEND": "eager"}


def post(url: str, body: bytes, headers: dict) -> tuple[int, dict, bytes]:
    """Exactly these headers (urllib would add a Content-Type of its own to a body without one)."""
    netloc = urllib.parse.urlsplit(url).netloc
    conn = http.client.HTTPConnection(netloc, timeout=60)
    try:
        conn.request("POST", "/invocations", body=body, headers=headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def _b64(*images: bytes) -> bytes:
    return json.dumps({"instances": [{"b64": base64.b64encode(b).decode()} for b in images]}).encode()


def _lines(*records) -> bytes:
    """JSON lines: an image as a base64 string, a dict of images as ``{"instances": [...]}``."""
    def record(item):
        if isinstance(item, dict):
            return {"instances": [{"b64": base64.b64encode(b).decode()} for b in item["instances"]]}
        return base64.b64encode(item).decode()
    return "\n".join(json.dumps(record(r)) for r in records).encode()


def _records(body: bytes | str, media_type: str) -> list:
    """An answer's records: each line of JSON lines, else the one JSON document."""
    return [json.loads(line) for line in body.splitlines()] if media_type == "application/jsonlines" else [json.loads(body)]


def _flat(records: list) -> list[dict]:
    return [a for r in records for a in (r if isinstance(r, list) else [r])]


def _requests(samples) -> list[tuple[str, bytes, dict]]:
    photo = load_image(samples / "Collie_03797.jpg")
    photo.thumbnail((320, 320))
    jpeg, png = _encode(photo, "JPEG"), _encode(photo, "PNG")
    other = _encode(load_image(samples / "cat_01.jpg").resize((200, 150)), "JPEG")
    bomb = _encode(Image.new("L", (2000, 2000)), "PNG")
    thin = _encode(Image.new("L", (300_000, 1)), "PNG")
    jpg = {"Content-Type": "image/jpeg"}
    lines = {"Content-Type": "application/jsonlines"}
    cases = [
        ("jpeg", jpeg, jpg),
        ("png", png, {"Content-Type": "image/png"}),
        ("webp", _encode(photo, "WEBP"), {"Content-Type": "image/webp"}),
        ("x-image", jpeg, {"Content-Type": "application/x-image"}),
        ("octet-stream", png, {"Content-Type": "application/octet-stream"}),
        ("no content type", png, {}),
        ("content type with parameters", jpeg, {"Content-Type": "Image/JPEG; charset=binary"}),
        ("two instances", _b64(jpeg, other), {"Content-Type": "application/json"}),
        ("a list of one", _b64(other), {"Content-Type": "application/json"}),
        ("json with a charset", _b64(other), {"Content-Type": "application/json; charset=utf-8"}),
        ("topk and threshold", jpeg, {**jpg, "X-Amzn-SageMaker-Custom-Attributes": "topk=2,threshold=0"}),
        ("threshold 1", jpeg, {**jpg, "X-Amzn-SageMaker-Custom-Attributes": "threshold=1"}),
        ("bad attribute", jpeg, {**jpg, "X-Amzn-SageMaker-Custom-Attributes": "topk=lots"}),
        ("attribute out of range", jpeg, {**jpg, "X-Amzn-SageMaker-Custom-Attributes": "topk=0"}),
        ("explain: a PNG heatmap", jpeg, {**jpg, "X-Amzn-SageMaker-Custom-Attributes": "explain=1"}),
        ("explain: a grid, two instances", _b64(jpeg, other),
         {"Content-Type": "application/json", "X-Amzn-SageMaker-Custom-Attributes": "topk=2,explain=grid"}),
        ("explain: a bad value", jpeg, {**jpg, "X-Amzn-SageMaker-Custom-Attributes": "explain=maybe"}),
        ("explain: another breed", jpeg, {**jpg, "X-Amzn-SageMaker-Custom-Attributes": "explain_label=002.Afghan_hound"}),
        ("explain: a breed it does not know", jpeg, {**jpg, "X-Amzn-SageMaker-Custom-Attributes": "explain_label=Poodle"}),
        ("Accept: image/png, the heatmap itself", jpeg, {**jpg, "Accept": "image/png"}),
        ("Accept: image/png, two images", _b64(jpeg, other), {"Content-Type": "application/json", "Accept": "image/png"}),
        ("Accept: image/*, not the heatmap", jpeg, {**jpg, "Accept": "image/*"}),
        ("empty body", b"", jpg),
        ("not an image", b"hello", jpg),
        ("truncated jpeg", jpeg[: len(jpeg) // 2], jpg),
        ("over the pixel limit", bomb, {"Content-Type": "image/png"}),
        ("too elongated", thin, {"Content-Type": "image/png"}),
        ("unsupported type", b"1,2,3", {"Content-Type": "text/csv"}),
        ("malformed json", b"{oops", {"Content-Type": "application/json"}),
        ("bad base64", b'{"instances": [{"b64": "@@@"}]}', {"Content-Type": "application/json"}),
        ("not a list", b'{"instances": {"b64": "AAAA"}}', {"Content-Type": "application/json"}),
        ("too many instances", _b64(*[other] * 5), {"Content-Type": "application/json"}),
        ("one bad instance", _b64(other, b"hello"), {"Content-Type": "application/json"}),
        # Batch Transform's MultiRecord bodies: one record a line, one answer line each
        ("json lines", _lines(jpeg, other, {"instances": [other, jpeg]}), {**lines, "Accept": "application/jsonlines"}),
        ("json lines, trailing newline", _lines(other) + b"\n", {**lines, "Accept": "application/jsonlines"}),
        ("json lines as ndjson", _lines(jpeg, other), {"Content-Type": "application/x-ndjson", "Accept": "*/*"}),
        ("json lines, no Accept: a JSON list", _lines(jpeg, other), lines),
        ("json lines, a bad line", _lines(jpeg) + b"\n{oops", lines),
        ("json lines, a bad image", _lines(jpeg, b"hello"), lines),
        ("json lines, too many", _lines(*[other] * 5), lines),
        ("an image, JSON lines accepted", jpeg, {**jpg, "Accept": "application/jsonlines"}),
    ]
    for accept in ("*/*", "application/json", "application/*", "application/json, text/plain",
                   "text/html;q=0.9, */*;q=0.1", "text/csv", "application/json;q=0"):
        cases.append((f"Accept: {accept}", jpeg, {**jpg, "Accept": accept}))
    return cases


def test_handlers_and_server_answer_every_request_alike(trained_run, server, samples, tmp_path):
    safe_extract_tar(trained_run.artifact, tmp_path)
    cases = _requests(samples)
    handled = run_handlers(tmp_path, [(body, headers) for _, body, headers in cases], env=HANDLER_ENV)
    statuses, pngs = set(), []
    for (name, body, headers), theirs in zip(cases, handled, strict=True):
        status, response_headers, out = post(server, body, headers)
        assert status == theirs["status"], f"{name}: server {status}, handlers {theirs['status']}: {out[:200]}"
        statuses.add(status)
        if status == 200 and response_headers["content-type"] == "image/png":
            assert theirs["content_type"] == "image/png", name
            _same_heatmap(base64.b64encode(out), theirs["body_b64"], name)
            pngs.append(name)
        elif status == 200:
            media_type = response_headers["content-type"]
            assert media_type == theirs["content_type"] in ("application/json", "application/jsonlines"), name
            ours, handler = _records(out, media_type), _records(theirs["body"], media_type)
            assert [type(r) for r in ours] == [type(r) for r in handler], name
            for a, b in zip(_flat(ours), _flat(handler), strict=True):
                # Scores are floats from a parallel library: its threads may sum in another order
                assert a.pop("topk_probs") == pytest.approx(b.pop("topk_probs"), abs=1e-5), name
                assert a.pop("ood_score", None) == pytest.approx(b.pop("ood_score", None), rel=1e-4), name
                _same_heatmap(a.pop("heatmap", None), b.pop("heatmap", None), name)
                assert a == b, name
        else:  # the toolkit's error body: the handler's message, then its traceback
            assert json.loads(out)["error"] == theirs["body"].splitlines()[0], name
    assert statuses == {200, 400, 406, 415}
    assert pngs == ["Accept: image/png, the heatmap itself"]


def _same_heatmap(a, b, name: str) -> None:
    """The same map: a grid within its rounding, a PNG overlay within a shade per pixel (the
    server batches requests together, and a batch may sum in another order)."""
    if isinstance(a, list):
        assert np.allclose(a, b, atol=2e-3), name
    elif a is not None:
        ours, theirs = (np.asarray(Image.open(io.BytesIO(base64.b64decode(x)))).astype(int) for x in (a, b))
        assert ours.shape == theirs.shape and np.abs(ours - theirs).max() <= 2, name
    else:
        assert b is None, name


def test_a_transform_job_reads_the_containers_execution_parameters(server):
    with urllib.request.urlopen(f"{server}/execution-parameters", timeout=30) as r:
        assert json.load(r) == {"MaxConcurrentTransforms": 2, "BatchStrategy": "MULTI_RECORD", "MaxPayloadInMB": 1}


@pytest.mark.parametrize("split, strategy, assemble", [("None", "MultiRecord", "None"), ("None", "SingleRecord", "Line"),
                                                       ("Line", "SingleRecord", "None"), ("Line", "SingleRecord", "Line"),
                                                       ("Line", "MultiRecord", "None"), ("Line", "MultiRecord", "Line")])
def test_transform_writes_what_the_endpoint_answers(trained_run, server, samples, synth_data, tmp_path, split, strategy,
                                                    assemble):
    """Each .out holds the endpoint's answers to the requests Batch Transform would send for its
    input, joined as AssembleWith says, for every split, strategy and assembly."""
    from dogbreed.cli import main

    src = tmp_path / "in"
    photos = sorted((synth_data / "test").rglob("*.jpg"))[:3]
    other = _encode(load_image(samples / "cat_01.jpg").resize((200, 150)), "PNG")
    if split == "None":  # image files, and a JSON lines file sent whole
        sent = {p.name: (p.read_bytes(), "image/jpeg") for p in photos}
        sent["cat.png"] = (other, "image/png")
        sent["two.jsonl"] = (_lines(photos[0].read_bytes(), other), "application/jsonlines")
        bodies = {name: [body] for name, (body, _) in sent.items()}
    else:  # one JSON lines file: each record alone, or all in one request (they fit in the payload)
        records = [photos[0].read_bytes(), other, {"instances": [photos[1].read_bytes(), photos[2].read_bytes()]}]
        lines = _lines(*records).split(b"\n")
        sent = {"batch.jsonl": (b"\n".join(lines) + b"\n", "application/jsonlines")}
        bodies = {"batch.jsonl": lines if strategy == "SingleRecord" else [b"\n".join(lines)]}
    for name, (body, _) in sent.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(body)
    accept = "application/jsonlines" if split == "Line" else "application/json"
    dest = tmp_path / "out"
    assert main(["transform", "--model", str(trained_run.artifact), "--input", str(src), "--output", str(dest),
                 "--split-type", split, "--batch-strategy", strategy, "--assemble-with", assemble, "--backend", "eager",
                 "--no-progress"]) == 0
    separator = "\n" if assemble == "Line" else ""
    for name, requests in bodies.items():
        ctype = "application/jsonlines" if split == "Line" else sent[name][1]
        answered = []
        for body in requests:
            status, headers, out = post(server, body, {"Content-Type": ctype, "Accept": accept})
            assert status == 200, (name, out)
            answered.append(out.decode() + separator)
        ours, expected = (dest / f"{name}.out").read_text(), "".join(answered)
        assert ours.count("\n") == expected.count("\n"), name  # the same lines, laid out alike
        ours_docs, theirs_docs = _values(ours), _values(expected)
        assert [type(d) for d in ours_docs] == [type(d) for d in theirs_docs], name
        for a, b in zip(_flat(ours_docs), _flat(theirs_docs), strict=True):
            assert a.pop("topk_probs") == pytest.approx(b.pop("topk_probs"), abs=1e-5), name
            assert a.pop("ood_score", None) == pytest.approx(b.pop("ood_score", None), rel=1e-4, abs=1e-5), name
            assert a == b, name


def _values(text: str) -> list:
    """The JSON values in ``text`` one after another, whether lines or run together."""
    decoder, values, at = json.JSONDecoder(), [], 0
    while at < len(text):
        if text[at].isspace():
            at += 1
            continue
        value, at = decoder.raw_decode(text, at)
        values.append(value)
    return values
