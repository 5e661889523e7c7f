"""The artifact's SageMaker handlers, run as SageMaker's inference toolkit runs them (tests/toolkit.py)."""

import base64
import io
import json

import pytest
from PIL import Image

from dogbreed.archive import safe_extract_tar

from ..conftest import run_cli
from ..toolkit import run_handlers


@pytest.fixture(scope="module")
def model_dir(trained_run, tmp_path_factory):
    folder = tmp_path_factory.mktemp("unpacked")
    safe_extract_tar(trained_run.artifact, folder)
    return folder


def test_the_handlers_answer_like_dogbreed_predict(trained_run, model_dir, samples):
    photos = sorted(samples.glob("*.jpg"))[:5]
    # predict runs eager fp32; the handlers' auto may race the bf16 the run's end checked, whose answers
    # differ within its gate, not within float rounding
    handled = run_handlers(model_dir, [(p.read_bytes(), {"Content-Type": "image/jpeg"}) for p in photos],
                           env={"DOGBREED_BACKEND": "eager"})
    proc = run_cli("predict", *map(str, photos), "--model", str(trained_run.artifact), "--json")
    assert proc.returncode == 0, proc.stderr
    for line, handler in zip(proc.stdout.splitlines(), handled, strict=True):
        ours = json.loads(line)
        assert ours.pop("file").endswith(".jpg")
        assert (handler["status"], handler["content_type"]) == (200, "application/json")
        theirs = json.loads(handler["body"])
        # predict batches images, the handlers take one at a time: identical up to float rounding
        assert ours.pop("topk_probs") == pytest.approx(theirs.pop("topk_probs"), abs=1e-5)
        assert ours.pop("ood_score") == pytest.approx(theirs.pop("ood_score"), rel=1e-4)
        assert ours == theirs


def test_json_instances_custom_attributes_and_accept(model_dir, samples):
    photos = [samples / n for n in ("Boxer_02426.jpg", "cat_01.jpg", "Poodle_07956.jpg")]
    body = json.dumps({"instances": [{"b64": base64.b64encode(p.read_bytes()).decode()} for p in photos]}).encode()
    many, single, attributes = run_handlers(model_dir, [
        (body, {"Content-Type": "application/json", "Accept": "application/*"}),
        (photos[1].read_bytes(), {"Content-Type": "image/jpeg"}),
        (photos[1].read_bytes(), {"Content-Type": "image/jpeg", "X-Amzn-SageMaker-Custom-Attributes": "topk=2,threshold=0"}),
    ])
    assert many["status"] == 200 and many["content_type"] == "application/json"  # not "application/*"
    answers = json.loads(many["body"])
    assert len(answers) == 3 and answers[1]["topk_labels"] == json.loads(single["body"])["topk_labels"]
    narrow = json.loads(attributes["body"])
    assert len(narrow["topk_labels"]) == 2 and narrow["low_confidence"] is False


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 120, 40)).save(buf, "PNG")
    return buf.getvalue()


PNG = _png()
REFUSED = [
    (b"", {"Content-Type": "image/jpeg"}, 400, "empty body; send the image bytes, or JSON instances"),
    (b"GIF89a-not-really", {"Content-Type": "image/jpeg"}, 400, "image: cannot decode"),
    (b"{}", {"Content-Type": "text/plain"}, 415, "unsupported Content-Type 'text/plain'"),
    (PNG, {"Content-Type": "image/png", "Accept": "text/csv"}, 406, "cannot answer Accept 'text/csv'"),
    (b"{not json", {"Content-Type": "application/json"}, 400, "malformed JSON body"),
    (b'{"instances": [{"b64": "***"}]}', {"Content-Type": "application/json"}, 400, "malformed base64 in instances"),
    (PNG, {"Content-Type": "image/png", "X-Amzn-SageMaker-Custom-Attributes": "topk=0"}, 400,
     "custom attribute topk must be 1..1000, got 0"),
]


def test_a_refused_request_gets_its_status_from_the_toolkit_not_500(model_dir):
    answers = run_handlers(model_dir, [(body, headers) for body, headers, _, _ in REFUSED])
    for (_, headers, status, message), answer in zip(REFUSED, answers, strict=True):
        assert answer["status"] == status, headers
        assert answer["body"].splitlines()[0].startswith(message)


def test_settings_from_the_containers_environment(model_dir, samples):
    photo = (samples / "Boxer_02426.jpg").read_bytes()
    body = json.dumps({"instances": [{"b64": base64.b64encode(photo).decode()}] * 3}).encode()
    env = {"DOGBREED_TOPK": "1", "DOGBREED_THRESHOLD": "1", "DOGBREED_MAX_INSTANCES": "2"}
    one, over = run_handlers(model_dir, [(photo, {"Content-Type": "image/jpeg"}),
                                         (body, {"Content-Type": "application/json"})], env=env)
    answer = json.loads(one["body"])
    assert len(answer["topk_labels"]) == 1 and answer["low_confidence"] is True
    assert over["status"] == 400 and over["body"].startswith("3 instances is over the limit of 2")
    (bad,) = run_handlers(model_dir, [(photo, {"Content-Type": "image/jpeg"})], env={"DOGBREED_TOPK": "0"})
    assert bad["status"] == 500 and "DOGBREED_TOPK or DOGBREED_THRESHOLD: topk must be 1..1000, got 0" in bad["body"]


def test_older_toolkits_that_pass_no_context_work_too(model_dir, samples, monkeypatch):
    import sys

    monkeypatch.syspath_prepend(str(model_dir / "code"))
    monkeypatch.delitem(sys.modules, "inference", raising=False)
    import inference

    model = inference.model_fn(str(model_dir))
    request = inference.input_fn((samples / "Beagle_01125.jpg").read_bytes(), "image/jpeg")
    body, media_type = inference.output_fn(inference.predict_fn(request, model), "application/json")
    assert media_type == "application/json" and len(json.loads(body)["topk_labels"]) == 4
    for name in ("inference", "pipeline", "loading", "network", "presets"):
        sys.modules.pop(name, None)
