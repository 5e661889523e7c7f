"""The one inference path, step by step (the handlers, the server and predict all call it)."""

import base64
import io
import json

import pytest
import torch
from PIL import Image

from dogbreed.runtime import pipeline
from dogbreed.runtime.loading import LoadedModel
from dogbreed.runtime.network import WithFeatures, build_network
from dogbreed.runtime.pipeline import MAX_TOPK, OptionError, Options, RequestError
from dogbreed.runtime.presets import EvalPreset


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = WithFeatures(build_network("resnet18", 3), "resnet18").eval()
    labels = ["001.Affenpinscher", "002.Afghan_hound", "003.Airedale_terrier"]
    return LoadedModel(net, labels, ["Affenpinscher", "Afghan hound", "Airedale terrier"],
                       EvalPreset(crop_size=64, resize_size=73), {"topk": 5, "threshold": 0.8}, torch.device("cpu"))


def png(size=(80, 60), colour=(200, 120, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("accept", [None, "", "*/*", "application/json", "application/*", "APPLICATION/JSON",
                                    "application/json, text/plain", "text/html;q=0.9, application/json;q=0.5",
                                    "application/json; charset=utf-8", "text/plain, */*;q=0.1"])
def test_accept_forms_that_json_satisfies(accept):
    assert pipeline.negotiate(accept) == "application/json"


@pytest.mark.parametrize("accept", ["text/csv", "text/plain, image/png", "application/json;q=0", "*/*;q=0",
                                    "application/xml", "application/jsonlines;q=0, application/json;q=0"])
def test_accept_forms_that_json_cannot_satisfy_are_406(accept):
    with pytest.raises(RequestError) as err:
        pipeline.negotiate(accept)
    assert err.value.status_code == 406
    assert str(err.value) == f"cannot answer Accept {accept!r}; answers are application/json or application/jsonlines"


@pytest.mark.parametrize("header, expected", [(None, "application/octet-stream"), ("IMAGE/JPEG", "image/jpeg"),
                                              ("application/json; charset=utf-8", "application/json"),
                                              ("image/webp ", "image/webp")])
def test_content_types_are_normalised(header, expected):
    assert pipeline.content_type(header) == expected


def test_an_unsupported_content_type_is_415():
    with pytest.raises(RequestError) as err:
        pipeline.content_type("text/csv")
    assert err.value.status_code == 415 and "unsupported Content-Type 'text/csv'; use one of image/jpeg" in str(err.value)


def test_every_content_type_has_a_decoder():
    assert set(pipeline.CONTENT_TYPES) == set(pipeline.DECODERS)
    raw = png()
    for ctype in pipeline.IMAGE_TYPES:
        assert pipeline.payloads(raw, ctype) == ([raw], pipeline.ONE)


@pytest.mark.parametrize("as_text", [False, True], ids=["bytes", "str"])  # SageMaker's toolkit hands JSON over as str
def test_json_instances_come_back_in_order_as_a_list(as_text):
    images = [png(colour=(i * 40, 0, 0)) for i in range(3)]
    body = json.dumps({"instances": [{"b64": base64.b64encode(b).decode()} for b in images]})
    assert pipeline.payloads(body if as_text else body.encode(), "application/json") == (images, pipeline.Shape.listed(3))


@pytest.mark.parametrize("body, message", [
    (b"", "empty body; send the image bytes, or JSON instances"),
    (b"{nope", "malformed JSON body"),
    (b"\xff\xfe", "malformed JSON body"),
    (b'{"images": []}', 'expected {"instances": [{"b64": "..."}, ...]}'),
    (b'{"instances": [{"png": "AAAA"}]}', 'expected {"instances": [{"b64": "..."}, ...]}'),
    (b'{"instances": []}', '"instances" must be a non-empty list'),
    (b'{"instances": "AAAA"}', '"instances" must be a non-empty list'),
    (b'{"instances": [{"b64": "***"}]}', "malformed base64 in instances"),
    (json.dumps({"instances": [{"b64": "AAAA"}] * 3}).encode(), "3 instances is over the limit of 2"),
])
def test_bad_json_bodies_are_400_with_a_reason(body, message):
    with pytest.raises(RequestError) as err:
        pipeline.payloads(body, "application/json", max_instances=2)
    assert err.value.status_code == 400 and str(err.value).startswith(message)


def test_custom_attributes_override_the_defaults():
    defaults = Options(topk=5, threshold=0.8)
    assert pipeline.custom_attributes(None, defaults) is defaults
    assert pipeline.custom_attributes("topk=2", defaults) == Options(2, 0.8)
    assert pipeline.custom_attributes("threshold=0.25, topk=3; trace=on", defaults) == Options(3, 0.25)
    for bad, message in (("topk=lots", "expected topk=N,threshold=X"), ("topk=0", "custom attribute topk must be 1..1000, got 0"),
                         ("threshold=1.5", "custom attribute threshold must be in [0, 1], got 1.5")):
        with pytest.raises(RequestError, match=message.replace("[", r"\[").replace("]", r"\]")):
            pipeline.custom_attributes(bad, defaults)


@pytest.mark.parametrize("kwargs, message", [({"topk": 0}, "topk must be 1..1000, got 0"),
                                             ({"topk": MAX_TOPK + 1}, "topk must be 1..1000, got 1001"),
                                             ({"threshold": -0.1}, r"threshold must be in \[0, 1\], got -0.1"),
                                             ({"threshold": float("nan")}, r"threshold must be in \[0, 1\], got nan"),
                                             ({"keep": 0.0}, r"keep must be in \(0, 1\], got 0")])
def test_options_are_checked_in_one_place(kwargs, message):
    with pytest.raises(OptionError, match=f"^{message}$") as caught:
        Options(**kwargs)
    assert caught.value.field == next(iter(kwargs))  # callers name the field their own way from this


def test_a_bad_image_names_its_place_in_a_list(model):
    with pytest.raises(RequestError, match=r"^instance 1: image: cannot decode"):
        pipeline.decode(model, b"GIF89a-not-really", where="instance 1")
    with pytest.raises(RequestError, match=r"^photos/a.jpg: cannot decode"):  # a caller that read a file names it
        pipeline.decode(model, b"GIF89a-not-really", name="photos/a.jpg")
    with pytest.raises(RequestError, match=r"^image: 80x60 = 4800 pixels is over the limit of 1000$"):
        pipeline.decode(model, png(), max_pixels=1000)


def test_predict_is_softmax_top_k_and_threshold_per_image(model):
    pixels = [pipeline.decode(model, png(colour=(i * 60, 80, 200 - i * 50))) for i in range(3)]
    assert pixels[0].dtype == torch.uint8 and pixels[0].shape == (3, 64, 64)
    with torch.no_grad():
        logits = model.model(model.preset.normalize(torch.stack(pixels)))
    expected = torch.softmax(logits, dim=1)
    logits, features = pipeline.forward(model, pixels)
    with torch.no_grad():
        assert features.shape == (3, 512) and torch.allclose(model.model.head(features), logits, atol=1e-5)
    assert torch.allclose(pipeline.probabilities(model, logits), expected, atol=1e-6)

    options = [Options(topk=1, threshold=0.0), Options(topk=2, threshold=1.0), Options(topk=50, threshold=0.5)]
    answers = pipeline.predict(model, pixels, options)
    assert [len(a["topk_labels"]) for a in answers] == [1, 2, 3]  # top-50 of 3 classes is all 3
    assert [a["low_confidence"] for a in answers[:2]] == [False, True]
    for row, answer in zip(expected, answers):
        ranked = row.argsort(descending=True).tolist()
        assert answer["topk_indices"] == ranked[: len(answer["topk_indices"])]
        assert answer["topk_labels"] == [model.labels[i] for i in answer["topk_indices"]]
        assert answer["breeds"] == [model.display[i] for i in answer["topk_indices"]]
        assert answer["topk_probs"] == pytest.approx(row[answer["topk_indices"]].tolist(), abs=1e-6)
    assert answers[2]["low_confidence"] == (max(answers[2]["topk_probs"]) < 0.5)
    assert pipeline.predict(model, pixels, Options(topk=2)) == pipeline.predict(model, pixels, [Options(topk=2)] * 3)


def test_answers_render_as_one_object_or_a_list(model):
    answers = [{"topk_labels": ["a"]}, {"topk_labels": ["b"]}]
    assert json.loads(pipeline.render(answers[:1])) == answers[0]
    assert json.loads(pipeline.render(answers, pipeline.Shape.listed(2))) == answers
    # JSON lines: one line per record, whichever way the request came
    assert pipeline.render(answers[:1], media_type="application/jsonlines") == json.dumps(answers[0])
    assert pipeline.render(answers, pipeline.Shape.listed(2), "application/jsonlines") == json.dumps(answers)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_json_lines_are_one_record_a_line_answered_line_by_line():
    a, b, c, d = (png(colour=(i * 50, 0, 0)) for i in range(4))
    body = "\n".join([json.dumps(_b64(a)), "", json.dumps({"b64": _b64(b)}),
                      json.dumps({"instances": [{"b64": _b64(c)}, {"b64": _b64(d)}]})]) + "\n"
    images, shape = pipeline.payloads(body.encode(), "application/jsonlines")
    assert images == [a, b, c, d]
    assert shape == pipeline.Shape((None, None, 2), lines=True, line_numbers=(1, 3, 4))
    assert [shape.where(i) for i in range(4)] == ["line 1", "line 3", "line 4 instance 0", "line 4 instance 1"]
    answers = [{"n": i} for i in range(4)]
    lines = pipeline.render(answers, shape, "application/jsonlines").split("\n")
    assert [json.loads(line) for line in lines] == [{"n": 0}, {"n": 1}, [{"n": 2}, {"n": 3}]]
    assert json.loads(pipeline.render(answers, shape)) == [{"n": 0}, {"n": 1}, [{"n": 2}, {"n": 3}]]  # Accept: JSON
    assert pipeline.negotiate(None) == pipeline.negotiate("*/*") == "application/json"  # as SageMaker's containers
    jsonlines = "application/jsonlines"
    assert pipeline.negotiate(None, jsonlines) == pipeline.negotiate("*/*", jsonlines) == jsonlines
    assert pipeline.negotiate("application/json", jsonlines) == "application/json"
    assert pipeline.negotiate("application/x-ndjson") == "application/jsonlines"


@pytest.mark.parametrize("body, message", [
    (b"\n \n", "no records: every line is blank"),
    (b'"AAAA"\n{oops', "line 2: malformed JSON"),
    (b"\xff", "malformed JSON lines body (not UTF-8)"),
    (b"42", 'line 1: expected a base64 string, {"b64": "..."} or {"instances"'),
    (b'"***"', "line 1: malformed base64"),
    (b'{"instances": []}', 'line 1: "instances" must be a non-empty list'),
    (b"\n".join([json.dumps("AAAA").encode()] * 3), "3 instances is over the limit of 2"),
])
def test_bad_json_lines_are_400_naming_the_line(body, message):
    with pytest.raises(RequestError) as err:
        pipeline.payloads(body, "application/jsonlines", max_instances=2)
    assert err.value.status_code == 400 and str(err.value).startswith(message)


def test_request_errors_carry_their_http_status_the_way_sagemakers_toolkit_reads_it():
    err = RequestError("nope", 415)
    assert (err.status_code, err.message, err.phrase, str(err)) == (415, "nope", "Unsupported Media Type", "nope")
    toolkit = pytest.importorskip("sagemaker_inference.errors")
    assert isinstance(err, toolkit.BaseInferenceToolkitError)  # so SageMaker answers 415, not 500


def test_the_verdict_says_not_a_dog_below_the_score_threshold_and_unsure_below_the_probability(model):
    import dataclasses

    pixels = [pipeline.decode(model, png(colour=(i * 60, 80, 200 - i * 50))) for i in range(3)]
    logits, features = pipeline.forward(model, pixels)
    energy = (torch.logsumexp(logits.double(), dim=1)).tolist()
    # valid scores 0..100 in quantiles; the threshold for keep k is the (1 - k) quantile
    rejection = {"score": "energy", "keep": 0.5, "quantiles": [min(energy) + (max(energy) - min(energy)) * i / 100
                                                                 for i in range(101)]}
    judged = dataclasses.replace(model, rejection=rejection)
    assert pipeline.reject_threshold(judged, 0.5) == pytest.approx((min(energy) + max(energy)) / 2)
    answers = pipeline.predict(judged, pixels, Options.of(judged).override(threshold=0.0))
    for answer, e in zip(answers, energy):
        assert answer["ood_score"] == pytest.approx(e, abs=1e-5)
        assert answer["verdict"] == ("not_a_dog" if e < (min(energy) + max(energy)) / 2 else "breed")
    everyone = pipeline.predict(judged, pixels, Options(threshold=1.0, keep=1.0))  # keep every valid score: none rejected
    assert [a["verdict"] for a in everyone] == ["unsure"] * 3
    assert [a["verdict"] for a in pipeline.predict(model, pixels, Options(threshold=1.0))] == ["unsure"] * 3  # no rejection
    assert all(a["ood_score"] is None for a in pipeline.predict(model, pixels, Options()))
