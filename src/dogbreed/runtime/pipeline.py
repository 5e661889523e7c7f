"""The one inference path, from request bytes to answers:

    content type -> payloads -> decoded pixels -> logits + embeddings -> calibrated probabilities,
    "not a dog" score -> answers with a verdict (and, when asked, a heatmap) -> Accept -> JSON

SageMaker's handlers (``inference.py``), ``dogbreed serve`` and ``dogbreed predict`` all call these
functions, so the same request gets the same answer, or the same error, from each. The server adds
batching and threads around them; nothing here knows about HTTP beyond a status code per error.

Shipped verbatim inside every artifact (``code/pipeline.py``): keep it free of dogbreed imports.
"""

from __future__ import annotations

import base64
import binascii
import http
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

try:
    from . import explain as heatmaps
    from . import scores
    from .loading import LoadedModel
    from .network import BACKBONES, POOL
    from .presets import DEFAULT_MAX_PIXELS, ImageDecodeError
except ImportError:  # loaded as a top-level module from an extracted artifact's code/ folder
    import explain as heatmaps  # type: ignore[no-redef]
    import scores  # type: ignore[no-redef]
    from loading import LoadedModel  # type: ignore[no-redef]
    from network import BACKBONES, POOL  # type: ignore[no-redef]
    from presets import DEFAULT_MAX_PIXELS, ImageDecodeError  # type: ignore[no-redef]

try:  # in SageMaker's containers: errors of this type answer with their own status, not 500
    from sagemaker_inference.errors import BaseInferenceToolkitError as _StatusError
except ImportError:
    class _StatusError(Exception):  # the same shape, where the toolkit is not installed
        def __init__(self, status_code: int, message: str, phrase: str):
            self.status_code, self.message, self.phrase = status_code, message, phrase
            super().__init__(message)

JSON_TYPE = "application/json"
JSONLINES_TYPE = "application/jsonlines"  # SageMaker's name for JSON lines: Batch Transform's MultiRecord bodies
JSONLINES_TYPES = (JSONLINES_TYPE, "application/x-ndjson")
IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "application/x-image", "application/octet-stream")
CONTENT_TYPES = (*IMAGE_TYPES, JSON_TYPE, *JSONLINES_TYPES)
ANSWER_TYPES = (JSON_TYPE, JSONLINES_TYPE)
PNG_TYPE = "image/png"  # an answer that is one image's heatmap over it, where the caller asks for it by name
DEFAULT_TOPK = 5
DEFAULT_THRESHOLD = 0.8  # top-1 probability under which an answer is flagged low_confidence
DEFAULT_KEEP = 0.95  # share of known-breed valid images a trained "not a dog" threshold keeps
MAX_TOPK = 1000
EXPLAIN_FORMATS = (None, "png", "grid")
EXPLAIN_VALUES = {"1": "png", "true": "png", "png": "png", "grid": "grid", "0": "", "false": "", "none": ""}
DEFAULT_ACCEPT_ENV = "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT"  # the answer's type where a request names none
DEFAULT_MAX_INSTANCES = 16  # images in one request (JSON instances, JSON lines)


class RequestError(_StatusError):
    """A request the model refuses. ``status_code`` is the HTTP status it earns (400 bad input,
    406 Accept, 415 Content-Type); the message says why, in one line."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(status, message, http.HTTPStatus(status).phrase)

    def __str__(self) -> str:
        return self.message


class OptionError(ValueError):
    """An answer option out of range: ``field`` names it (topk, threshold or keep), ``problem`` says
    what is wrong with it, so each caller names it its own way (``--keep``, ``reject_keep``, the
    ``keep=`` custom attribute)."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field} {problem}")
        self.field, self.problem = field, problem


