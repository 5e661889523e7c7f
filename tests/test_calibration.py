"""Temperature scaling and the measures of calibration, on logits whose right temperature is known."""

import math

import pytest
import torch

from dogbreed import calibration, plots


def overconfident(n: int, scale: float, seed: int):
    """Targets drawn from softmax(base): base is calibrated by construction, base * scale is not,
    and the temperature that undoes it is ``scale``."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 10, generator=g) * 1.5
    targets = torch.multinomial(torch.softmax(base, dim=1), 1, generator=g).squeeze(1)
    return base * scale, targets


def test_the_fitted_temperature_undoes_a_known_overconfidence():
    logits, targets = overconfident(20_000, 3.0, seed=0)
    assert calibration.fit_temperature(logits, targets) == pytest.approx(3.0, rel=0.05)
    calibrated, targets = overconfident(20_000, 1.0, seed=1)
    assert calibration.fit_temperature(calibrated, targets) == pytest.approx(1.0, rel=0.05)


def test_ece_by_hand():
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    targets = torch.tensor([0, 1, 0, 0])
    # bin of 0.9: confidence 0.9, accuracy 0.5; bin of 0.6: confidence 0.6, accuracy 1.0; half the images each
    assert calibration.ece(probs, targets) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
    assert calibration.ece(torch.tensor([[1.0, 0.0]]), torch.tensor([0])) == 0.0


def test_the_report_fits_on_valid_and_judges_on_test():
    valid_logits, valid_targets = overconfident(3000, 2.5, seed=2)
    test_logits, test_targets = overconfident(3000, 2.5, seed=3)
    doc = calibration.report(valid_logits, valid_targets, test_logits, test_targets)
    assert doc["temperature"] == pytest.approx(2.5, rel=0.1)
    assert doc["test_nll_after"] < doc["test_nll_before"] and doc["test_ece_after"] < doc["test_ece_before"] / 2
    for when in ("before", "after"):
        low, high = doc[f"test_ece_{when}_ci95"]
        assert low <= doc[f"test_ece_{when}"] <= high
        low, high = doc[f"test_nll_{when}_ci95"]
        assert low <= doc[f"test_nll_{when}"] <= high
    assert "temperature 2." in calibration.summary(doc) and "ECE" in calibration.summary(doc)


def test_reliability_bins_by_hand():
    logits = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]]).log()  # softmax gives these back
    accuracy, share, ece = calibration.reliability(logits, torch.tensor([0, 1, 0, 0]), bins=10)
    assert accuracy[9] == pytest.approx(0.5) and accuracy[6] == pytest.approx(1.0)
    assert all(math.isnan(a) for i, a in enumerate(accuracy) if i not in (6, 9))
    assert list(share) == [0, 0, 0, 0, 0, 0, 0.5, 0, 0, 0.5] and ece == pytest.approx(0.4)


def test_the_reliability_diagram_is_a_png(tmp_path):
    logits, targets = overconfident(500, 2.0, seed=4)
    plots.plot_reliability(logits, targets, 2.0, tmp_path / "reliability.png")
    assert (tmp_path / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
