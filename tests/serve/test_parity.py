"""One inference path: the same requests to the artifact's handlers (run by SageMaker's inference
toolkit, tests/toolkit.py) and to the real ``dogbreed serve`` process get the same status and the
same JSON, every content type, every Accept form, JSON instances and bad inputs alike."""

import base64
import http.client
import io
import json
import urllib.parse

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


def _requests(samples) -> list[tuple[str, bytes, dict]]:
    photo = load_image(samples / "Collie_03797.jpg")
    photo.thumbnail((320, 320))
    jpeg, png = _encode(photo, "JPEG"), _encode(photo, "PNG")
    other = _encode(load_image(samples / "cat_01.jpg").resize((200, 150)), "JPEG")
    bomb = _encode(Image.new("L", (2000, 2000)), "PNG")
    thin = _encode(Image.new("L", (300_000, 1)), "PNG")
    jpg = {"Content-Type": "image/jpeg"}
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
    ]
    for accept in ("*/*", "application/json", "application/*", "application/json, text/plain",
                   "text/html;q=0.9, */*;q=0.1", "text/csv", "application/json;q=0"):
        cases.append((f"Accept: {accept}", jpeg, {**jpg, "Accept": accept}))
    return cases


def test_handlers_and_server_answer_every_request_alike(trained_run, server, samples, tmp_path):
    safe_extract_tar(trained_run.artifact, tmp_path)
    cases = _requests(samples)
    handled = run_handlers(tmp_path, [(body, headers) for _, body, headers in cases], env=HANDLER_ENV)
    statuses = set()
    for (name, body, headers), theirs in zip(cases, handled, strict=True):
        status, response_headers, out = post(server, body, headers)
        assert status == theirs["status"], f"{name}: server {status}, handlers {theirs['status']}: {out[:200]}"
        statuses.add(status)
        if status == 200:
            assert response_headers["content-type"] == theirs["content_type"] == "application/json", name
            ours, handler = json.loads(out), json.loads(theirs["body"])
            assert type(ours) is type(handler), name
            for a, b in zip(ours if isinstance(ours, list) else [ours], handler if isinstance(handler, list) else [handler],
                            strict=True):
                # Scores are floats from a parallel library: its threads may sum in another order
                assert a.pop("topk_probs") == pytest.approx(b.pop("topk_probs"), abs=1e-5), name
                assert a.pop("ood_score", None) == pytest.approx(b.pop("ood_score", None), rel=1e-4), name
                assert a == b, name
        else:  # the toolkit's error body: the handler's message, then its traceback
            assert json.loads(out)["error"] == theirs["body"].splitlines()[0], name
    assert statuses == {200, 400, 406, 415}
