"""`make demo`'s job as a real process: synthetic data -> profiled training -> tuning -> predictions ->
capture and monitoring."""

import re
from pathlib import Path

from .conftest import run_cli


def test_the_demo_runs_end_to_end_offline(tmp_path):
    out = tmp_path / "demo"
    proc = run_cli("demo", "--out", str(out), "--no-progress", timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    text = proc.stdout
    accuracy = re.search(r"test accuracy ([\d.]+)% \(trained from scratch\), ([\d.]+)% \(tuned head\)", text)
    assert accuracy and float(accuracy[1]) > 50 and float(accuracy[2]) > 50  # 10 classes: chance is 10%
    report = Path(re.search(r"profile: +(\S+report\.html)", text)[1])
    assert report.is_file() and (report.parent / "rules" / "StepOutlier.json").is_file()
    artifact = Path(re.search(r"artifact: +(\S+model\.tar\.gz)", text)[1])
    assert artifact.is_file()
    exported = Path(re.search(r"exported: +(\S+model-all\.tar\.gz)", text)[1])
    assert Path(re.search(r"serve it: +dogbreed serve --model (\S+)", text)[1]) == exported and exported.is_file()
    # auto raced the exports within the demo's 4 s budget (on a busy machine perhaps none had time)
    assert re.search(r"model-all\.tar\.gz: backend \w+ \(auto\); (img/s at batch 1/8: |.*not timed within the 4s budget)",
                     text)
    assert text.count("  1. ") == 5  # top-5 tables: three test images, an unseen breed, an image of no dog
    assert "unseen/" in text and "not-a-dog.png" in text
    assert "dogbreed evaluate --model" in text
    # after deployment: the server captured both windows, and the monitor found the darker one
    assert re.search(r"window like training \(60 images\): \d+ violation", text)
    assert re.search(r"window darker \(60 images\): [1-9]\d* violation\(s\): .*brightness", text)
    monitor_report = Path(re.search(r"monitor: +(\S+report\.html)", text)[1])
    assert monitor_report.is_file() and len(list((monitor_report.parent / "executions").iterdir())) == 2
    # it ends with an explained prediction: the figure of where the model looked
    figure = Path(re.search(r"explained: +(\S+\.explain\.png) ", text)[1])
    assert figure.is_file() and figure.parent == out / "explained"
    assert re.search(r"CAM for .+ \(top-1 probability [\d.]+\): \S+\.explain\.png", text)
