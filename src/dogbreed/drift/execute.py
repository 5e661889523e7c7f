"""``dogbreed monitor run``: one monitoring execution, as a scheduled SageMaker monitoring job runs
one: read the window's captured requests, re-embed their images on the fastest backend, compare
them with the baseline, and write what was found.

    OUT/executions/<window end>/constraint_violations.json   SageMaker's shape
                               /statistics.json              the window's, the baseline's shape
                               /checks.json                  every check: statistic, p-value, threshold
                               /model_quality.json           with --ground-truth
    OUT/report.html                                           every execution's checks over time,
                                                              the latest's most unusual images

The exit status tells a scheduler what was found: 0 none, 3 violations (1 is an error).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from dogbreed import registry, remote, tracking
from dogbreed.capture import records
from dogbreed.drift import checks, quality, report
from dogbreed.drift import window as windows
from dogbreed.drift.baseline import Baseline, categorical, numerical, statistics
from dogbreed.drift.observe import Observations, observe
from dogbreed.errors import DogbreedError
from dogbreed.files import atomic_write_text, make_folder
from dogbreed.runtime.loading import LoadedModel

log = logging.getLogger(__name__)

VIOLATIONS_EXIT = 3
DRIFT = "baseline_drift_check"
QUALITY = "data_quality_check"
UNUSUAL = 8  # captured images shown in the report


@dataclass
class Execution:
    folder: Path | None
    checks: list[checks.Check]
    images: int
    requests: int
    quality: dict | None = None
    seconds: dict = field(default_factory=dict)  # per phase: read, load, embed, judge, write

    @property
    def violations(self) -> list[checks.Check]:
        return [c for c in self.checks if c.violated]


def compare(baseline: Baseline, obs: Observations, labels: list[str], *, alpha: float | None = None, max_unreadable: float | None = None,
            permutations: int | None = None) -> list[checks.Check]:
    """Every check of a window's observations against the baseline; each test at ``alpha / m``."""
    alpha = baseline.setting("alpha") if alpha is None else alpha
    max_unreadable = baseline.setting("max_unreadable") if max_unreadable is None else max_unreadable
    permutations = int(baseline.setting("permutations") if permutations is None else permutations)
    tests: list[tuple[str, float, float, str]] = []  # name, statistic, p-value, what moved
    sketch = baseline.sketch
    if obs.n >= 2 and "embedding_sample" in sketch and obs.embeddings.shape[1] == sketch["embedding_mean"].shape[0]:
        projected = (obs.embeddings - sketch["embedding_mean"]) @ sketch["embedding_components"].T
        mmd, p = checks.mmd_test(projected, sketch["embedding_sample"], permutations)
        tests.append(("embedding", mmd, p, "the images' embeddings (MMD^2, permutation test)"))
    if obs.n:
        chi2, p = checks.shares_test(baseline.counts("predicted_breed"), categorical(obs, labels)["predicted_breed"])
        tests.append(("predicted_breed", chi2, p, "the shares of the predicted breeds (chi-square)"))
        base_verdicts = baseline.counts("verdict")
        base_n = sum(base_verdicts.values())
        for verdict in ("not_a_dog", "unsure"):
            diff, p = checks.proportion_test(base_verdicts.get(verdict, 0), base_n, obs.verdicts.count(verdict), obs.n)
            tests.append((f"{verdict}_share", diff, p, f"the share of {verdict} answers (difference of shares)"))
    window_values = numerical(obs)
    for name, values in window_values.items():
        if name in sketch and len(values):
            d, p = checks.ks_test(sketch[name], np.asarray(values, dtype=np.float64))
            tests.append((name, d, p, f"the distribution of {name.replace('_', ' ')} (Kolmogorov-Smirnov D)"))
    each = alpha / max(len(tests), 1)
    found = [checks.Check(name, DRIFT, stat, p, each, p < each,
                          f"{what}: {stat:.4g}, p = {p:.3g} {'<' if p < each else '>='} {each:.3g} (alpha {alpha:g} "
                          f"over {len(tests)} tests)")
             for name, stat, p, what in tests]
    total = obs.n + obs.unreadable
    if total:
        share = obs.unreadable / total
        found.append(checks.Check("unreadable", QUALITY, None, None, max_unreadable, share > max_unreadable,
                                  f"{obs.unreadable} of {total} inputs ({share:.1%}) are not readable images "
                                  f"(threshold {max_unreadable:.1%})", value=share))
    return found


