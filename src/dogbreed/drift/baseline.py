"""The baseline a monitor compares against: what the model saw and answered on its validation split.

    statistics.json   per feature, SageMaker Model Monitor's shape: counts, mean, quantiles,
                      histogram buckets (numerical) or category counts (string)
    constraints.json  per feature its type, completeness and domain, and the monitor's settings
                      (the false-alarm rate, the unreadable share, the accuracy floor), in
                      SageMaker's shapes where a field fits; edit it to change what a run checks
    sketch.npz        what the two-sample tests read: the embeddings' principal components and the
                      validation images projected on them, and samples of each numerical feature

Every training run writes one into its artifact (``baseline/``) and its run folder; ``dogbreed
monitor baseline`` makes one for an older artifact from a data set's validation split.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dogbreed.drift.observe import VERDICTS, Observations
from dogbreed.errors import DogbreedError
from dogbreed.files import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

FOLDER = "baseline"  # inside an artifact and a run folder
FILES = ("statistics.json", "constraints.json", "sketch.npz")
COMPONENTS = 32  # principal components of the embeddings kept for the drift test
SAMPLE = 1000  # validation images kept for each two-sample test
FACTS_SAMPLE = 300  # validation images whose size and brightness a run's end reads
DEFAULTS = {"alpha": 0.01, "permutations": 2000, "max_unreadable": 0.01, "accuracy_margin": 0.05, "min_ground_truth": 30}
NUMERICAL = (("top1_probability", "Fractional"), ("ood_score", "Fractional"), ("brightness", "Fractional"),
             ("image_width", "Integral"), ("image_height", "Integral"))


def numerical(obs: Observations) -> dict[str, np.ndarray]:
    """Each numerical feature's values (the "not a dog" score only where the artifact has one)."""
    values = {"top1_probability": obs.top1, "brightness": obs.brightness, "image_width": obs.width,
              "image_height": obs.height}
    if obs.ood is not None:
        values["ood_score"] = obs.ood
    return values


def categorical(obs: Observations, labels: list[str]) -> dict[str, dict[str, int]]:
    breeds = np.bincount(obs.predicted.astype(int), minlength=len(labels)) if obs.n else np.zeros(len(labels), int)
    return {"predicted_breed": {labels[i]: int(c) for i, c in enumerate(breeds)},
            "verdict": {v: obs.verdicts.count(v) for v in VERDICTS}}


def statistics(obs: Observations, labels: list[str]) -> dict:
    """``statistics.json`` of a set of observations (a baseline's, or a window's)."""
    features = []
    for name, counts in categorical(obs, labels).items():
        features.append({"name": name, "inferred_type": "String", "string_statistics": {
            "common": {"num_present": obs.n, "num_missing": obs.unreadable},
            "distinct_count": sum(1 for c in counts.values() if c),
            "distribution": {"categorical": {"buckets": [{"value": k, "count": c} for k, c in counts.items() if c]}}}})
    values = numerical(obs)
    for name, kind in NUMERICAL:
        if name not in values:
            continue
        v = np.asarray(values[name], dtype=np.float64)
        entry = {"common": {"num_present": len(v), "num_missing": obs.n + obs.unreadable - len(v)}}
        if len(v):
            edges = np.linspace(v.min(), v.max(), 11) if v.max() > v.min() else np.array([v.min(), v.min()])
            counts = np.histogram(v, bins=edges)[0] if len(edges) > 2 else np.array([len(v)])
            entry.update({"mean": float(v.mean()), "sum": float(v.sum()), "std_dev": float(v.std()), "min": float(v.min()),
                          "max": float(v.max()),
                          "quantiles": {str(q): float(np.quantile(v, q)) for q in (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)},
                          "distribution": {"kll": {"buckets": [
                              {"lower_bound": float(lo), "upper_bound": float(hi), "count": float(c)}
                              for lo, hi, c in zip(edges[:-1], edges[1:], counts)]}}})
        features.append({"name": name, "inferred_type": kind, "numerical_statistics": entry})
    return {"version": 0.0, "dataset": {"item_count": obs.n + obs.unreadable}, "features": features,
            "embedding": {"dimensions": int(obs.embeddings.shape[1]), "images": obs.n}}


