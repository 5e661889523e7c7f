"""Heatmaps through the one inference path: class activation maps from every backend, checked
against Captum's Grad-CAM on the network as trained; their place in the answer; the figure
``predict --explain`` writes."""

import base64
import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from dogbreed.archive import safe_extract_tar
from dogbreed.artifact import model_meta, write_artifact
from dogbreed.cli import main
from dogbreed.data.layout import Labels
from dogbreed.export import export
from dogbreed.model import build_model, eval_preset
from dogbreed.onnx_export import onnx_export
from dogbreed.runtime import explain as heatmaps
from dogbreed.runtime import pipeline
from dogbreed.runtime.loading import load_model_dir
from dogbreed.runtime.pipeline import Options, RequestError


def random_artifact(folder, backbone: str, labels: list[str]):
    torch.manual_seed(0)
    model, _ = build_model(backbone, len(labels), pretrained=False)
    meta = model_meta(backbone, Labels(labels), eval_preset(backbone))
    return write_artifact(folder / f"{backbone}.tar.gz", model.eval(), Labels(labels), meta)


def valid_pixels(loaded, data, n: int = 4) -> list[torch.Tensor]:
    files = sorted((data / "valid").rglob("*.jpg"))[:n]
    return [pipeline.decode(loaded, f.read_bytes()) for f in files]


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.corrcoef(a.detach().flatten().double().numpy(), b.detach().flatten().double().numpy())[0, 1])


def test_cam_from_every_backend_agrees_with_captums_gradcam_on_the_network_as_trained(synth_data, tmp_path):
    from captum.attr import LayerGradCam

    labels = sorted(p.name for p in (synth_data / "train").iterdir())
    artifact = random_artifact(tmp_path, "resnet50", labels)
    exported = export(artifact, "torchscript,onnx,int8", tmp_path / "all.tar.gz", data=synth_data, progress=False)
    safe_extract_tar(exported, tmp_path / "m")
    trained = load_model_dir(str(tmp_path / "m"), "cpu", "eager")  # unfused: what gradients run through
    pixels = valid_pixels(trained, synth_data)
    images = trained.preset.normalize(torch.stack(pixels))
    top = trained.model(images).argmax(1)
    gradcam = LayerGradCam(trained.model, trained.model.body.get_submodule("avgpool"))
    reference = gradcam.attribute(images, target=top, attribute_to_layer_input=True, relu_attributions=False)[:, 0]
    assert reference.shape == (4, 7, 7)
    for backend, least in (("eager", 0.99), ("torchscript", 0.99), ("onnx", 0.99), ("bf16", 0.95), ("int8", 0.95)):
        loaded = load_model_dir(str(tmp_path / "m"), "cpu", backend, fused=True)
        logits, _, maps = pipeline.forward_maps(loaded, pixels)
        assert maps is not None and maps.shape == (4, len(labels), 7, 7), backend
        for i in range(4):  # the raw maps, negative evidence included: Grad-CAM's equals CAM / 49
            r = correlation(maps[i, top[i]], reference[i])
            assert r >= least, f"{backend} image {i}: correlation {r:.4f} < {least}"
        if backend in ("eager", "torchscript", "onnx"):  # fp32: a breed's logit is its map's mean plus the bias
            bias = trained.model.head.bias.detach()
            assert torch.allclose(maps.mean((2, 3)) + bias, logits, atol=1e-3, rtol=1e-4), backend


