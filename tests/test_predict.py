import json

from dogbreed.archive import safe_extract_tar
from dogbreed.artifact import load_artifact
from dogbreed.cli import main


def test_table_lists_topk_breeds_with_probabilities(trained_run, samples, capsys):
    photo = samples / "Beagle_01125.jpg"
    assert main(["predict", str(photo), "--model", str(trained_run.artifact), "--topk", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(photo)
    ranked = [line for line in lines if line.startswith("  ") and line.strip()[:2] in ("1.", "2.", "3.")]
    assert len(ranked) == 3
    probs = [float(line.split()[-2]) if "█" in line.split()[-1] else float(line.split()[-1]) for line in ranked]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001


def test_json_lines_for_a_folder(trained_run, samples, capsys):
    assert main(["predict", str(samples), "--model", str(trained_run.artifact), "--json"]) == 0
    answers = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    threshold = load_artifact(trained_run.artifact).meta["threshold"]  # chosen on the validation split
    assert len(answers) == len(list(samples.glob("*.jpg")))
    for a in answers:
        assert len(a["topk_labels"]) == len(a["topk_probs"]) == len(a["breeds"]) == 4  # top-5 of 4 classes
        assert a["topk_labels"][0].split(".", 1)[1].replace("_", " ") == a["breeds"][0]
        assert a["low_confidence"] == (a["topk_probs"][0] < threshold)


def test_low_confidence_follows_the_threshold(trained_run, samples, capsys):
    photo = str(samples / "Beagle_01125.jpg")
    for threshold, low in (("1", True), ("0", False)):
        main(["predict", photo, "--model", str(trained_run.artifact), "--threshold", threshold, "--json"])
        answer = json.loads(capsys.readouterr().out)
        assert answer["low_confidence"] is low
        assert answer["verdict"] in ({"unsure", "not_a_dog"} if low else {"breed", "not_a_dog"})  # a score can still reject
    assert main(["predict", photo, "--model", str(trained_run.artifact), "--threshold", "2"]) == 1
    assert capsys.readouterr().err.strip() == "error: --threshold must be in [0, 1], got 2"


def test_non_image_file_is_reported_and_exits_1(trained_run, samples, tmp_path, capsys):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    code = main(["predict", str(samples / "Boxer_02426.jpg"), str(bad), "--model", str(trained_run.artifact), "--json"])
    assert code == 1
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert "topk_labels" in out[0] and out[1]["error"].startswith(f"{bad}: cannot decode")


def test_the_same_photo_twice_gets_two_identical_answers(trained_run, samples, tmp_path, capsys):
    photo, bad = str(samples / "Boxer_02426.jpg"), tmp_path / "notes.jpg"
    bad.write_text("not an image")
    code = main(["predict", photo, str(bad), photo, str(bad), "--model", str(trained_run.artifact), "--json"])
    assert code == 1
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(out) == 4 and out[0] == out[2] and "topk_labels" in out[0] and "error" in out[1] and "error" in out[3]


def test_missing_model_is_one_line(samples, tmp_path, capsys):
    assert main(["predict", str(samples / "Boxer_02426.jpg"), "--model", str(tmp_path / "none.tar.gz")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"error: model artifact {tmp_path / 'none.tar.gz'} does not exist; train one with `dogbreed train`"


def test_the_artifacts_own_threshold_is_used_and_shown(trained_run, samples, tmp_path, capsys):
    import json as _json

    from dogbreed.archive import safe_extract_tar

    safe_extract_tar(trained_run.artifact, tmp_path / "m")
    meta = _json.loads((tmp_path / "m" / "model.json").read_text())
    meta["threshold"], meta["topk"] = 1.0, 2  # 1: every answer is low-confidence
    meta.pop("rejection")  # an artifact without a "not a dog" score: the verdict comes from the probability alone
    (tmp_path / "m" / "model.json").write_text(_json.dumps(meta))
    assert main(["predict", str(samples / "Boxer_02426.jpg"), "--model", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert "not sure (low confidence): top-1 probability under 1;" in out
    assert "  2. " in out and "  3. " not in out  # the artifact's own top-k


def test_bad_flags_are_refused_before_the_model_loads(tmp_path, capsys):
    missing = str(tmp_path / "none.tar.gz")
    assert main(["predict", "x.jpg", "--model", missing, "--topk", "0"]) == 1
    assert capsys.readouterr().err.strip() == "error: --topk must be 1..1000, got 0"
    assert main(["predict", "x.jpg", "--model", missing, "--threshold", "nan"]) == 1
    assert capsys.readouterr().err.strip() == "error: --threshold must be in [0, 1], got nan"


def test_an_empty_file_and_a_run_folder_are_named_for_what_they_are(trained_run, samples, tmp_path, capsys):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    assert main(["predict", str(empty), "--model", str(trained_run.artifact), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["error"] == f"{empty}: empty (0 bytes)"
    assert main(["predict", str(samples / "Boxer_02426.jpg"), "--model", str(trained_run.run_dir)]) == 1
    assert capsys.readouterr().err.strip() == (f"error: {trained_run.run_dir} is a run folder, not a model; pass its "
                                               f"artifact, {trained_run.run_dir / 'model.tar.gz'}")


def test_the_table_says_each_verdict_in_words():
    from pathlib import Path

    from dogbreed.predict import format_answer

    base = {"topk_labels": ["001.Akita"], "topk_probs": [0.4], "breeds": ["Akita"], "topk_indices": [0]}
    photo = Path("dog.jpg")
    assert "not a dog, or not a breed" in format_answer(photo, {**base, "low_confidence": True, "verdict": "not_a_dog"}, 0.8)
    assert "not sure (low confidence): top-1 probability under 0.8" in format_answer(
        photo, {**base, "low_confidence": True, "verdict": "unsure"}, 0.8)
    plain = format_answer(photo, {**base, "topk_probs": [0.9], "low_confidence": False, "verdict": "breed"}, 0.8)
    assert plain.splitlines() == ["dog.jpg", f"  1. {'Akita':<32}  0.900  {'█' * 18}",
                                  "   breed: Akita (top-1 probability 0.900, at least 0.8)"]
    unbarred = format_answer(photo, {**base, "low_confidence": False, "verdict": "breed"}, 0.0)
    assert unbarred.splitlines()[-1] == "   breed: Akita (top-1 probability 0.400)"  # "at least 0" would say nothing


def test_keep_on_a_model_without_a_not_a_dog_score_is_said_to_do_nothing(trained_run, samples, tmp_path, capsys):
    """A model trained with --reject none: --keep cannot change an answer. The answers go on (they are
    right for that model); one warning line says the flag did nothing."""
    folder = tmp_path / "no-reject"
    safe_extract_tar(trained_run.artifact, folder)  # as --reject none writes it: no rejection in model.json
    meta = json.loads((folder / "model.json").read_text())
    del meta["rejection"]
    (folder / "model.json").write_text(json.dumps(meta))
    (folder / "rejection.pth").unlink()
    photo = str(samples / "Beagle_01125.jpg")
    assert main(["predict", photo, "--model", str(folder), "--keep", "0.5", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["verdict"] != "not_a_dog"
    assert captured.err.strip() == (f"warning: --keep 0.5 has no effect: {folder} has no \"not a dog\" score (trained "
                                    f"with --reject none), so no answer is not_a_dog")
    assert main(["predict", photo, "--model", str(folder)]) == 0 and capsys.readouterr().err == ""
    assert main(["predict", photo, "--model", str(trained_run.artifact), "--keep", "0.5"]) == 0
    assert capsys.readouterr().err == ""  # a model with a score: --keep does something
