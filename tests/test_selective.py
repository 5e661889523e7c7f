"""Saying "unsure": the threshold chosen on the validation split from its selective-accuracy curve."""

import torch

from dogbreed import selective
from dogbreed.stats import selective_curve

CONFIDENCE = torch.tensor([0.9, 0.8, 0.8, 0.6, 0.3])
CORRECT = torch.tensor([True, True, False, True, False])


def test_the_threshold_is_the_lowest_that_keeps_the_answers_at_the_accuracy_asked():
    chosen = selective.choose(CONFIDENCE, CORRECT, accuracy=0.75)
    assert chosen["threshold"] == 0.45  # halfway between the last answered (0.6) and the first turned away (0.3)
    assert (chosen["valid_answered"], chosen["valid_answered_accuracy"]) == (0.8, 0.75)
    assert selective.answered(CONFIDENCE, CORRECT, chosen["threshold"])["breed_accuracy"] == 0.75


def test_a_model_right_often_enough_answers_everything_and_one_never_right_enough_nothing():
    assert selective.choose(CONFIDENCE, CORRECT, accuracy=0.6)["threshold"] == 0.0
    never = selective.choose(CONFIDENCE, torch.zeros(5, dtype=torch.bool), accuracy=0.9)
    assert never["threshold"] == 1.0 and never["valid_answered"] == 0.0


def test_the_verdicts_of_known_breeds_add_up_and_count_the_not_a_dog_check():
    dog = torch.tensor([True, True, True, True, False])
    shares = selective.answered(CONFIDENCE, CORRECT, 0.7, dog)
    assert shares == {"breed": 0.6, "unsure": 0.2, "not_a_dog": 0.2, "breed_accuracy": 0.666667}


def test_a_long_curve_is_thinned_evenly_keeping_both_ends_and_the_chosen_point():
    points = selective_curve(torch.linspace(1, 0.01, 500), torch.ones(500, dtype=torch.bool))
    kept = selective.thin(points, 50, keep=points[123])
    assert len(kept) <= 51 and kept[0] is points[0] and kept[-1] is points[-1] and points[123] in kept
