"""ServeConfig: every setting's flag comes from its field, and each bad one is refused in one line."""

from dataclasses import MISSING, fields

import pytest

from dogbreed.cli import build_parser, main
from dogbreed.errors import DogbreedError
from dogbreed.serve import ServeConfig


@pytest.mark.parametrize("flags, message", [
    (["--threshold", "80"], "--threshold must be in [0, 1], got 80"),
    (["--topk", "1001"], "--topk must be 1..1000, got 1001"),
    (["--backend", "tensorrt"], "--backend 'tensorrt' is not available; choose one of: auto, eager, bf16, torchscript, onnx, int8"),
    (["--max-instances", "300", "--queue-size", "256"], "--max-instances 300 is over --queue-size 256: a request of that "
                                                        "many images could never be queued; raise --queue-size or lower "
                                                        "--max-instances"),
    (["--max-batch-size", "0"], "--max-batch-size must be at least 1"),
    (["--port", "99999"], "--port must be 0..65535 (0: any free port), got 99999"),
    (["--name", ""], "--name '' is not an endpoint name: 1 to 63 letters, digits and hyphens"),
    (["--name", "a/b"], "--name 'a/b' is not an endpoint name"),
    (["--host", "no.such.host.invalid"], "--host 'no.such.host.invalid' is not an address of this machine"),
    (["--capture-percent", "50"], "--capture-percent needs --capture DEST (where to write the records)"),
    (["--capture", "cap", "--capture-percent", "101"], "--capture-percent must be 0 to 100, got 101"),
    (["--capture", "cap", "--capture-mode", "body"], "--capture-mode 'body' is not a capture mode; use input, output or input,output"),
    (["--capture", "cap", "--capture-max-disk", "0"], "--capture-max-disk must be over 0 and at most 100, got 0"),
    (["--max-body-mb", "0"], "--max-body-mb, --timeout-s and --max-pixels must be positive, --max-delay-ms at least 0"),
])
def test_serve_refuses_bad_settings_before_loading(tmp_path, capsys, flags, message):
    assert main(["serve", "--model", str(tmp_path / "model.tar.gz"), *flags]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_every_field_but_the_environments_is_a_flag_whose_help_gives_the_fields_default(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for f in fields(ServeConfig):
        if not f.metadata.get("flag", True):  # set by a SageMaker job's environment only
            assert f"--{f.name.replace('_', '-')}" not in out
            continue
        assert f"--{f.name.replace('_', '-')}" in out
        if f.default is not MISSING and f.default is not None:
            assert f"default: {f.default}" in out, f.name
    args = build_parser().parse_args(["serve", "--model", "m.tar.gz", "--port", "9000"])
    cfg = ServeConfig.from_flags({k: v for k, v in vars(args).items() if k in {f.name for f in fields(ServeConfig)}})
    assert (cfg.model, cfg.port, cfg.max_batch_size) == ("m.tar.gz", 9000, 8)  # typed; the rest are the defaults


def test_the_api_key_may_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("DOGBREED_API_KEY", "s3cret")
    assert ServeConfig.from_flags({"model": "m"}).api_key == "s3cret"
    assert ServeConfig.from_flags({"model": "m", "api_key": "typed"}).api_key == "typed"
    with pytest.raises(DogbreedError, match="--queue-size must be at least 1"):
        ServeConfig.from_flags({"model": "m", "queue_size": 0})


@pytest.mark.parametrize("flags, queue, instances", [
    (["--queue-size", "4"], 4, 4),  # the default --max-instances 16 would not fit: it follows
    (["--queue-size", "1000"], 1000, 16),
    (["--max-instances", "300"], 300, 300),  # the default --queue-size 256 would not hold it: it follows
    (["--max-instances", "8"], 256, 8),
    (["--queue-size", "4", "--max-instances", "2"], 4, 2),
])
def test_one_of_queue_size_and_max_instances_given_alone_fits_the_other_to_it(flags, queue, instances):
    args = build_parser().parse_args(["serve", "--model", "m.tar.gz", *flags])
    cfg = ServeConfig.from_flags({k: v for k, v in vars(args).items() if k in {f.name for f in fields(ServeConfig)}})
    assert (cfg.queue_size, cfg.max_instances) == (queue, instances)


def test_a_batch_transform_jobs_environment_sets_the_batch_settings_under_the_flags():
    env = {"SAGEMAKER_BATCH": "true", "SAGEMAKER_MAX_PAYLOAD_IN_MB": "20", "SAGEMAKER_BATCH_STRATEGY": "SINGLE_RECORD",
           "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS": "3", "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": "application/jsonlines"}
    cfg = ServeConfig.from_flags({"model": "m"}, env)
    assert (cfg.timeout_s, cfg.max_body_mb, cfg.max_instances, cfg.queue_size, cfg.default_accept) == (
        600.0, 20.0, 256, 256, "application/jsonlines")
    assert cfg.execution_parameters() == {"MaxConcurrentTransforms": 3, "BatchStrategy": "SINGLE_RECORD", "MaxPayloadInMB": 20}
    typed = ServeConfig.from_flags({"model": "m", "max_body_mb": 2.5, "timeout_s": 9.0, "max_instances": 8}, env)
    assert (typed.max_body_mb, typed.timeout_s, typed.max_instances, typed.queue_size) == (2.5, 9.0, 8, 256)
    plain = ServeConfig.from_flags({"model": "m", "workers": 2}, {})
    assert (plain.timeout_s, plain.max_instances, plain.default_accept) == (30.0, 16, "application/json")
    assert plain.execution_parameters() == {"MaxConcurrentTransforms": 4, "BatchStrategy": "MULTI_RECORD", "MaxPayloadInMB": 6}


@pytest.mark.parametrize("env, message", [
    ({"SAGEMAKER_MAX_PAYLOAD_IN_MB": "0"}, "SAGEMAKER_MAX_PAYLOAD_IN_MB='0' must be 1 to 100 (0, streaming, is not supported"),
    ({"SAGEMAKER_MAX_PAYLOAD_IN_MB": "lots"}, "SAGEMAKER_MAX_PAYLOAD_IN_MB='lots' must be 1 to 100"),
    ({"SAGEMAKER_BATCH_STRATEGY": "ALL"}, "SAGEMAKER_BATCH_STRATEGY='ALL' must be MULTI_RECORD or SINGLE_RECORD"),
    ({"SAGEMAKER_MAX_CONCURRENT_TRANSFORMS": "0"}, "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS='0' must be a whole number, at least 1"),
    ({"SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": "text/csv"},
     "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT='text/csv' must be application/json or application/jsonlines"),
])
def test_a_bad_sagemaker_variable_is_one_line_naming_it(env, message):
    with pytest.raises(DogbreedError) as err:
        ServeConfig.from_flags({"model": "m"}, env)
    assert str(err.value).startswith(message)