def constraints(obs: Observations, labels: list[str], accuracy: float | None, settings: dict | None = None) -> dict:
    """``constraints.json``: each feature's type, completeness and domain, and what the monitor's
    checks compare with."""
    config = {**DEFAULTS, **(settings or {})}
    features = [{"name": "predicted_breed", "inferred_type": "String", "completeness": 1.0,
                 "string_constraints": {"domains": list(labels)}},
                {"name": "verdict", "inferred_type": "String", "completeness": 1.0,
                 "string_constraints": {"domains": list(VERDICTS)}}]
    features += [{"name": name, "inferred_type": kind, "completeness": 1.0, "num_constraints": {"is_non_negative": name != "ood_score"}}
                 for name, kind in NUMERICAL if name in numerical(obs)]
    doc = {"version": 0.0, "features": features,
           "monitoring_config": {"evaluate_constraints": "Enabled", "emit_metrics": "Enabled",
                                 "distribution_constraints": {"perform_comparison": "Enabled",
                                                              "comparison_threshold": config["alpha"]},
                                 "dogbreed": {k: config[k] for k in ("permutations", "max_unreadable", "min_ground_truth")}}}
    if accuracy is not None:
        doc["multiclass_classification_constraints"] = {"accuracy": {
            "threshold": round(max(0.0, accuracy - config["accuracy_margin"]), 6), "comparison_operator": "LessThanThreshold",
            "baseline": round(accuracy, 6), "margin": config["accuracy_margin"]}}
    return doc


def sketch(obs: Observations, seed: int = 0) -> dict[str, np.ndarray]:
    """The samples the two-sample tests read, at most :data:`SAMPLE` of each."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    emb = obs.embeddings.astype(np.float64)
    if emb.shape[1] and obs.n >= 2:
        mean = emb.mean(axis=0)
        # principal components from the SVD of the centred embeddings (no more than the images allow)
        _, singular, vt = np.linalg.svd(emb - mean, full_matrices=False)
        k = min(COMPONENTS, vt.shape[0])
        out["embedding_mean"] = mean.astype(np.float32)
        out["embedding_components"] = vt[:k].astype(np.float32)
        out["embedding_sample"] = _sample(((emb - mean) @ vt[:k].T).astype(np.float32), rng)
    for name, values in numerical(obs).items():
        out[name] = _sample(np.asarray(values, dtype=np.float64), rng)
    return out


def _sample(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return values if len(values) <= SAMPLE else values[np.sort(rng.choice(len(values), SAMPLE, replace=False))]


@dataclass
class Baseline:
    statistics: dict
    constraints: dict
    sketch: dict[str, np.ndarray]
    source: str = ""

    @classmethod
    def of(cls, obs: Observations, labels: list[str], accuracy: float | None = None, settings: dict | None = None) -> "Baseline":
        if obs.n < 2:
            raise DogbreedError(f"a baseline needs at least 2 readable validation images, got {obs.n}")
        return cls(statistics(obs, labels), constraints(obs, labels, accuracy, settings), sketch(obs))

    def setting(self, key: str):
        if key == "alpha":
            return self.constraints["monitoring_config"]["distribution_constraints"]["comparison_threshold"]
        return self.constraints["monitoring_config"].get("dogbreed", {}).get(key, DEFAULTS.get(key))

    @property
    def accuracy_floor(self) -> dict | None:
        return self.constraints.get("multiclass_classification_constraints", {}).get("accuracy")

    def counts(self, name: str) -> dict[str, int]:
        feature = next(f for f in self.statistics["features"] if f["name"] == name)
        return {b["value"]: int(b["count"]) for b in feature["string_statistics"]["distribution"]["categorical"]["buckets"]}

    def write(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "statistics.json", json.dumps(self.statistics, indent=1))
        atomic_write_text(folder / "constraints.json", json.dumps(self.constraints, indent=1))
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **self.sketch)
        atomic_write_bytes(folder / "sketch.npz", buffer.getvalue())
        return folder

    @classmethod
    def load(cls, where: str | Path) -> "Baseline":
        """From a baseline folder, an artifact (``model.tar.gz`` or its folder) that holds one, or a
        run folder."""
        path = Path(where)
        if path.is_file() and tarfile.is_tarfile(path):
            return cls._from_tar(path)
        for folder in (path, path / FOLDER):
            if all((folder / f).is_file() for f in FILES):
                return cls._from_files({f: (folder / f).read_bytes() for f in FILES}, str(folder))
        if (path / "model.tar.gz").is_file():
            return cls._from_tar(path / "model.tar.gz")
        what = "does not exist" if not path.exists() else "holds no baseline"
        raise DogbreedError(f"--baseline {where} {what}; pass an artifact trained by this version (it keeps one in "
                            f"baseline/), a run folder, or a folder from `dogbreed monitor baseline`")

    @classmethod
    def _from_tar(cls, path: Path) -> "Baseline":
        with tarfile.open(path) as tar:
            found = {}
            for member in tar.getmembers():
                name = member.name.removeprefix("./")
                if member.isfile() and name.startswith(f"{FOLDER}/") and name.split("/", 1)[1] in FILES:
                    found[name.split("/", 1)[1]] = tar.extractfile(member).read()
        if set(found) != set(FILES):
            raise DogbreedError(f"{path} holds no baseline (an artifact from before baselines); make one with "
                                f"`dogbreed monitor baseline --model {path} --data DIR`")
        return cls._from_files(found, str(path))

    @classmethod
    def _from_files(cls, files: dict[str, bytes], source: str) -> "Baseline":
        try:
            with np.load(io.BytesIO(files["sketch.npz"]), allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
            return cls(json.loads(files["statistics.json"]), json.loads(files["constraints.json"]), arrays, source)
        except (ValueError, OSError, KeyError) as exc:
            raise DogbreedError(f"the baseline in {source} is damaged ({exc}); make it again with "
                                f"`dogbreed monitor baseline`") from None


def at_run_end(model_dir: Path, logits, features, valid_files: list[str], accuracy: float) -> Baseline:
    """A finished run's baseline, from the best epoch's outputs on the validation split (no second
    pass through the network) and the validation images' size and brightness."""
    from dogbreed.drift.observe import from_outputs, image_facts
    from dogbreed.runtime.loading import load_model_dir

    model = load_model_dir(str(model_dir), device="cpu")
    # size and brightness from a sample (a header and a reduced decode each, ~2 ms a photo): enough
    # for their two-sample tests, and a bounded cost at the end of every run
    rng = np.random.default_rng(0)
    picked = valid_files if len(valid_files) <= FACTS_SAMPLE else [
        valid_files[i] for i in np.sort(rng.choice(len(valid_files), FACTS_SAMPLE, replace=False))]
    facts = [image_facts(Path(path).read_bytes()) for path in picked]
    obs = from_outputs(model, logits, features, facts)
    return Baseline.of(obs, model.labels, accuracy)


