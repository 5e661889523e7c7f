"""``dogbreed evaluate``: the measures through the inference path, the --ood part, and bad input."""

import json
import logging

import pytest
import torch

from dogbreed.archive import safe_extract_tar
from dogbreed.artifact import load_artifact
from dogbreed.cli import main
from dogbreed.data.synth import synth
from dogbreed.evaluate import _pass, _quality, _selective, run


@pytest.fixture(scope="module")
def unseen(synth_data, tmp_path_factory):
    """The session's data set again (same seed, so the same known breeds) with two breeds in no split."""
    again = synth(tmp_path_factory.mktemp("again") / "d", classes=4, per_class=16, size=64, seed=1, unseen=2,
                  progress=False)
    return again / "unseen"


def test_measures_plots_and_the_ood_part(trained_run, synth_data, unseen, tmp_path, capsys):
    out = tmp_path / "ev"
    assert main(["evaluate", "--model", str(trained_run.artifact), "--data", str(synth_data), "--ood", str(unseen),
                 "--out", str(out)]) == 0
    doc = json.loads((out / "evaluation.json").read_text())
    assert doc["n"] == 8 and 0 <= doc["accuracy"] <= doc["top5"] <= 1
    assert doc["accuracy_ci95"][0] <= doc["accuracy"] <= doc["accuracy_ci95"][1]
    curve = doc["selective"]
    assert curve[-1]["coverage"] == 1.0 and curve[-1]["accuracy"] == pytest.approx(doc["accuracy"])
    assert [c["coverage"] for c in curve] == sorted(c["coverage"] for c in curve)
    assert len(curve) <= doc["n"] and len({json.dumps(c) for c in curve}) == len(curve)
    assert sum(doc["verdicts"].values()) == pytest.approx(1.0)
    ood = doc["ood"]
    assert ood["score"] == "mahalanobis" and ood["out_n"] == 16 and ood["in_n"] == 8 and 0 <= ood["auroc"] <= 1
    for name in ("selective.png", "reliability.png", "scores.png", "top_losses.png", "confused_pairs.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    losses = [row["loss"] for row in doc["top_losses"]]  # the worst images, worst first, each a test image
    assert 0 < len(losses) <= 8 and losses == sorted(losses, reverse=True)
    assert {row["file"] for row in doc["top_losses"]} <= {str(p) for p in (synth_data / "test").glob("*/*.jpg")}
    assert sum(pair["count"] for pair in doc["confused_pairs"]) == round(doc["n"] * (1 - doc["accuracy"]))
    focus = doc["saliency_focus"]  # where the heatmaps of the top breeds are: their share on the objects' boxes
    assert focus["images"] == 8 and 0 <= focus["mean"] <= 1 and focus["method"] == "cam" and focus["region"] == "box"
    printed = capsys.readouterr().out
    assert "test: 8 images; accuracy" in printed and "--ood (16 images): mahalanobis score AUROC" in printed
    assert f"heatmaps put {100 * focus['mean']:.0f}% of their mass in the objects' boxes" in printed


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "nowhere", "does not exist; pass a folder of photos of anything but the model's breeds"),
    (lambda p: p.mkdir() or p, "holds no images; pass a folder of photos"),
    (lambda p: (p.write_text("x"), p)[1], "is a file, not a folder"),
])
def test_a_bad_ood_folder_is_one_line(trained_run, synth_data, tmp_path, capsys, make, message):
    folder = make(tmp_path / "ood")
    assert main(["evaluate", "--model", str(trained_run.artifact), "--data", str(synth_data), "--ood", str(folder),
                 "--out", str(tmp_path / "ev")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --ood ") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "ev").exists()  # nothing written


def test_an_ood_folder_of_unreadable_files_says_what_an_ood_folder_needs(trained_run, synth_data, tmp_path, capsys):
    """Not `data check`'s advice: that checks a data set's train/valid/test, which an --ood folder is not."""
    junk = tmp_path / "junk"
    junk.mkdir()
    for name in ("a.jpg", "b.png"):
        (junk / name).write_text("not an image")
    assert main(["evaluate", "--model", str(trained_run.artifact), "--data", str(synth_data), "--ood", str(junk),
                 "--out", str(tmp_path / "ev")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert [line.split(":")[0] for line in err] == ["warning", "warning", "error"]  # each file named, then why
    assert err[-1].startswith(f"error: no image could be read (2 unreadable); --ood {junk} needs photos of anything "
                              f"but the model's breeds") and "data check" not in err[-1]


def test_a_threshold_or_keep_out_of_range_is_one_line(trained_run, synth_data, tmp_path, capsys):
    for flag, value, message in (("--threshold", "2", "--threshold must be in [0, 1], got 2"),
                                 ("--keep", "0", "--keep must be in (0, 1], got 0")):
        assert main(["evaluate", "--model", str(trained_run.artifact), "--data", str(synth_data), flag, value]) == 1
        assert capsys.readouterr().err.strip() == f"error: {message}"


def test_an_older_artifact_without_calibration_or_rejection_still_evaluates(trained_run, synth_data, unseen, tmp_path,
                                                                            caplog):
    safe_extract_tar(trained_run.artifact, tmp_path / "old")
    meta_path = tmp_path / "old" / "model.json"
    meta = json.loads(meta_path.read_text())
    del meta["calibration"], meta["rejection"]
    meta_path.write_text(json.dumps(meta))
    (tmp_path / "old" / "rejection.pth").unlink()
    with caplog.at_level(logging.WARNING):
        doc = run(str(tmp_path / "old"), str(synth_data), ood=str(unseen), out=str(tmp_path / "ev"), progress=False)
    warnings = " ".join(r.getMessage() for r in caplog.records)
    assert "has no calibration" in warnings and "the top probability stands in" in warnings
    assert doc["ood"]["score"] == "msp" and doc["verdicts"]["not_a_dog"] == 0  # no score: never "not a dog"


def test_an_unreadable_image_is_skipped_and_named_by_its_path(trained_run, samples, tmp_path, caplog):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    with caplog.at_level(logging.WARNING):
        done = _pass(load_artifact(trained_run.artifact), [str(bad), str(samples / "Boxer_02426.jpg")], False, "test")
    assert done["unreadable"] == 1 and done["kept"] == {str(samples / "Boxer_02426.jpg")}
    assert f"skipping unreadable image {bad}: cannot decode" in caplog.text


def test_a_perfect_score_on_60_images_still_has_an_interval_below_100():
    """A percentile bootstrap of 60 successes resamples only successes: 100-100%."""
    targets = torch.arange(60) % 4
    doc = _quality(torch.nn.functional.one_hot(targets, 4).double() * 0.9 + 0.025, targets)
    assert doc["accuracy"] == 1.0
    assert doc["accuracy_ci95"][1] == 1.0 and doc["accuracy_ci95"][0] == pytest.approx(0.9398, abs=1e-3)  # Wilson


def test_the_selective_curve_has_one_point_per_distinct_threshold():
    """Images of equal confidence are answered together: 5 images at 3 confidences are 3 points."""
    confidence = torch.tensor([0.875, 0.625, 0.875, 0.625, 0.75], dtype=torch.float64)
    probs = torch.stack([confidence, 1 - confidence], dim=1)  # every image's answer is class 0
    targets = torch.tensor([0, 0, 1, 1, 1])
    curve = _selective(probs, targets)
    assert curve == [{"coverage": 0.4, "accuracy": 0.5, "min_confidence": 0.875},
                     {"coverage": 0.6, "accuracy": round(1 / 3, 6), "min_confidence": 0.75},
                     {"coverage": 1.0, "accuracy": 0.4, "min_confidence": 0.625}]
