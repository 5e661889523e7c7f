"""``python -m dogbreed.sagemaker``: the entry point of a SageMaker training job."""

import json
import os
import subprocess
import sys

from .conftest import free_port


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


def job_env(base, data) -> dict:
    """What SageMaker's training toolkit sets for a job whose /opt/ml is ``base``."""
    return {"SAGEMAKER_BASE_DIR": str(base), "SM_CHANNEL_TRAINING": str(data), "SM_MODEL_DIR": str(base / "model"),
            "SM_OUTPUT_DATA_DIR": str(base / "output" / "data")}


HYPERPARAMETERS = ["--batch_size", "8", "--epochs", "1", "--backbone", "resnet18", "--pretrained", "False",
                   "--image_size", "64", "--workers", "0", "--aug_views", "1", "--profile", "False"]


def test_two_hosts_share_the_job_and_the_first_writes_the_model(synth_data, tiny_weights, tmp_path):
    """SageMaker starts the entry script once per host with SM_HOSTS and SM_CURRENT_HOST; here two
    processes, each with its own /opt/ml tree, rendezvous on loopback."""
    hosts = {"SM_HOSTS": json.dumps(["algo-2", "algo-1"]), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
             "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    job = [*HYPERPARAMETERS, "--weights", str(tiny_weights), "--cache_dir", str(tmp_path / "cache")]  # its own: cold
    procs = {host: subprocess.Popen([sys.executable, "-m", "dogbreed.sagemaker", *job], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True,
                                    env={**os.environ, **job_env(tmp_path / host, synth_data), **hosts,
                                         "SM_CURRENT_HOST": host})
             for host in ("algo-1", "algo-2")}
    try:
        outs = {host: proc.communicate(timeout=300) for host, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    for host, proc in procs.items():
        assert proc.returncode == 0, (host, outs[host][1][-2000:])
    assert (tmp_path / "algo-1" / "model" / "model.pth").is_file()  # the first host is rank 0
    assert not (tmp_path / "algo-2" / "model").exists() and not (tmp_path / "algo-2" / "output" / "data").exists()
    assert "3 computed on 2 ranks" in outs["algo-1"][0]
    assert not list(tmp_path.glob("*/output/failure"))


def test_a_failed_job_leaves_its_reason_in_the_failure_file(tmp_path):
    env = {**os.environ, **job_env(tmp_path, tmp_path / "missing")}
    bad = subprocess.run([sys.executable, "-m", "dogbreed.sagemaker", "--learning_rate", "fast"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert bad.returncode == 1
    assert (tmp_path / "output" / "failure").read_text().startswith("hyperparameter --learning_rate")
    missing = subprocess.run([sys.executable, "-m", "dogbreed.sagemaker", *HYPERPARAMETERS], capture_output=True,
                             text=True, env=env, timeout=120)
    assert missing.returncode == 1
    reason = (tmp_path / "output" / "failure").read_text()
    assert reason.count("\n") == 1 and str(tmp_path / "missing") in reason, reason
