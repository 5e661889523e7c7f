"""Thresholds and the measures of how well a score separates known breeds from the rest."""

import pytest
import torch

from dogbreed import rejection


def test_auroc_and_fpr_on_known_separations():
    known, other = torch.arange(10.0, 20.0), torch.arange(0.0, 10.0)
    assert rejection.auroc(known, other) == 1.0 and rejection.fpr_at_tpr(known, other) == 0.0
    assert rejection.auroc(other, known) == 0.0
    same = torch.ones(10)
    assert rejection.auroc(same, same) == 0.5  # ties count half
    overlap = rejection.auroc(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 0.0]))
    assert overlap == pytest.approx(0.75)  # 3 of 4 pairs in order


def test_the_threshold_keeps_the_stated_share_of_known_images():
    valid = torch.linspace(0, 1, 1001)
    threshold = rejection.threshold_for(valid, keep=0.95)
    assert (valid >= threshold).double().mean().item() == pytest.approx(0.95, abs=0.002)
