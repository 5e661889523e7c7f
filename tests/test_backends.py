"""Backends: the accuracy gate, ``auto``, and the answers of every backend that passed its gate,
through the real server process and the artifact's own handlers, against eager fp32."""

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dogbreed.archive import safe_extract_tar
from dogbreed.artifact import load_artifact
from dogbreed.export import export
from dogbreed.predict import predict_files
from dogbreed.runtime import backends
from dogbreed.runtime.pipeline import Options

from .conftest import one_line_error, run_cli
from .serve.conftest import running_server
from .serve.test_routes import call, invoke
from .toolkit import run_handlers

FP32 = ("eager", "torchscript", "onnx")  # the same arithmetic as eager's, up to rounding
LOOSE_GATE = "0.5,0.5"  # the tests' 4-breed, 64 px model: int8's error is large beside its small logit margins


def test_agreement_counts_top1_and_how_much_of_fp32s_top5_is_kept():
    reference = torch.tensor([[5.0, 4, 3, 2, 1, 0], [0, 1, 2, 3, 4, 5]])
    assert backends.agreement(reference, reference) == {"top1": 1.0, "top5": 1.0}
    swapped = torch.tensor([[4.0, 5, 3, 2, 1, 0], [0, 1, 2, 3, 4, 5]])  # first image: top-1 changes, top-5 the same
    assert backends.agreement(reference, swapped) == {"top1": 0.5, "top5": 1.0}
    dropped = torch.tensor([[5.0, 4, 3, 2, 0, 1], [0, 1, 2, 3, 4, 5]])  # first image: 1 of fp32's top-5 is 6th
    assert backends.agreement(reference, dropped) == {"top1": 1.0, "top5": 0.9}
    assert backends.passes({"top1": 0.99, "top5": 0.995}) and not backends.passes({"top1": 0.99, "top5": 0.99})
    assert not backends.passes(None) and backends.passes({"top1": 0.6, "top5": 0.6}, {"top1": 0.5, "top5": 0.5})


@pytest.fixture(scope="module")
def exported(trained_run, synth_data, tmp_path_factory) -> Path:
    """The test model with every export, checked on the validation images under a loose gate, unpacked."""
    variant = export(trained_run.artifact, "all", tmp_path_factory.mktemp("all") / "model-all.tar.gz", data=synth_data,
                     gate=LOOSE_GATE, progress=False)
    safe_extract_tar(variant, variant.parent / "m")
    return variant.parent / "m"


def held_out(synth_data, samples) -> list[Path]:
    return sorted((synth_data / "test").glob("*/*.jpg")) + sorted(samples.glob("*.jpg"))


def passed(model_dir: Path) -> list[str]:
    meta = json.loads((model_dir / "model.json").read_text())
    return ["eager", *(name for name in backends.BACKENDS if name != "eager" and backends.unusable(
        str(model_dir), meta, name, torch.device("cpu")) is None)]


def test_export_stores_each_backends_agreement_on_the_validation_images(exported):
    meta = json.loads((exported / "model.json").read_text())
    assert meta["gate"] == {"top1": 0.5, "top5": 0.5}
    expected = {"torchscript", "onnx", "int8"} | ({"bf16"} if backends.native_bf16(torch.device("cpu")) else set())
    assert set(meta["backends"]) == expected
    for name, record in meta["backends"].items():
        assert record["images"] == 8 and record["passed"] == backends.passes(record, meta["gate"]), name
        assert 0 <= record["top1"] <= 1 and 0 <= record["top5"] <= 1
    for name in ("torchscript", "onnx"):  # fp32 both: the same answers
        assert meta["backends"][name]["top1"] == meta["backends"][name]["top5"] == 1.0
    for name in ("model.pt", "model.onnx", "model.int8.onnx"):
        assert (exported / name).stat().st_size > 0