@dataclass(frozen=True)
class Options:
    """How an answer is shaped: how many breeds; the probability under which it is ``unsure``; the
    share of known-breed images the "not a dog" threshold keeps (None: the artifact's, or no
    rejection at all for an artifact without one); whether it carries a heatmap of the top breed's
    evidence (``explain``: ``"png"``, the overlay as a base64 PNG, or ``"grid"``, the map's numbers),
    or of another breed's (``explain_label``: its class index, from :func:`label_index`)."""

    topk: int = DEFAULT_TOPK
    threshold: float = DEFAULT_THRESHOLD
    keep: float | None = None
    explain: str | None = None
    explain_label: int | None = None

    def __post_init__(self) -> None:
        """The one check of every value."""
        if not 1 <= self.topk <= MAX_TOPK:
            raise OptionError("topk", f"must be 1..{MAX_TOPK}, got {self.topk}")
        if not 0.0 <= self.threshold <= 1.0:  # NaN fails too
            raise OptionError("threshold", f"must be in [0, 1], got {self.threshold:g}")
        if self.keep is not None and not 0.0 < self.keep <= 1.0:
            raise OptionError("keep", f"must be in (0, 1], got {self.keep:g}")
        if self.explain not in EXPLAIN_FORMATS:
            raise OptionError("explain", f"must be 1 (a PNG), grid or 0, got {self.explain!r}")
        if self.explain_label is not None and self.explain_label < 0:
            raise OptionError("explain_label", f"must be a class index, got {self.explain_label}")

    @classmethod
    def of(cls, model: LoadedModel) -> "Options":
        """The artifact's own (model.json), or the defaults."""
        try:
            keep = model.rejection["keep"] if model.rejection else None
            return cls(int(model.meta.get("topk", DEFAULT_TOPK)), float(model.meta.get("threshold", DEFAULT_THRESHOLD)),
                       None if keep is None else float(keep))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"model.json: {exc}") from None

    def override(self, topk: int | None = None, threshold: float | None = None, keep: float | None = None,
                 explain: str | None = None, explain_label: int | None = None) -> "Options":
        """These options with the values that were given (None keeps the current one; ``explain=""``
        turns heatmaps off)."""
        given = {k: v for k, v in (("topk", topk), ("threshold", threshold), ("keep", keep),
                                   ("explain_label", explain_label)) if v is not None}
        if explain is not None:
            given["explain"] = explain or None
        return replace(self, **given) if given else self


def label_index(model: LoadedModel, name: str, what: str = "explain_label") -> int:
    """The class index of a breed named as labels.json names it (``001.Affenpinscher``) or by its
    display name (``Afghan hound`` or ``Afghan_hound``), in any case; else :class:`RequestError`,
    naming the setting (``what``) that gave it."""
    def key(text: str) -> str:
        return text.strip().replace("_", " ").casefold()

    wanted = key(name)
    for i, (label, shown) in enumerate(zip(model.labels, model.display)):
        if wanted in (key(label), key(shown)):
            return i
    raise RequestError(f"{what} {name!r} is not one of this model's {len(model.labels)} breeds; name one as "
                       f"labels.json does (e.g. {model.labels[0]}) or by its display name ({model.display[0]})")


# --- what the client sent -------------------------------------------------------------------------


def content_type(header: str | None) -> str:
    """The request's media type; 415 for one there is no decoder for."""
    ctype = (header or "application/octet-stream").split(";")[0].strip().lower()
    if ctype not in DECODERS:
        raise RequestError(f"unsupported Content-Type {ctype!r}; use one of {', '.join(CONTENT_TYPES)}", 415)
    return ctype


def negotiate(accept: str | None, default: str = JSON_TYPE, *, image: bool = False) -> str:
    """The answer's media type for an Accept header (RFC 9110: ranges, parameters, q=0 refuses):
    JSON or JSON lines, the first the header accepts; ``default`` where it names neither (no header,
    ``*/*``), as SageMaker's containers answer (``SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT``). With
    ``image``, an endpoint's: ``image/png`` named as such (not through ``image/*`` or ``*/*``), the
    heatmap itself (:func:`for_answer`)."""
    if not accept or not accept.strip():
        return default
    for part in accept.split(","):
        kind, *params = (p.strip().lower() for p in part.split(";"))
        q = next((p.split("=", 1)[1] for p in params if p.startswith("q=")), "1")
        try:
            acceptable = float(q) > 0
        except ValueError:
            acceptable = False
        if not acceptable:
            continue
        if kind in ("application/*", "*/*"):
            return default
        if kind in ANSWER_TYPES:
            return kind
        if kind in JSONLINES_TYPES:
            return JSONLINES_TYPE
        if image and kind == PNG_TYPE:
            return PNG_TYPE
    also = f" (or {PNG_TYPE}: one image's heatmap)" if image else ""
    raise RequestError(f"cannot answer Accept {accept!r}; answers are {' or '.join(ANSWER_TYPES)}{also}", 406)