def run(capture: str, baseline: str, *, model: str | None = None, ground_truth: str | None = None,
        start: str | None = None, end: str | None = None, out: str = "monitoring", alpha: float | None = None,
        backend: str = "auto", progress: bool = True, tracking_uri: str | None = None) -> Execution:
    """One execution over the window [start, end) (default: everything captured up to now).
    ``tracking_uri``: an MLflow store where the execution's figures and files are logged, in the
    model's run where the artifact names one there (``tracking.log_to_model_run``)."""
    from dogbreed.artifact import load_artifact

    remote.local_only(out, "--out", "each execution adds to the history its report plots, kept in a folder here "
                                    "(copy it to S3 with `aws s3 sync`)")
    if alpha is not None and not 0 < alpha < 1:
        raise DogbreedError(f"--alpha must be between 0 and 1, got {alpha:g}")
    base = Baseline.load(remote.staged_file(baseline) if remote.is_s3(baseline) else baseline)
    model_path = model or _artifact_of(baseline)
    window = records.Window(_time(start, "--start"), _time(end, "--end") or datetime.now(timezone.utc))
    if window.start and window.start >= window.end:
        raise DogbreedError(f"--start {start} is not before --end {window.end:%Y-%m-%dT%H:%M:%SZ}")
    clock = _Clock()
    found = windows.read(_capture_root(capture, progress), window)
    clock.lap("read")
    if not found.requests:
        since = f"from {records.timestamp(window.start)} " if window.start else ""
        log.warning("no captured request %sup to %s under %s", since, records.timestamp(window.end), capture)
    loaded = load_artifact(registry.model_file(model_path), backend=backend, name=model_path, images=len(found.items))
    clock.lap("load")
    obs = observe(loaded, [i.image for i in found.items], [i.key for i in found.items], progress=_bar(progress, found))
    clock.lap("embed")
    log.info("re-embedded %d captured images from %d requests in %.1fs (%s)", len(found.items), found.requests,
             clock.seconds["embed"], loaded.backend)
    found_checks = compare(base, obs, loaded.labels, alpha=alpha) if found.items else []
    model_quality = None
    if ground_truth:
        model_quality, check = _quality(base, loaded, found, obs, ground_truth)
        found_checks += [check] if check else []
    clock.lap("judge")
    folder = make_folder(Path(out) / "executions" / f"{window.end:%Y-%m-%dT%H-%M-%SZ}", "--out")
    doc = statistics(obs, loaded.labels)
    doc["dataset"].update({"requests": found.requests, "without_input": found.without_input,
                           "window": {"start": window.start and records.timestamp(window.start),
                                      "end": records.timestamp(window.end)}})
    atomic_write_text(folder / "statistics.json", json.dumps(doc, indent=1))
    violations = [{"feature_name": c.name, "constraint_check_type": c.kind, "description": c.description}
                  for c in found_checks if c.violated]
    atomic_write_text(folder / "constraint_violations.json", json.dumps({"violations": violations}, indent=1))
    atomic_write_text(folder / "checks.json", json.dumps({
        "window": doc["dataset"]["window"], "images": obs.n, "unreadable": obs.unreadable, "requests": found.requests,
        "seconds": {k: round(v, 3) for k, v in clock.seconds.items()}, "backend": loaded.backend, "baseline": base.source,
        "checks": [c.to_dict() for c in found_checks]}, indent=1))
    if model_quality is not None:
        atomic_write_text(folder / "model_quality.json", json.dumps(model_quality, indent=1))
    report.write(Path(out), _unusual(obs, found))
    clock.lap("write")
    done = Execution(folder, found_checks, obs.n + obs.unreadable, found.requests, model_quality, clock.seconds)
    if tracking_uri:
        _track(tracking_uri, loaded, str(model_path), done, window.end)
    return done


