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
])
def test_bad_space_files(tmp_path, text, match):
    f = tmp_path / "space.yaml"
    f.write_text(text)
    with pytest.raises(DogbreedError, match=match.replace("(", r"\(").replace(")", r"\)")):
        load_space(f)