def test_every_backend_that_passed_answers_as_eager_through_the_server_and_the_handlers(exported, synth_data, samples):
    photos = held_out(synth_data, samples)
    eager = [answer for _, answer in predict_files(load_artifact(exported), photos, Options(topk=3))]
    gate = json.loads((exported / "model.json").read_text())["gate"]
    names = passed(exported)
    assert {"torchscript", "onnx"} <= set(names)
    for name in names:
        with running_server(exported, "--backend", name, "--topk", "3") as url:
            served = [json.loads(invoke(url, photo.read_bytes())[2]) for photo in photos]
            metrics = call(url, "/metrics", method="GET")[2].decode()
        assert f'dogbreed_backend_info{{asked="{name}",backend="{name}"}} 1.0' in metrics
        handled = [json.loads(r["body"]) for r in run_handlers(
            exported, [(photo.read_bytes(), {"Content-Type": "image/jpeg", "Accept": "application/json"}) for photo in photos],
            env={"DOGBREED_BACKEND": name, "DOGBREED_TOPK": "3"})]
        for answers in (served, handled):
            if name in FP32:
                for ours, theirs in zip(answers, eager):
                    assert ours["topk_labels"] == theirs["topk_labels"], name
                    assert ours["topk_probs"] == pytest.approx(theirs["topk_probs"], abs=1e-4), name
            else:  # bf16 and int8: as close to eager on these images as the gate they passed asks
                same = sum(ours["topk_labels"][0] == theirs["topk_labels"][0] for ours, theirs in zip(answers, eager))
                assert same >= gate["top1"] * len(photos), (name, same, len(photos))


def test_auto_takes_the_fastest_that_passed_and_says_so_in_the_serving_line(exported):
    output: list[str] = []
    with running_server(exported, "--backend", "auto", "--backend-budget-s", "6", output=output) as url:
        metrics = call(url, "/metrics", method="GET")[2].decode()
    serving = next(line for line in output if line.startswith("serving "))
    chosen = re.search(r"; backend (\w+) \(auto\); img/s at batch 1/8: (.*?) \(", serving)
    assert chosen, serving
    rates = dict((name, float(rate.split("/")[1])) for name, rate in (part.split(" ") for part in chosen[2].split(", ")))
    late = {name for name in passed(exported) if f"{name} {backends.out_of_time(6)}" in serving}  # a busy machine's
    assert set(rates) | late == set(passed(exported)) and not set(rates) & late and chosen[1] == max(rates, key=rates.get)
    assert f'dogbreed_backend_info{{asked="auto",backend="{chosen[1]}"}} 1.0' in metrics
    for name in rates:
        assert f'dogbreed_backend_images_per_second{{backend="{name}",batch_size="8"}}' in metrics


@pytest.fixture
def costs(monkeypatch):
    """The race's clock, moved on only by what the race does to the real artifact: each load costs
    1 s and each forward pass 1 s, so that a budget buys the same race on any machine."""
    now = [0.0]
    monkeypatch.setattr(backends, "time", SimpleNamespace(perf_counter=lambda: now[0]))

    def costing(function):
        def run(*args, **kwargs):
            now[0] += 1.0
            return function(*args, **kwargs)
        return run

    monkeypatch.setattr(backends, "load_model_dir", costing(backends.load_model_dir))
    monkeypatch.setattr(backends.pipeline, "forward", costing(backends.pipeline.forward))
    return now


def test_auto_keeps_to_its_budget_and_says_which_candidates_it_had_no_time_for(exported, costs):
    names = set(passed(exported))
    measured = {}
    # eager's load, then: no pass fits; some candidates fit; all of them fit (each fills its share of the
    # budget with passes, so "all" needs room beyond the five candidates' 49 s of least passes)
    for budget in (2, 25, 120):
        costs[0] = 0.0
        _, race = backends.select(str(exported), budget_s=budget)
        late = {name for name, why in race.skipped.items() if why == backends.out_of_time(budget)}
        assert set(race.measured) | late | {"eager"} == names and not set(race.measured) & late, budget
        assert race.seconds == costs[0] <= budget + 1  # no pass starts after the deadline: one (1 s) at most past it
        assert race.chosen in race.measured or (race.chosen == "eager" and not race.measured)
        measured[budget] = set(race.measured)
    assert measured[2] == set() and measured[120] == names
    assert "eager" in measured[25] and measured[25] < names  # in order: eager first, the rest while there is time