def _track(uri: str, model: LoadedModel, model_path: str, done: Execution, end: datetime) -> None:
    """An execution as ``monitor.*`` metrics at the step of its window's end (seconds since the
    epoch, so executions line up in time) and its files under ``monitoring/<end>/``."""
    accuracy = ((done.quality or {}).get("multiclass_classification_metrics") or {}).get("accuracy", {}).get("value")
    figures = {"monitor.images": done.images, "monitor.requests": done.requests,
               "monitor.violations": len(done.violations), "monitor.accuracy": accuracy}
    tracking.log_to_model_run(uri, model.meta, model_path, "monitor", figures,
                              sorted(p for p in done.folder.iterdir() if p.is_file()),
                              f"monitoring/{done.folder.name}", step=int(end.timestamp()))


def _quality(base: Baseline, model: LoadedModel, found: windows.Window, obs: Observations,
             folder: str) -> tuple[dict, checks.Check | None]:
    """Model quality on the captured images whose ground truth came back: the endpoint's own answer
    where its output was captured, else the prediction made here."""
    truth = windows.ground_truth(folder)
    predicted_here = dict(zip(obs.keys, obs.predicted.tolist()))
    pairs, unmatched, unknown = [], 0, 0
    for item in found.items:
        label = truth.get(item.inference_id or "") or truth.get(item.event_id)
        if label is None:
            unmatched += 1
            continue
        true = quality.label_index(label, model.labels, model.display)
        answered = item.answer.get("topk_indices", [None])[0] if item.answer else predicted_here.get(item.key)
        if true is None or answered is None:
            unknown += 1
            continue
        pairs.append((true, int(answered)))
    doc = {"version": 0.0, "dataset": {"item_count": len(pairs), "without_ground_truth": unmatched,
                                       "unknown_or_unreadable": unknown, "ground_truth_records": len(truth)}}
    if not pairs:
        log.warning("no captured image in the window has ground truth under %s (joined on inferenceId, else eventId)",
                    folder)
        return doc, None
    doc["multiclass_classification_metrics"] = quality.multiclass(*zip(*pairs), model.labels)
    accuracy = doc["multiclass_classification_metrics"]["accuracy"]["value"]
    floor = base.accuracy_floor
    if floor is None:
        return doc, None
    least = int(base.setting("min_ground_truth"))
    enough = len(pairs) >= least
    violated = enough and accuracy < floor["threshold"]
    description = (f"accuracy {accuracy:.3f} on {len(pairs)} images with ground truth is "
                   f"{'under' if accuracy < floor['threshold'] else 'at or over'} {floor['threshold']:.3f} "
                   f"(the baseline's {floor['baseline']:.3f} less {floor['margin']:g})")
    if not enough:
        description += f"; not judged: fewer than {least} images"
    return doc, checks.Check("accuracy", "multiclass_classification_check", None, None, floor["threshold"], violated,
                             description, value=accuracy)


class _Clock:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase], self._last = now - self._last, now


def _unusual(obs: Observations, found: windows.Window) -> list[dict]:
    """The captured images least like the training data: the lowest "not a dog" scores (else the
    least confident answers)."""
    if not obs.n:
        return []
    score = obs.ood if obs.ood is not None else obs.top1
    images = {item.key: item for item in found.items}
    picked = np.argsort(score)[:UNUSUAL]
    return [{"key": obs.keys[i], "image": images[obs.keys[i]].image, "score": float(score[i]),
             "verdict": obs.verdicts[i], "time": images[obs.keys[i]].time} for i in picked]


def _artifact_of(baseline: str) -> str:
    path = Path(baseline)
    if remote.is_s3(baseline) or path.is_file():
        return baseline
    if (path / "model.tar.gz").is_file():
        return str(path / "model.tar.gz")
    raise DogbreedError(f"--baseline {baseline} is a baseline folder: name the model that serves with --model")