def test_the_answer_keeps_its_keys_first_and_adds_the_heatmap_as_png_or_grid(trained_run, samples):
    from dogbreed.artifact import load_artifact

    loaded = load_artifact(trained_run.artifact, backend="auto", fused=True)
    photo = pipeline.decode(loaded, (samples / "Boxer_02426.jpg").read_bytes())
    plain, = pipeline.predict(loaded, [photo], Options.of(loaded))
    png, = pipeline.predict(loaded, [photo], Options.of(loaded).override(explain="png"))
    grid, = pipeline.predict(loaded, [photo], Options.of(loaded).override(explain="grid"))
    for answer in (png, grid):
        assert list(answer)[:len(plain)] == list(plain)
        assert {k: answer[k] for k in plain} == plain  # the same pass: the same numbers
        assert answer["heatmap_method"] == "cam" and answer["heatmap_label"] == plain["topk_labels"][0]
    image = Image.open(io.BytesIO(base64.b64decode(png["heatmap"])))
    assert image.format == "PNG" and image.size == (photo.shape[2], photo.shape[1])
    cells = np.array(grid["heatmap"])
    assert cells.ndim == 2 and cells.max() == 1.0 and cells.min() >= 0.0  # normalised: the hottest cell is 1
    other = plain["topk_indices"][-1]  # explain_label: another breed's map from the same pass
    asked, = pipeline.predict(loaded, [photo], Options.of(loaded).override(explain="grid", explain_label=other))
    assert {k: asked[k] for k in plain} == plain and asked["heatmap_label"] == loaded.labels[other]
    _, _, maps = pipeline.forward_maps(loaded, [photo])
    assert np.allclose(asked["heatmap"], heatmaps.normalized(maps[0, other]), atol=1e-3)


def test_explain_in_custom_attributes():
    defaults = Options()
    assert pipeline.custom_attributes("explain=1", defaults).explain == "png"
    assert pipeline.custom_attributes("topk=3,explain=grid", defaults).explain == "grid"
    assert pipeline.custom_attributes("explain=0", Options(explain="png")).explain is None
    with pytest.raises(RequestError, match="custom attribute explain must be 1 \\(a PNG\\), grid or 0, got 'maybe'"):
        pipeline.custom_attributes("explain=maybe", defaults)
    model = SimpleNamespace(labels=["001.Affenpinscher", "002.Afghan_hound"], display=["Affenpinscher", "Afghan hound"])
    for named in ("002.Afghan_hound", "afghan_hound", "Afghan_Hound"):  # as labels.json names it, or its display name
        asked = pipeline.custom_attributes(f"explain_label={named}", defaults, model)
        assert asked.explain_label == 1 and asked.explain == "png"
    assert pipeline.custom_attributes("explain=grid,explain_label=001.Affenpinscher", defaults, model) == Options(
        explain="grid", explain_label=0)
    with pytest.raises(RequestError, match="explain_label 'Poodle' is not one of this model's 2 breeds; name one as "
                                           "labels.json does \\(e.g. 001.Affenpinscher\\)"):
        pipeline.custom_attributes("explain_label=Poodle", defaults, model)


def test_a_network_without_maps_answers_and_says_why_it_has_no_heatmap(synth_data, tmp_path):
    labels = sorted(p.name for p in (synth_data / "train").iterdir())
    safe_extract_tar(random_artifact(tmp_path, "resnet18", labels), tmp_path / "m")
    eager = load_model_dir(str(tmp_path / "m"), "cpu", "eager")
    onnx_export(_TwoOutputs(eager.model), torch.zeros(2, 3, 224, 224), str(tmp_path / "m" / "model.onnx"),
                ["logits", "features"])  # an export from before maps were one of its outputs
    old = load_model_dir(str(tmp_path / "m"), "cpu", "onnx")
    pixels = valid_pixels(old, synth_data, 2)
    answers = pipeline.predict(old, pixels, Options(explain="png"))
    plain = pipeline.predict(eager, pixels, Options())
    for answer, reference in zip(answers, plain):
        assert answer["topk_labels"] == reference["topk_labels"]
        assert answer["heatmap"] is None and "export the model again" in answer["heatmap_error"]
    safe_extract_tar(random_artifact(tmp_path, "convnext_tiny", labels), tmp_path / "c")
    # ConvNeXt normalises after pooling: no exact CAM, so Grad-CAM (Captum) on the network as trained,
    # named in the answer, on the fused network served as on the network itself
    as_trained = load_model_dir(str(tmp_path / "c"), "cpu", "eager")
    convnext = load_model_dir(str(tmp_path / "c"), "cpu", "eager", fused=True)
    assert as_trained.explainer is as_trained.model and convnext.explainer is not convnext.model
    from captum.attr import LayerGradCam

    images = as_trained.preset.normalize(torch.stack(pixels))
    for loaded in (as_trained, convnext):
        answers = pipeline.predict(loaded, pixels, Options(explain="grid", explain_label=1))
        with torch.enable_grad():
            reference = LayerGradCam(as_trained.model, as_trained.model.body.avgpool).attribute(
                images, target=1, attribute_to_layer_input=True, relu_attributions=False)[:, 0]
        for answer, expected in zip(answers, reference):
            assert answer["heatmap_method"] == "gradcam" and answer["heatmap_label"] == labels[1]
            assert np.allclose(answer["heatmap"], heatmaps.normalized(expected.detach()), atol=2e-3)