def for_answer(options: Options, media_type: str) -> Options:
    """The options an answer of ``media_type`` needs: an ``image/png`` answer is the heatmap."""
    return options.override(explain="png") if media_type == PNG_TYPE else options


def custom_attributes(header: str | None, defaults: Options, model: LoadedModel | None = None) -> Options:
    """SageMaker's ``X-Amzn-SageMaker-Custom-Attributes: topk=3,threshold=0.5,keep=0.9,explain=1``
    (any may be absent, other keys are ignored) over ``defaults``. ``explain``: 1 (or png) adds the
    heatmap as a PNG, ``grid`` as numbers, 0 none. ``explain_label=BREED`` (one of ``model``'s,
    :func:`label_index`) explains that breed instead of the top one, as a PNG unless ``explain``
    says otherwise."""
    pairs = dict(re.findall(r"(\w+)\s*=\s*([^,;\s]+)", header or ""))
    try:
        topk = int(pairs["topk"]) if "topk" in pairs else None
        threshold = float(pairs["threshold"]) if "threshold" in pairs else None
        keep = float(pairs["keep"]) if "keep" in pairs else None
    except ValueError:
        raise RequestError(f"bad X-Amzn-SageMaker-Custom-Attributes {header!r}; expected topk=N,threshold=X,keep=X") from None
    explain = EXPLAIN_VALUES.get(pairs["explain"].lower(), pairs["explain"]) if "explain" in pairs else None
    label = None
    if "explain_label" in pairs:
        if model is None:
            raise RequestError("explain_label needs the model's labels")
        label = label_index(model, pairs["explain_label"])
        explain = "png" if explain is None else explain
    try:
        return defaults.override(topk, threshold, keep, explain, label)
    except OptionError as exc:
        raise RequestError(f"custom attribute {exc.field} {exc.problem}") from None


@dataclass(frozen=True)
class Shape:
    """How a request carried its images, which is how its answer carries theirs back. ``records``:
    per record, None for one image or the length of a list of them; ``lines``: the records came as
    JSON lines, ``line_numbers`` their lines in the body (1-based, blank lines counted)."""

    records: tuple[int | None, ...] = (None,)
    lines: bool = False
    line_numbers: tuple[int, ...] = ()

    @classmethod
    def listed(cls, n: int) -> "Shape":
        """A JSON list of ``n`` images (``{"instances": [...]}``, several form files)."""
        return cls((n,))

    def where(self, i: int) -> str | None:
        """How an error names image ``i``: None for a lone image, ``instance 2``, ``line 5``, or
        ``line 5 instance 2`` (instances count from 0, lines from 1)."""
        for n, count in enumerate(self.records):
            size = 1 if count is None else count
            if i < size:
                place = f"instance {i}" if count is not None else None
                if not self.lines:
                    return place
                return f"line {self.line_numbers[n]}" + (f" {place}" if place else "")
            i -= size
        raise IndexError(i)

    def group(self, answers: Sequence) -> list:
        """Per record: its answer, or the list of its answers."""
        grouped, start = [], 0
        for count in self.records:
            grouped.append(answers[start] if count is None else list(answers[start:start + count]))
            start += 1 if count is None else count
        if start != len(answers):
            raise ValueError(f"{len(answers)} answers for a request of {start} images")
        return grouped


ONE = Shape()


