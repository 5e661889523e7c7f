"""How a study's trials read on the console."""

from dogbreed.tune.results import format_params, format_trial


def test_parameters_on_one_line_with_floats_to_three_digits():
    assert format_params({"lr": 0.0012345, "batch_size": 32, "backbone": "resnet18"}) == \
        "lr=0.00123 batch_size=32 backbone=resnet18"


def test_a_trial_row_names_its_parameters_without_their_column_prefix():
    row = {"number": 3, "state": "COMPLETE", "value": 0.51234, "seconds": 12.34, "param_lr": 0.25, "param_label_smoothing": 0.1}
    assert format_trial(row, "val_loss") == "trial   3  COMPLETE  val_loss 0.5123       lr=0.25 label_smoothing=0.1  12.3s"
