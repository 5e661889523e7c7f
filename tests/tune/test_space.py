import pytest

from dogbreed.errors import DogbreedError
from dogbreed.tune.space import DEFAULT_SPACE, load_space


def test_default_space_is_the_original_projects():
    assert {n: (p.type, p.low, p.high, p.log) for n, p in DEFAULT_SPACE.items()} == {
        "lr": ("float", 1e-4, 1e-2, True), "batch_size": ("int", 8, 32, False), "epochs": ("int", 3, 10, False)}
    assert load_space(None) == DEFAULT_SPACE


def test_any_training_flag_with_float_int_or_categorical_ranges(tmp_path):
    f = tmp_path / "space.yaml"
    f.write_text("lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}\n"
                 "weight_decay: {type: float, low: 0, high: 0.1}\n"
                 "aug_views: {type: int, low: 1, high: 4}\n"
                 "backbone: {type: categorical, choices: [resnet18, resnet34]}\n")
    space = load_space(f)
    assert space["weight_decay"].log is False and space["backbone"].choices == ("resnet18", "resnet34")
    assert space["aug_views"].grid() == [1, 2, 4]  # 3 grid points over 1..4, rounded
    assert space["lr"].grid() == pytest.approx([1e-4, 10 ** -2.5, 1e-1])  # evenly spaced on the log scale


@pytest.mark.parametrize("text, match", [
    ("learning_rate: {type: float, low: 0.1, high: 1}\n", "unknown parameter 'learning_rate'; tunable training options: backbone"),
    ("data: {type: categorical, choices: [a, b]}\n", "'data' is not a hyperparameter"),
    ("lr: {type: float, low: 0.1, high: 0.01}\n", "lr range is empty: low 0.1 must be below high 0.01"),
    ("lr: {type: float, low: 0, high: 0.01, log: true}\n", "log: true, so low must be positive"),
    ("epochs: {type: int, low: 1.5, high: 3}\n", "low and high must be whole numbers"),
    ("epochs: {type: float, low: 1, high: 3}\n", "epochs is int, not a float"),
    ("lr: {type: float, low: 0.1, high: 1, scale: log}\n", "unknown key(s) scale"),
    ("lr: {type: normal, low: 0.1, high: 1}\n", "type must be one of float, int, categorical"),
    ("lr: {type: float, low: a, high: 1}\n", "needs numeric low and high"),
    ("backbone: {type: categorical, choices: []}\n", "non-empty list of choices"),
    ("[1, 2]\n", "must map parameter names to ranges"),
    ("lr: {type: float, low: 0.001, high: 0.1, log: true, step: 0.01}\n", "both log: true and a step"),
    ("lr: {type: float, low: 0.001, high: 0.1, step: 0}\n", "step must be a positive number, got 0"),
    ("lr: {type: float, low: 0.001, high: 0.1, step: fast}\n", "step must be a positive number, got 'fast'"),
    ("epochs: {type: int, low: 1, high: 9, step: 0.5}\n", "its step must be a whole number, got 0.5"),
])
def test_bad_space_files(tmp_path, text, match):
    f = tmp_path / "space.yaml"
    f.write_text(text)
    with pytest.raises(DogbreedError, match=match.replace("(", r"\(").replace(")", r"\)")):
        load_space(f)


def test_grid_values_cover_steps_and_stay_inside_the_range(tmp_path):
    f = tmp_path / "space.yaml"
    f.write_text("weight_decay: {type: float, low: 0, high: 0.1, step: 0.025}\n"
                 "epochs: {type: int, low: 2, high: 8, step: 3}\n"
                 "lr: {type: float, low: 3.0e-4, high: 3.0e-2, log: true}\n")
    space = load_space(f)
    assert space["weight_decay"].grid() == pytest.approx([0, 0.025, 0.05, 0.075, 0.1])
    assert space["epochs"].grid() == [2, 5, 8]
    lr = space["lr"].grid()
    assert lr[0] == 3.0e-4 and lr[-1] == 3.0e-2  # exactly the bounds: the sampler rejects values outside


def test_grid_points_are_every_combination_in_a_seeded_order():
    from dogbreed.tune.study import grid_points

    points = grid_points({"lr": [0.1, 0.01], "epochs": [1, 2, 3]}, seed=0)
    assert sorted((p["lr"], p["epochs"]) for p in points) == [(0.01, 1), (0.01, 2), (0.01, 3), (0.1, 1), (0.1, 2), (0.1, 3)]
    assert grid_points({"lr": [0.1, 0.01], "epochs": [1, 2, 3]}, seed=0) == points