def record_images(value, where: str | None = None) -> tuple[list[bytes], int | None]:
    """One JSON record's images: a base64 string or ``{"b64": "..."}`` (one image: None), or
    ``{"instances": [{"b64": "..."}, ...]}`` (a list: its length). ``where`` prefixes an error."""
    prefix = f"{where}: " if where else ""
    try:
        if isinstance(value, str):
            return [base64.b64decode(value, validate=True)], None
        if isinstance(value, dict) and "b64" in value:
            return [base64.b64decode(value["b64"], validate=True)], None
        instances = value["instances"]
        if not isinstance(instances, list) or not instances:
            raise RequestError(prefix + '"instances" must be a non-empty list of {"b64": "..."} objects')
        return [base64.b64decode(item["b64"], validate=True) for item in instances], len(instances)
    except RequestError:
        raise
    except (KeyError, TypeError):
        forms = '{"instances": [{"b64": "..."}, ...]}'
        raise RequestError(f'{prefix}expected a base64 string, {{"b64": "..."}} or {forms}' if where else
                           f"expected {forms}") from None
    except (binascii.Error, ValueError):
        raise RequestError(prefix + "malformed base64" + ("" if where else " in instances")) from None


def _over(count: int, max_instances: int) -> None:
    if count > max_instances:
        raise RequestError(f"{count} instances is over the limit of {max_instances}")


def _one_image(body: bytes | str, max_instances: int) -> tuple[list[bytes], Shape]:
    return [bytes(body)], ONE


def _instances(body: bytes | str, max_instances: int) -> tuple[list[bytes], Shape]:
    """``{"instances": [{"b64": "..."}, ...]}`` -> the images' bytes, in order."""
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RequestError("malformed JSON body") from None
    if not isinstance(doc, dict) or "instances" not in doc:
        raise RequestError('expected {"instances": [{"b64": "..."}, ...]}')
    if isinstance(doc["instances"], list):
        _over(len(doc["instances"]), max_instances)
    images, count = record_images({"instances": doc["instances"]})
    return images, Shape.listed(count)