class _TwoOutputs(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.logits_and_features(x)


def test_helpers_normalise_colour_and_measure_where_the_mass_is():
    raw = torch.tensor([[-1.0, 0.0], [2.0, 4.0]])
    heat = heatmaps.normalized(raw)
    assert heat.tolist() == [[0.0, 0.0], [0.5, 1.0]]
    assert heatmaps.normalized(-torch.ones(3, 3)).max() == 0.0  # no positive evidence: no heat
    assert heatmaps.peak(heat) == (0.75, 0.75)
    centre = np.zeros((8, 8), dtype=np.float32)
    centre[3:5, 3:5] = 1.0
    assert heatmaps.box_share(centre) > 0.9  # the centre, as bilinear upsampling spreads it
    assert heatmaps.box_share(centre, (0.0, 0.0, 0.25, 0.25)) == 0.0
    assert heatmaps.box_share(np.ones((7, 7), dtype=np.float32)) == pytest.approx(0.25)  # spread evenly
    photo = torch.full((3, 32, 32), 200, dtype=torch.uint8)
    over = np.asarray(heatmaps.overlay(photo, np.zeros((7, 7), dtype=np.float32)))
    assert (over == 200).all()  # where there is no evidence the photo is untouched


def test_predict_explain_writes_a_figure_beside_the_photo_or_in_out(trained_run, samples, tmp_path, capsys):
    photo = tmp_path / "dog.jpg"
    photo.write_bytes((samples / "Boxer_02426.jpg").read_bytes())
    assert main(["predict", "--model", str(trained_run.artifact), str(photo), "--explain"]) == 0
    figure = tmp_path / "dog.jpg.explain.png"
    assert f"heatmap: {figure}" in capsys.readouterr().out
    assert Image.open(figure).format == "PNG"
    assert main(["predict", "--model", str(trained_run.artifact), str(photo), "--explain", "--json",
                 "--out", str(tmp_path / "figs")]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["explanation"] == str(tmp_path / "figs" / "dog.jpg.explain.png") and "heatmap" not in line
    assert line["heatmap_method"] == "cam"
    assert main(["predict", "--model", str(trained_run.artifact), str(photo), "--out", str(tmp_path)]) == 1
    assert "--out is where --explain writes its figures" in capsys.readouterr().err
    # two photos of the same name from different folders: one figure each in --out
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    for folder in ("a", "b"):
        (tmp_path / folder / "dog.jpg").write_bytes(photo.read_bytes())
    assert main(["predict", "--model", str(trained_run.artifact), str(tmp_path / "a" / "dog.jpg"),
                 str(tmp_path / "b" / "dog.jpg"), "--explain", "--json", "--out", str(tmp_path / "both")]) == 0
    figures = [json.loads(line)["explanation"] for line in capsys.readouterr().out.splitlines()]
    assert figures == [str(tmp_path / "both" / "a-dog.jpg.explain.png"), str(tmp_path / "both" / "b-dog.jpg.explain.png")]
    assert all(Path(f).is_file() for f in figures)
    # --explain-breed: another breed's map (implies --explain); a breed the model does not know is one line
    assert main(["predict", "--model", str(trained_run.artifact), str(photo), "--explain-breed", "akita", "--json",
                 "--out", str(tmp_path / "akita")]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["heatmap_label"] == "004.Akita" and Path(line["explanation"]).is_file()
    assert main(["predict", "--model", str(trained_run.artifact), str(photo), "--explain-breed", "Poodle"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --explain-breed 'Poodle' is not one of this model's 4 breeds") and "\n" not in err


def test_explain_by_kernelshap_over_superpixels_beside_cam(synth_data, tmp_path, capsys):
    """Clarify's way: KernelSHAP over SLIC superpixels, model-agnostic; its map beside the CAM and
    their correlation. A random resnet18 at its 224 px view keeps it quick."""
    labels = sorted(p.name for p in (synth_data / "train").iterdir())
    artifact = random_artifact(tmp_path, "resnet18", labels)
    photos = sorted((synth_data / "test").rglob("*.jpg"))[:2]
    out = tmp_path / "why"
    assert main(["explain", "--model", str(artifact), *map(str, photos), "--method", "shap", "--samples", "64",
                 "--out", str(out)]) == 0
    lines = [json.loads(line) for line in (out / "explained.jsonl").read_text().splitlines()]
    assert [line["file"] for line in lines] == list(map(str, photos))
    for line in lines:
        assert line["method"] == "shap" and 2 <= line["superpixels"] <= 40  # SLIC's 20, give or take
        assert Image.open(line["figure"]).format == "PNG" and line["figure"].endswith(".shap.png")
        assert line["correlation_with_cam"] is None or -1 <= line["correlation_with_cam"] <= 1
    printed = capsys.readouterr().out
    assert "2 photo(s) explained by shap" in printed
    assert main(["explain", "--model", str(artifact), str(photos[0]), "--method", "cam", "--out", str(out)]) == 0
    (cam,) = [json.loads(line) for line in (out / "explained.jsonl").read_text().splitlines()]
    assert cam["figure"].endswith(".cam.png") and "correlation_with_cam" not in cam
    assert main(["explain", "--model", str(artifact), str(photos[0]), "--samples", "10"]) == 1
    assert "--samples must be at least twice --segments (40), got 10" in capsys.readouterr().err


def test_superpixels_follow_slic_and_kernelshap_finds_the_one_that_decides(synth_data, tmp_path):
    """On a model whose answer depends on one region alone, KernelSHAP gives that region's
    superpixels the value and the others next to none."""
    from dogbreed.explain import shap_map, superpixels

    labels = sorted(p.name for p in (synth_data / "train").iterdir())
    safe_extract_tar(random_artifact(tmp_path, "resnet18", labels), tmp_path / "m")
    loaded = load_model_dir(str(tmp_path / "m"), "cpu", "eager")
    pixels = torch.zeros(3, 224, 224, dtype=torch.uint8)
    pixels[:, :, 112:] = 255  # two flat halves: SLIC cuts along the edge
    segments = superpixels(pixels, 20, 5.0)
    assert segments.shape == (224, 224) and 2 <= int(segments.max()) + 1 <= 40
    left = set(segments[:, :112].unique().tolist())
    assert left.isdisjoint(segments[:, 112:].unique().tolist())  # no superpixel crosses the edge

    class RightHalf(torch.nn.Module):  # class 0's logit: the right half's brightness; class 1's: none
        def forward(self, x):
            right = x[:, :, :, 112:].mean((1, 2, 3))
            return torch.stack([4 * right, torch.zeros_like(right)], 1)

    loaded.model, loaded.temperature = RightHalf(), 1.0
    torch.manual_seed(0)  # the coalitions KernelSHAP samples
    values = shap_map(loaded, pixels, 0, segments, samples=256)
    right, left = values[:, 112:], values[:, :112]
    assert right.min() > 0 and right.mean() > 3 * np.abs(left).mean()  # sampled: the others near 0, not at it
