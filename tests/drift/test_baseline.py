"""The baseline every run writes (into its artifact and its folder), and one made for an artifact
from before baselines."""

import json
import tarfile

import pytest

from dogbreed.drift.baseline import FILES, Baseline
from dogbreed.errors import DogbreedError


def test_a_run_keeps_its_validation_baseline_in_the_artifact_and_its_folder(trained_run):
    assert sorted(p.name for p in (trained_run.run_dir / "baseline").iterdir()) == sorted(FILES)
    with tarfile.open(trained_run.artifact) as tar:
        assert {f"baseline/{f}" for f in FILES} <= set(tar.getnames())
    base = Baseline.load(trained_run.artifact)
    assert base.statistics == json.loads((trained_run.run_dir / "baseline" / "statistics.json").read_text())
    assert base.statistics["dataset"]["item_count"] == 8  # 4 breeds x 2 validation images
    assert sum(base.counts("verdict").values()) == 8 and sum(base.counts("predicted_breed").values()) == 8
    names = {f["name"]: f for f in base.statistics["features"]}
    assert names["brightness"]["inferred_type"] == "Fractional" and names["image_width"]["inferred_type"] == "Integral"
    assert names["image_width"]["numerical_statistics"]["min"] == 64  # the synthetic images' size
    assert base.sketch["embedding_mean"].shape == (512,)  # resnet18's embedding
    assert base.sketch["embedding_sample"].shape == (8, base.sketch["embedding_components"].shape[0])
    floor = base.accuracy_floor
    assert floor["comparison_operator"] == "LessThanThreshold"
    assert floor["threshold"] == pytest.approx(max(0.0, floor["baseline"] - 0.05), abs=1e-6)
    assert base.setting("alpha") == 0.01 and base.setting("permutations") == 2000
    assert Baseline.load(trained_run.run_dir).statistics == base.statistics  # the run folder names it too


def test_an_artifact_without_a_baseline_says_how_to_make_one(trained_run, tmp_path):
    older = tmp_path / "older.tar.gz"
    with tarfile.open(trained_run.artifact) as src, tarfile.open(older, "w:gz") as dst:
        for member in src.getmembers():
            if not member.name.removeprefix("./").startswith("baseline"):
                dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    with pytest.raises(DogbreedError, match="holds no baseline .* `dogbreed monitor baseline --model"):
        Baseline.load(older)


def test_a_baseline_from_data_matches_the_artifacts_own_on_the_same_images(trained_run, synth_data, tmp_path):
    from dogbreed.drift.baseline import from_data

    made = from_data(str(trained_run.artifact), str(synth_data), str(tmp_path / "b"), progress=False)
    own = Baseline.load(trained_run.artifact)
    assert made.counts("predicted_breed") == own.counts("predicted_breed")
    assert made.counts("verdict") == own.counts("verdict")
    assert made.accuracy_floor["baseline"] == pytest.approx(own.accuracy_floor["baseline"])
    # both read brightness from the same files, the same way
    made_b = next(f for f in made.statistics["features"] if f["name"] == "brightness")["numerical_statistics"]["mean"]
    own_b = next(f for f in own.statistics["features"] if f["name"] == "brightness")["numerical_statistics"]["mean"]
    assert made_b == pytest.approx(own_b)