def test_a_job_of_known_size_races_no_longer_than_a_share_of_its_eager_time(exported, costs):
    """Eager makes its least passes first (8 img/s at batch 8 on the race's clock: its load and 8 passes
    take 9 s); the race then ends by RACE_SHARE of eager's time for the job's images, within the
    budget, and says why the rest were not timed."""
    names = set(passed(exported))
    races = {}
    for images in (40, 960, 10**6):  # eager's time: 5 s, 120 s, more than the budget pays for
        costs[0] = 0.0
        _, race = backends.select(str(exported), budget_s=120, images=images)
        unpaid = {name for name, why in race.skipped.items() if why.startswith(f"not timed: {images} images are ~")}
        assert set(race.measured) | unpaid == names and not set(race.measured) & unpaid, images
        assert race.seconds <= max(backends.RACE_SHARE * images / race.speed("eager"), 9) + 1
        races[images] = race
    assert set(races[40].measured) == {"eager"} and races[40].seconds == 9
    assert "too few to pay for a longer race" in races[40].line()
    assert "eager" in races[960].measured and 1 < len(races[960].measured) < len(names) and races[960].seconds <= 31
    assert set(races[10**6].measured) == names  # the budget bounds it, as without a size


def test_a_backend_that_failed_its_gate_is_one_line_and_the_server_serves_on_the_next_best(exported, tmp_path, samples):
    shutil.copytree(exported, tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    meta["backends"]["int8"].update(top1=0.25, passed=False)  # as an export that measured int8 far off would store it
    (tmp_path / "m" / "model.json").write_text(json.dumps(meta))
    (tmp_path / "m" / "model.onnx").unlink()  # and onnx was never exported: the next best of the rest runs
    output: list[str] = []
    with running_server(tmp_path / "m", "--backend", "int8", "--backend-budget-s", "1", output=output) as url:
        assert invoke(url, (samples / "Beagle_01125.jpg").read_bytes())[0] == 200
    warnings = [line for line in output if "int8" in line and "cannot run" in line]
    assert warnings == [f"warning: {tmp_path / 'm'}: backend int8 cannot run this model: failed its gate (top-1 25.0%, "
                        f"top-5 {meta['backends']['int8']['top5']:.1%}; needs 50.0%, 50.0%); the fastest of the others "
                        f"is used\n"]
    serving = next(line for line in output if line.startswith("serving "))
    assert "(asked for int8)" in serving and "onnx not exported" in serving and "backend int8" not in serving


def test_export_refuses_a_bad_gate_and_int8_without_data_in_one_line(trained_run, tmp_path):
    one_line_error(run_cli("export", str(trained_run.artifact), "--format", "int8"), "pass --data DIR")
    one_line_error(run_cli("export", str(trained_run.artifact), "--gate", "0.99"), "--gate '0.99' is not two agreements")
    one_line_error(run_cli("export", str(trained_run.artifact), "--format", "tensorrt"), "'tensorrt' is not supported")
    assert not list(trained_run.artifact.parent.glob("model-*.tar.gz"))  # nothing half-written


def test_int8_is_calibrated_on_every_batch_of_the_calibration_images(trained_run, synth_data, tmp_path):
    """Four batches of 16: a flush of ONNX Runtime's calibrator every few batches once dropped them all."""
    data = tmp_path / "data"
    shutil.copytree(synth_data / "train", data / "train")
    shutil.copytree(synth_data / "test", data / "test")
    for photo in sorted((synth_data / "valid").glob("*/*.jpg")):
        (data / "valid" / photo.parent.name).mkdir(parents=True, exist_ok=True)
        for copy in range(8):  # 64 validation images from the 8 there are
            shutil.copy(photo, data / "valid" / photo.parent.name / f"{photo.stem}-{copy}.jpg")
    variant = export(trained_run.artifact, "int8", tmp_path / "model-int8.tar.gz", data=data, calibration_images=64,
                     gate=LOOSE_GATE, progress=False)
    safe_extract_tar(variant, tmp_path / "m")
    record = json.loads((tmp_path / "m" / "model.json").read_text())["backends"]["int8"]
    assert record["images"] == 64 and 0 <= record["top1"] <= 1
    assert (tmp_path / "m" / "model.int8.onnx").stat().st_size > 0
