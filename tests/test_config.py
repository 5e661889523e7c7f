import pytest

from dogbreed import config
from dogbreed.config import TrainConfig, normalize_argv
from dogbreed.errors import DogbreedError


def test_defaults_are_the_seeds_best_hyperparameters():
    cfg = TrainConfig()
    assert (cfg.backbone, cfg.lr, cfg.batch_size, cfg.epochs, cfg.train_layers) == ("resnet50", 0.0044, 29, 9, "head")


def test_precedence_defaults_then_recipe_then_flags(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("lr: 0.01\nepochs: 3\nbackbone: resnet18\n")
    cfg = config.resolve(recipe, {"epochs": 5})
    assert cfg.lr == 0.01  # from the recipe
    assert cfg.epochs == 5  # the flag wins over the recipe
    assert cfg.batch_size == 29  # the default stays
    assert cfg.backbone == "resnet18"


def test_unknown_recipe_key_names_it_and_lists_valid_keys(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("learnin_rate: 0.01\n")
    with pytest.raises(DogbreedError, match=r"unknown config key 'learnin_rate'; valid keys: data, out"):
        config.resolve(recipe)


@pytest.mark.parametrize("text, match", [
    ("epochs: three\n", "epochs' expects int"),
    ("epochs: 0\n", "epochs must be a positive number, got 0"),
    ("lr: .nan\n", "lr must be a positive number, got nan"),
    ("lr: .inf\n", "lr must be a positive number, got inf"),
    ("weight_decay: -0.1\n", "weight_decay must be a number at least 0"),
    ("threshold: 80\n", r"threshold must be in \[0, 1\], got 80"),
    ("reject_keep: 1.5\n", r"^reject_keep must be in \(0, 1\], got 1.5$"),
    ("train_layers: some\n", "train_layers 'some' is not valid; choose one of: head, layer4, all"),
    ("- a\n- b\n", "must be a mapping"),
    ("lr: [\n", "not valid YAML"),
])
def test_bad_recipe_values(tmp_path, text, match):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    with pytest.raises(DogbreedError, match=match):
        config.resolve(recipe)


def test_saved_config_round_trips(tmp_path):
    cfg = config.resolve(overrides={"lr": 0.02, "backbone": "convnext_tiny", "workers": 3})
    config.save_yaml(cfg, tmp_path / "c.yaml")
    assert config.resolve(tmp_path / "c.yaml") == cfg


@pytest.mark.parametrize("argv, ours", [
    (["train", "--learning_rate", "0.01", "--batch_size=8", "--epochs", "3", "--train_layers", "all"],
     ["train", "--lr", "0.01", "--batch-size=8", "--epochs", "3", "--train-layers", "all"]),
    (["train", "--learning-rate", "0.1", "--model_name", "resnet18"], ["train", "--lr", "0.1", "--backbone", "resnet18"]),
    # booleans as words, any case, after a space or "="; our own --no- form stays
    (["train", "--pretrained", "False", "--feature_cache", "true", "--profile=0", "--calibrate", "YES", "--no-profile"],
     ["train", "--no-pretrained", "--feature-cache", "--no-profile", "--calibrate", "--no-profile"]),
    (["train", "--pretrained", "--batch_size", "8"], ["train", "--pretrained", "--batch-size", "8"]),  # a plain flag
    (["train", "--epochs", "2", "--pretrained"], ["train", "--epochs", "2", "--pretrained"]),
    (["train", "--pretrained", "maybe"], ["train", "--pretrained", "maybe"]),  # left for argparse to refuse
    # values, positionals and short flags are never renamed
    (["predict", "a_b.jpg", "-v", "--threshold", "-1", "--json"], ["predict", "a_b.jpg", "-v", "--threshold", "-1", "--json"]),
    (["train", "--name", "my_run"], ["train", "--name", "my_run"]),
    (["serve", "--max_batch_size", "8"], ["serve", "--max-batch-size", "8"]),  # every command's flags
])
def test_the_argv_normaliser_turns_sagemakers_spelling_into_ours(argv, ours):
    assert normalize_argv(argv) == ours
    assert normalize_argv(ours) == ours  # our spelling is left as it is


def test_read_argv_keeps_the_spelling_each_flag_was_given_in():
    words = config.read_argv(["--learning_rate", "0.01", "--batch_size=8", "--profile", "x.jpg"])
    assert words == [config.Flag("--learning_rate", "lr", "0.01"), config.Flag("--batch_size=8", "batch-size", "8", inline=True),
                     config.Flag("--profile", "profile", "x.jpg")]
    assert [w.key for w in words] == ["lr", "batch_size", "profile"]


def test_sagemaker_environment_sets_data_and_output(monkeypatch):
    monkeypatch.setenv("SM_CHANNEL_TRAINING", "/opt/ml/input/data/training")
    monkeypatch.setenv("SM_OUTPUT_DATA_DIR", "/opt/ml/output/data")
    cfg = config.resolve()
    assert cfg.data == "/opt/ml/input/data/training"
    assert cfg.out == "/opt/ml/output/data"
    assert config.resolve(overrides={"data": "mine"}).data == "mine"  # an explicit flag still wins


@pytest.mark.parametrize("argv, message", [
    (["--learning_rate", "abc"], "hyperparameter --learning_rate: config key 'lr' expects float, got 'abc'"),
    (["--pretrained", "maybe"], "hyperparameter --pretrained: config key 'pretrained' expects bool, got 'maybe'"),
    (["--epochs"], "hyperparameter --epochs has no value"),
    (["--epochs", "--lr", "0.1"], "hyperparameter --epochs has no value"),
    (["--epochs=x"], "hyperparameter --epochs=x: config key 'epochs' expects int, got 'x'"),
    (["3"], "unknown hyperparameter '3'; training options: data, out"),
    (["--lerning_rate", "0.1"], "unknown hyperparameter '--lerning_rate'; training options: data, out"),
])
def test_sagemaker_entry_names_a_bad_hyperparameter_as_the_job_spelled_it(argv, message, capsys, monkeypatch, tmp_path):
    from dogbreed.sagemaker import main

    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(tmp_path))
    assert main(argv) == 1
    assert capsys.readouterr().err.strip().startswith(f"error: {message}")
    assert (tmp_path / "output" / "failure").read_text().startswith(message)  # the job's failure reason
