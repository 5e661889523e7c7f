"""Where a model looked: the focus figure, the boxes a synthetic data set records, and the heatmaps'
faithfulness: a model trained on the objects looks at them, one trained where the backgrounds
give the class away does not, and its run says so."""

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from dogbreed import config, saliency
from dogbreed.artifact import load_artifact
from dogbreed.data.synth import BOXES, synth
from dogbreed.run import train
from dogbreed.runtime import explain as heatmaps
from dogbreed.runtime.presets import EvalPreset

from .conftest import TINY


@pytest.mark.parametrize("width, height", [(400, 300), (300, 400), (256, 256), (640, 200)])
def test_a_box_lands_where_the_view_puts_its_pixels(width, height):
    preset = EvalPreset(224, 256)
    box = (0.3, 0.2, 0.65, 0.9)
    img = Image.new("RGB", (width, height))
    ImageDraw.Draw(img).rectangle([round(box[0] * width), round(box[1] * height), round(box[2] * width) - 1,
                                   round(box[3] * height) - 1], fill=(255, 255, 255))
    ys, xs = torch.nonzero(preset.pixels(img)[0] > 127, as_tuple=True)
    seen = (xs.min() / 224, ys.min() / 224, (xs.max() + 1) / 224, (ys.max() + 1) / 224)
    assert preset.view_box(box, width, height) == pytest.approx([float(v) for v in seen], abs=2 / 224)


def test_focus_reads_the_share_against_an_even_spread():
    even = saliency.focus([(0.25, 0.25)] * 4, "centre")
    assert even["lift"] == 1.0 and even["low"] and even["images"] == 4
    on = saliency.focus([(0.8, 0.4), (0.6, 0.4)], "box")
    assert on["mean"] == 0.7 and on["spread_evenly"] == 0.4 and on["lift"] == 1.75 and not on["low"]
    assert saliency.focus([], "box") is None
    assert "objects' boxes (40% if spread evenly; lift 1.75" in saliency.summary(on)
    assert "may have learned backgrounds" in saliency.summary(even) and "centre quarter" in saliency.summary(even)
    heat = np.zeros((4, 4), np.float32)
    heat[0, 0] = 1.0
    assert heatmaps.box_share(heat, (0, 0, 0.5, 0.5)) > 0.9 and heatmaps.box_share(heat, (0.5, 0.5, 1, 1)) < 0.05


def test_synth_records_every_objects_box(tmp_path):
    data = synth(tmp_path / "d", classes=3, per_class=6, size=48, progress=False, background="cue")
    boxes = json.loads((data / BOXES).read_text())
    assert sorted(boxes) == sorted(p.relative_to(data).as_posix() for p in data.glob("*/*/*.jpg"))
    for left, top, right, bottom in boxes.values():
        assert 0 <= left < right <= 1 and 0 <= top < bottom <= 1 and (right - left) * (bottom - top) > 0.1


def _trained(data, out):
    cfg = config.resolve(overrides={**TINY, "data": str(data), "out": str(out), "image_size": 160, "epochs": 8,
                                    "train_layers": "all", "lr": 0.003, "batch_size": 29, "seed": 3, "profile": False})
    return train(cfg, progress=False)


def test_heatmaps_find_the_objects_and_flag_a_model_that_learned_backgrounds(tmp_path, caplog):
    """Issue 26's faithfulness check, on a resnet18 trained from scratch at 160 px (5 x 5 maps):
    where the objects set the class apart, the map's peak falls in the object's box on at least
    90% of the images it never trained on; where the backgrounds do (``--background cue``), the
    maps sit elsewhere, and the run warns."""
    plain = synth(tmp_path / "plain", classes=4, per_class=40, size=160, seed=3, progress=False)
    cue = synth(tmp_path / "cue", classes=4, per_class=40, size=160, seed=3, progress=False, background="cue")
    with caplog.at_level(logging.INFO, logger="dogbreed"):
        on_objects = _trained(plain, tmp_path / "runs")
        assert not any("may have learned backgrounds" in r.getMessage() for r in caplog.records)
        caplog.clear()
        on_backgrounds = _trained(cue, tmp_path / "runs")
    warned = [r for r in caplog.records if "may have learned backgrounds" in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING

    model = load_artifact(on_objects.artifact)
    regions = saliency.Regions.of(plain)
    unseen = sorted(str(p) for split in ("valid", "test") for p in (plain / split).glob("*/*.jpg"))
    looked, method = saliency.look(model, unseen, regions)
    assert method == "cam" and len(looked) == len(unseen) == 48 and next(iter(looked.values())).heat.shape == (5, 5)
    inside = 0
    for path, item in looked.items():
        (x, y), (left, top, right, bottom) = heatmaps.peak(item.heat), regions.box(model, path)
        inside += left <= x <= right and top <= y <= bottom
    assert inside >= 0.9 * len(looked), f"the peak is in the box on {inside} of {len(looked)} images"

    focused = json.loads((on_objects.run_dir / "results.json").read_text())["saliency_focus"]
    elsewhere = json.loads((on_backgrounds.run_dir / "results.json").read_text())["saliency_focus"]
    assert focused["region"] == elsewhere["region"] == "box"
    assert not focused["low"] and focused["lift"] > saliency.LOW_LIFT
    assert elsewhere["low"] and elsewhere["lift"] < min(1.0, focused["lift"] - 0.3)
