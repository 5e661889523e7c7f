"""``python -m dogbreed.sagemaker``: the entry point of a SageMaker training job."""

import json
import os
import subprocess
import sys


def test_runs_unchanged_as_a_sagemaker_training_job(synth_data, tmp_path):
    """SageMaker's contract: data from SM_CHANNEL_TRAINING, hyperparameters as --snake_case flags,
    the model left unpacked in SM_MODEL_DIR, everything else in SM_OUTPUT_DATA_DIR."""
    env = {"SM_CHANNEL_TRAINING": str(synth_data), "SM_MODEL_DIR": str(tmp_path / "model"),
           "SM_OUTPUT_DATA_DIR": str(tmp_path / "output")}
    # Exactly how SageMaker starts an entry script: hyperparameters only, booleans as values.
    proc = subprocess.run(
        [sys.executable, "-m", "dogbreed.sagemaker", "--learning_rate", "0.003", "--batch_size", "8", "--epochs", "1",
         "--backbone", "resnet18", "--pretrained", "False", "--image_size", "64", "--workers", "0",
         "--train_layers", "all"],
        capture_output=True, text=True, env={**os.environ, **env}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    model_dir = tmp_path / "model"
    assert {p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*")} >= {
        "model.pth", "labels.json", "model.json", "code", "code/inference.py", "code/presets.py", "code/network.py",
        "code/requirements.txt"}
    assert json.loads((model_dir / "model.json").read_text())["config"]["lr"] == 0.003
    assert list((tmp_path / "output").glob("*/metrics.csv"))
    assert "val_loss=" in proc.stdout and "test_accuracy=" in proc.stdout  # lines SageMaker metric regexes scrape