def from_data(model_path: str, data: str, out: str, *, split: str = "valid", progress: bool = True) -> Baseline:
    """``dogbreed monitor baseline``: a baseline for an artifact (one from before baselines, or to
    judge against other data) from a data set's split, through the inference path."""
    import torch
    from tqdm import tqdm

    from dogbreed import registry, remote
    from dogbreed.artifact import load_artifact
    from dogbreed.data.layout import IMAGE_EXTS, SPLITS, model_index, scan
    from dogbreed.drift.observe import observe

    if split not in SPLITS:
        raise DogbreedError(f"--split {split!r} is not a split; choose one of: {', '.join(SPLITS)}")
    layout = scan(remote.staged(data, IMAGE_EXTS, progress=progress).root)
    model = load_artifact(registry.model_file(model_path, progress=progress), backend="auto", name=model_path,
                          images=len(layout.splits[split]))
    index = model_index(layout, model.labels, data)
    samples = [(path, index[layout.labels.names[label]]) for path, label in layout.splits[split]]
    bar = tqdm(total=len(samples), desc=f"baseline on {split}", unit="img", disable=not progress, leave=False)
    obs = observe(model, [Path(p).read_bytes() for p, _ in samples], progress=bar.update)  # keys: sample indices
    bar.close()
    truth = torch.tensor([samples[k][1] for k in obs.keys])
    accuracy = float((torch.from_numpy(obs.predicted) == truth).double().mean()) if obs.n else None
    baseline = Baseline.of(obs, model.labels, accuracy)
    with remote.written_folder(out, "--out") as folder:
        baseline.write(folder)
    return baseline
