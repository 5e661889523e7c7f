"""``python -m dogbreed.sagemaker``: the entry point of a SageMaker training job."""

import json
import os
import signal
import subprocess
import sys

from dogbreed import sagemaker

from .conftest import blamed, free_port, wait_for_line


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


def changed(**values: str) -> list[str]:
    """HYPERPARAMETERS with these set otherwise (not given twice: the entry refuses that)."""
    pairs = dict(zip(HYPERPARAMETERS[::2], HYPERPARAMETERS[1::2])) | {f"--{k}": v for k, v in values.items()}
    return [word for pair in pairs.items() for word in pair]


def start_hosts(base, hyperparameters: list[str], data: dict) -> dict[str, subprocess.Popen]:
    """The job started on hosts algo-1 and algo-2 (``data``: each host's training channel), each with
    its own /opt/ml tree under ``base``, rendezvous on loopback."""
    hosts = {"SM_HOSTS": json.dumps(["algo-2", "algo-1"]), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
             "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    return {host: subprocess.Popen([sys.executable, "-m", "dogbreed.sagemaker", *hyperparameters], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True,
                                   env={**os.environ, **job_env(base / host, channel), **hosts, "SM_CURRENT_HOST": host})
            for host, channel in data.items()}


def test_two_hosts_share_the_job_and_the_first_writes_the_model(synth_data, tiny_weights, tmp_path):
    """SageMaker starts the entry script once per host with SM_HOSTS and SM_CURRENT_HOST; here two
    processes, each with its own /opt/ml tree, rendezvous on loopback."""
    job = [*HYPERPARAMETERS, "--weights", str(tiny_weights), "--cache_dir", str(tmp_path / "cache")]  # its own: cold
    procs = start_hosts(tmp_path, job, {"algo-1": synth_data, "algo-2": synth_data})
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


def test_one_hyperparameter_set_twice_to_different_values_is_refused(tmp_path, monkeypatch, capsys):
    """SageMaker's --learning_rate and our --lr are one option: two values for it are a mistake, not a
    later one that wins. The same value twice is harmless."""
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(tmp_path))
    assert sagemaker.hyperparameters(["--lr", "0.01", "--learning_rate", "1e-2"]) == ["--lr", "0.01", "--lr", "1e-2"]
    assert sagemaker.main(["--lr", "0.01", "--epochs", "1", "--learning_rate", "0.02"]) == 1
    reason = "hyperparameters --lr 0.01 and --learning_rate 0.02 both set lr; keep one"
    assert capsys.readouterr().err.strip() == f"error: {reason}"
    assert (tmp_path / "output" / "failure").read_text() == reason + "\n"


def test_a_job_without_its_training_channel_names_the_variable(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("SM_CHANNEL_TRAINING", raising=False)
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(tmp_path))
    assert sagemaker.main(HYPERPARAMETERS) == 1
    reason = (tmp_path / "output" / "failure").read_text()
    assert reason.startswith("SM_CHANNEL_TRAINING is not set: the job has no 'training' input channel"), reason
    assert capsys.readouterr().err.strip() == f"error: {reason.strip()}"


def test_a_failure_file_that_cannot_be_written_is_one_line_not_a_traceback(tmp_path):
    env = {**os.environ, **job_env(tmp_path, tmp_path / "missing"), "SAGEMAKER_BASE_DIR": "/proc/nope"}
    bad = subprocess.run([sys.executable, "-m", "dogbreed.sagemaker", "--learning_rate", "fast"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr, bad.stderr
    reason, failure = bad.stderr.strip().splitlines()
    assert reason.startswith("error: hyperparameter --learning_rate")
    assert failure == "error: could not write SageMaker's failure file /proc/nope/output/failure: No such file or directory"


def test_a_host_that_fails_ends_the_job_on_every_host_with_its_reason(synth_data, tmp_path):
    """The second host's data channel is missing: it fails in one line, and the first host, which
    would otherwise fail on gloo's closed connection with a traceback, ends saying why rank 1 did."""
    procs = start_hosts(tmp_path, [*HYPERPARAMETERS, "--train_layers", "layer4"],
                      {"algo-1": synth_data, "algo-2": tmp_path / "missing"})
    try:
        errs = {host: proc.communicate(timeout=300)[1] for host, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    assert [proc.returncode for proc in procs.values()] == [1, 1]
    assert "Traceback" not in errs["algo-1"] + errs["algo-2"]
    second = (tmp_path / "algo-2" / "output" / "failure").read_text()
    assert second.startswith(f"data dir {tmp_path / 'missing'} does not exist"), second
    first = (tmp_path / "algo-1" / "output" / "failure").read_text()
    assert first == f"rank 1 failed: {second.strip()}; ending the job\n"
    assert errs["algo-1"].strip().splitlines()[-1] == f"error: {first.strip()}"
    assert not (tmp_path / "algo-1" / "model").exists()


def test_a_host_that_stops_answering_is_named_in_the_failure_file(synth_data, tmp_path):
    """The second host freezes in mid-training: the first host's watchdog ends the job within
    --rank_timeout and its one line is the job's failure reason, though it ends the process at once."""
    procs = start_hosts(tmp_path, [*changed(epochs="20"), "--train_layers", "layer4", "--rank_timeout", "5"],
                      {"algo-1": synth_data, "algo-2": synth_data})
    first, second = procs["algo-1"], procs["algo-2"]
    try:
        assert wait_for_line(first, "epoch   1/"), "the job never trained an epoch"  # the first host's epoch lines
        second.send_signal(signal.SIGSTOP)
        first.communicate(timeout=120)
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait(timeout=30)
    assert first.returncode == 1
    reason = (tmp_path / "algo-1" / "output" / "failure").read_text()
    assert reason.count("\n") == 1 and blamed(reason) == 1 and "(--rank-timeout 5)" in reason, reason


def test_runs_under_sagemakers_torch_distributed_launcher(synth_data, tiny_weights, tmp_path):
    """SageMaker's ``torch_distributed`` starts torchrun on each host, which starts the entry point
    once per rank with its own RANK/WORLD_SIZE: those are used as they are (SM_HOSTS names one host)."""
    env = {**os.environ, **job_env(tmp_path, synth_data), "SM_HOSTS": json.dumps(["algo-1"]),
           "SM_CURRENT_HOST": "algo-1", "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2", "--rdzv-backend=c10d",
               f"--rdzv-endpoint=127.0.0.1:{free_port()}", "-m", "dogbreed.sagemaker", *HYPERPARAMETERS,
               "--weights", str(tiny_weights), "--cache_dir", str(tmp_path / "cache")]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "3 computed on 2 ranks" in proc.stdout
    assert (tmp_path / "model" / "model.pth").is_file() and not (tmp_path / "output" / "failure").exists()