def _json_lines(body: bytes | str, max_instances: int) -> tuple[list[bytes], Shape]:
    """JSON lines (Batch Transform's MultiRecord bodies): each line one record (see
    :func:`record_images`), answered by one line, in order; blank lines are skipped."""
    try:
        text = body if isinstance(body, str) else bytes(body).decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError("malformed JSON lines body (not UTF-8)") from None
    images, records, numbers = [], [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            raise RequestError(f"line {number}: malformed JSON") from None
        found, count = record_images(value, f"line {number}")
        images += found
        _over(len(images), max_instances)
        records.append(count)
        numbers.append(number)
    if not records:
        raise RequestError("no records: every line is blank")
    return images, Shape(tuple(records), True, tuple(numbers))


# Content type -> how its body becomes a list of encoded images, and the shape the answer takes.
# To accept another content type: one entry here.
DECODERS: dict[str, Callable[[bytes | str, int], tuple[list[bytes], Shape]]] = {
    **dict.fromkeys(IMAGE_TYPES, _one_image),
    JSON_TYPE: _instances,
    **dict.fromkeys(JSONLINES_TYPES, _json_lines),
}


def payloads(body: bytes | str, ctype: str, max_instances: int = DEFAULT_MAX_INSTANCES) -> tuple[list[bytes], Shape]:
    """The encoded images in a request body of media type ``ctype`` (from :func:`content_type`),
    and the shape of the request, which the answer takes (:func:`render`)."""
    if not body:
        raise RequestError("empty body; send the image bytes, or JSON instances")
    return DECODERS[ctype](body, max_instances)


def decode(model: LoadedModel, data: bytes, *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
           where: str | None = None, name: str | None = None) -> torch.Tensor:
    """Encoded image to the resized, cropped uint8 pixels :func:`predict` takes (PIL work only:
    it runs on any thread). When it fails, ``where`` names the image's place in the request
    (:meth:`Shape.where`) and ``name`` the image (default: "image"; a file's path, say)."""
    try:
        return model.preset.load_pixels(data, max_pixels=max_pixels, name=name)
    except ImageDecodeError as exc:
        raise RequestError(f"{where}: {exc}" if where else str(exc)) from None


# --- the model --------------------------------------------------------------------------------------


@torch.inference_mode()
def forward(model: LoadedModel, pixels: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """uint8 pixels, one tensor per image, to (logits, penultimate embeddings) in fp32 on the CPU,
    from one pass. The embeddings are None from an export made before they were one of its outputs."""
    batch = torch.stack(list(pixels)).to(model.device)
    images = model.preset.normalize(batch).contiguous(memory_format=torch.channels_last)
    both = getattr(model.model, "logits_and_features", None)
    logits, features = both(images) if both is not None else (model.model(images), None)
    return logits.float().cpu(), None if features is None else features.float().cpu()


@torch.inference_mode()
def forward_maps(model: LoadedModel, pixels: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None,
                                                                             torch.Tensor | None]:
    """:func:`forward` and, from the same pass, each class's activation map (batch x classes x h x
    w, fp32) where the network has them (``class_maps``), else None (an export made before them, or
    a backbone whose head does not allow them: ``explain.py``)."""
    both_and_maps = getattr(model.model, "class_maps", None)
    if both_and_maps is None:
        return (*forward(model, pixels), None)
    batch = torch.stack(list(pixels)).to(model.device)
    images = model.preset.normalize(batch).contiguous(memory_format=torch.channels_last)
    logits, features, maps = both_and_maps(images)
    return logits.float().cpu(), features.float().cpu(), maps.float().cpu()


def explanation(model: LoadedModel, pixels: torch.Tensor, raw: torch.Tensor | None, index: int, how: str,
                method: str | None = heatmaps.CAM, error: str | None = None) -> dict:
    """The heatmap keys one answer gains: the ``raw`` map (h x w) of class ``index`` over the
    image's ``pixels`` as a PNG overlay (``how`` "png", base64) or a grid of numbers ("grid"), the
    ``method`` that made it and the label it explains; where there is no map, ``heatmap`` is None
    and ``heatmap_error`` says why (``error``)."""
    out = {"heatmap": None, "heatmap_method": None, "heatmap_label": model.labels[index]}
    if raw is None:
        out["heatmap_error"] = error or "no heatmap"
        return out
    heat = heatmaps.normalized(raw)
    out["heatmap"] = heatmaps.grid(heat) if how == "grid" else heatmaps.png_base64(heatmaps.overlay(pixels, heat))
    out["heatmap_method"] = method
    return out


def no_map_error(model: LoadedModel) -> str:
    """Why an answer has no heatmap, and what to do."""
    name = model.meta.get("backbone")
    if name in BACKBONES and not BACKBONES[name].cam:
        if model.explainer is None:
            return (f"{name} has no exact class activation map (its head normalises after pooling), and Grad-CAM "
                    f"needs the network's weights (model.pth), which this model folder lacks")
        return f"Grad-CAM of {name} needs Captum: pip install 'dogbreed[explain]'"
    return ("this export was made before class activation maps were one of its outputs: export the model again "
            "(dogbreed export), or serve its model.pth")


def explained_maps(model: LoadedModel, pixels: Sequence[torch.Tensor], maps: torch.Tensor | None,
                   wanted: dict[int, int]) -> tuple[dict[int, torch.Tensor], str | None]:
    """The raw map (h x w) of each image ``wanted`` maps to a class (image index to class index),
    and the method that made them: the class activation maps of the forward pass (``maps``), else
    Grad-CAM of the last stage on the network as trained (``model.explainer``: a backbone whose
    head normalises after pooling), else none ({}, None)."""
    if maps is not None:
        return {i: maps[i, k] for i, k in wanted.items()}, heatmaps.CAM
    if model.explainer is None or not wanted:
        return {}, None
    images = model.preset.normalize(torch.stack([pixels[i] for i in wanted]).to(model.device))
    try:
        cams = heatmaps.gradcam(model.explainer, model.explainer.body.get_submodule(POOL),
                                images.contiguous(memory_format=torch.channels_last), list(wanted.values()))
    except ImportError:  # Captum is the explain extra's
        return {}, None
    return dict(zip(wanted, cams)), heatmaps.GRADCAM


def probabilities(model: LoadedModel, logits: torch.Tensor) -> torch.Tensor:
    """Calibrated softmax probabilities: the logits divided by the artifact's temperature."""
    return torch.softmax(logits / model.temperature, dim=1)


def ood_scores(model: LoadedModel, logits: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor | None:
    """The artifact's "not a dog" score per image (higher: more like its breeds), or None where it
    has none (or the export it runs gives no embeddings for a score that reads them)."""
    rejection = model.rejection
    if rejection is None or (rejection["score"] in scores.NEEDS_FEATURES and features is None):
        return None
    return scores.score(rejection["score"], logits, features, model.temperature, rejection.get("tensors"))


def reject_threshold(model: LoadedModel, keep: float) -> float:
    """The score under which an answer is ``not_a_dog``: the one that ``keep`` of the validation
    images reached (model.json holds the validation scores' quantiles, so a request may ask for
    another share)."""
    return scores.threshold_at(model.rejection["quantiles"], keep)


def answer(model: LoadedModel, probs: torch.Tensor, options: Options, ood: float | None = None) -> dict:
    """One image's answer, with the field names the original project's clients parse, then the
    verdict: ``not_a_dog`` when the score is under the threshold, ``unsure`` when the top probability
    is under ``options.threshold``, else ``breed``."""
    values, indices = probs.topk(min(options.topk, probs.numel()))
    idx = indices.tolist()
    top = values[0].item()
    if ood is not None and options.keep is not None and ood < reject_threshold(model, options.keep):
        verdict = "not_a_dog"
    else:
        verdict = "unsure" if top < options.threshold else "breed"
    return {
        "topk_labels": [model.labels[i] for i in idx],
        "topk_indices": idx,
        "topk_probs": [round(v, 6) for v in values.tolist()],
        "breeds": [model.display[i] for i in idx],
        "low_confidence": bool(top < options.threshold),
        "verdict": verdict,
        "ood_score": None if ood is None else round(ood, 6),
    }


def predict(model: LoadedModel, pixels: Sequence[torch.Tensor], options: Options | Sequence[Options]) -> list[dict]:
    """One answer per image: normalise, forward, calibrated softmax, top-k, the verdict; with
    ``explain``, after every other key, the heatmap (:func:`explanation`) of the top breed, or of
    the breed ``explain_label`` names. ``options``
    is one for every image, or one per image (a server batch mixes requests)."""
    each = [options] * len(pixels) if isinstance(options, Options) else list(options)
    maps = None
    if any(opts.explain for opts in each):
        logits, features, maps = forward_maps(model, pixels)
    else:
        logits, features = forward(model, pixels)
    ood = ood_scores(model, logits, features)
    answers = [answer(model, row, opts, None if ood is None else float(ood[i]))
               for i, (row, opts) in enumerate(zip(probabilities(model, logits), each, strict=True))]
    wanted = {i: done["topk_indices"][0] if opts.explain_label is None else opts.explain_label
              for i, (done, opts) in enumerate(zip(answers, each)) if opts.explain}
    raws, method = explained_maps(model, pixels, maps, wanted)
    error = None if method else no_map_error(model)
    for i, index in wanted.items():
        answers[i].update(explanation(model, pixels[i], raws.get(i), index, each[i].explain, method, error))
    return answers


def render(answers: list[dict], shape: Shape = ONE, media_type: str = JSON_TYPE) -> str | bytes:
    """The answers in the request's shape, as ``media_type`` (from :func:`negotiate`): JSON (one
    object, a list, or for JSON lines a list of the records' answers), or JSON lines (one line per
    record, the lines joined by newlines: Batch Transform's AssembleWith Line ends each body); for
    ``image/png`` (one image, asked with :func:`for_answer`'s options), the heatmap's PNG itself."""
    if media_type == PNG_TYPE:
        if len(answers) != 1 or shape.lines:
            raise RequestError(f"Accept {PNG_TYPE} answers one image with its heatmap; send one image, or accept "
                               f"{JSON_TYPE} (the custom attribute explain=1 adds each image's heatmap)", 406)
        if answers[0].get("heatmap") is None:
            raise RequestError(f"cannot answer {PNG_TYPE}: {answers[0].get('heatmap_error', 'no heatmap')}", 406)
        return base64.b64decode(answers[0]["heatmap"])
    return dumps(shape.group(answers), shape, media_type)


def dumps(records: list, shape: Shape, media_type: str) -> str:
    """Per-record values (:meth:`Shape.group`'s, or what a transform job's filters made of them)
    as :func:`render` lays them out."""
    if media_type == JSONLINES_TYPE:
        return "\n".join(json.dumps(item) for item in records)
    return json.dumps(records if shape.lines else records[0])