def _capture_root(capture: str, progress: bool) -> Path:
    if remote.is_s3(capture):
        return remote.stage(capture, {".jsonl"}, progress=progress, empty="serve with --capture to write records there").root
    root = Path(capture)
    if not root.is_dir():
        raise DogbreedError(f"--capture {capture} is not a folder; pass the folder `dogbreed serve --capture` wrote to")
    return root


def _time(text: str | None, flag: str) -> datetime | None:
    if text is None:
        return None
    try:
        return records.parse_time(text)
    except ValueError:
        raise DogbreedError(f"{flag} {text!r} is not a time; use ISO 8601, e.g. 2026-12-07T03:00:00Z") from None


def _bar(progress: bool, found: windows.Window):
    if not progress or not found.items:
        return None
    from tqdm import tqdm

    bar = tqdm(total=len(found.items), desc="re-embedding", unit="img", leave=False)
    return bar.update


class Gauges:
    """The last execution's results as Prometheus gauges, served on ``127.0.0.1:port`` while
    ``--every`` runs beside the server (scraped like the server's own /metrics)."""

    def __init__(self, port: int):
        from prometheus_client import CollectorRegistry, Gauge, start_http_server

        self.registry = CollectorRegistry()
        self.violations = Gauge("dogbreed_monitor_violations", "Violations found by the last execution", registry=self.registry)
        self.images = Gauge("dogbreed_monitor_images", "Captured images in the last execution's window", registry=self.registry)
        self.finished = Gauge("dogbreed_monitor_last_execution_timestamp_seconds", "When the last execution ended",
                              registry=self.registry)
        self.p_value = Gauge("dogbreed_monitor_check_p_value", "Each test's p-value in the last execution", ["check"],
                             registry=self.registry)
        self.value = Gauge("dogbreed_monitor_check_value", "Each threshold check's value (a share, an accuracy)", ["check"],
                           registry=self.registry)
        self.violated = Gauge("dogbreed_monitor_check_violated", "1 where the last execution found the check violated",
                              ["check"], registry=self.registry)
        try:
            start_http_server(port, addr="127.0.0.1", registry=self.registry)
        except OSError as exc:
            raise DogbreedError(f"--metrics-port {port}: {exc.strerror or exc}; pick another port") from None

    def update(self, done: Execution) -> None:
        self.violations.set(len(done.violations))
        self.images.set(done.images)
        self.finished.set(time.time())
        for check in done.checks:
            (self.p_value if check.p_value is not None else self.value).labels(check.name).set(
                check.p_value if check.p_value is not None else (check.value or 0.0))
            self.violated.labels(check.name).set(int(check.violated))


def every(period: str, metrics_port: int | None = None, **kwargs) -> None:
    """Run an execution at the end of each period (``30m``, ``1h``, ``1d``, aligned to the clock)
    over the period just ended, until interrupted."""
    step = parse_period(period)
    gauges = Gauges(metrics_port) if metrics_port is not None else None
    seconds = step.total_seconds()
    # the period under way; each next one starts where the last ended, so a slow execution skips none
    start = datetime.fromtimestamp(datetime.now(timezone.utc).timestamp() // seconds * seconds, timezone.utc)
    while True:
        end = start + step
        log.info("next execution at %s", records.timestamp(end))
        time.sleep(max(0.0, (end - datetime.now(timezone.utc)).total_seconds()))
        done = run(**{**kwargs, "start": _iso(start), "end": _iso(end)})
        log.info("execution over %s to %s: %d images, %d violation(s)", _iso(start), _iso(end), done.images,
                 len(done.violations))
        if gauges:
            gauges.update(done)
        start = end


def _iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def parse_period(text: str) -> timedelta:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        seconds = float(text[:-1]) * units[text[-1]]
    except (KeyError, ValueError, IndexError):
        seconds = 0
    if not seconds >= 1:
        raise DogbreedError(f"--every {text!r} is not a period; use e.g. 30m, 1h or 1d")
    return timedelta(seconds=seconds)
