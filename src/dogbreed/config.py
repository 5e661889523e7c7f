"""Typed training configuration: dataclass defaults -> YAML recipe -> command-line flags.

The same ``TrainConfig`` drives ``dogbreed train``, tuning trials and SageMaker training jobs
(``SM_*`` environment, ``--learning_rate``-style hyperparameters).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from dogbreed import remote
from dogbreed.errors import DogbreedError
from dogbreed.flags import check_choices
from dogbreed.flags import option as _opt
from dogbreed.machine import DEVICES, resolve_device
from dogbreed.runtime.network import BACKBONES
from dogbreed.runtime.pipeline import DEFAULT_KEEP, DEFAULT_THRESHOLD, OptionError, Options
from dogbreed.runtime.scores import SCORES
from dogbreed.selective import DEFAULT_ACCURACY as DEFAULT_UNSURE_ACCURACY

TRAIN_LAYERS = ("head", "layer4", "all")
SCHEDULERS = ("cosine", "none")
AMP_MODES = ("auto", "bf16", "off")
EMBED_BACKENDS = ("auto", "eager", "onnx")  # how the frozen backbone runs over the images (features.py)
REJECT_SCORES = (*SCORES, "none")


@dataclass
class TrainConfig:
    data: str | None = _opt(None, "data set root holding train/ valid/ test/ class folders, or s3://BUCKET/PREFIX/ (SageMaker: $SM_CHANNEL_TRAINING)")
    out: str = _opt("runs", "folder that receives one run folder per training; s3://BUCKET/PREFIX/ uploads its artifact there (SageMaker: $SM_OUTPUT_DATA_DIR)")
    name: str | None = _opt(None, "run folder name (default: the date, time and backbone)")
    backbone: str = _opt("resnet50", "network: " + ", ".join(BACKBONES), choices=tuple(BACKBONES))
    pretrained: bool = _opt(True, "start from ImageNet weights (downloaded once, cached by torchvision); --no-pretrained for random init")
    weights: str | None = _opt(None, "file (or s3://BUCKET/KEY) with the backbone's ImageNet weights (a torchvision state dict), for offline use")
    train_layers: str = _opt("head", "what to train: head (backbone frozen, fast cached path), layer4 (last stage + head) or all", choices=TRAIN_LAYERS)
    epochs: int = _opt(9, "training epochs")
    batch_size: int = _opt(29, "images per batch (under torchrun on images: the global batch, split over the ranks)")
    lr: float = _opt(0.0044, "AdamW learning rate (peak, before the schedule)")
    weight_decay: float = _opt(1e-4, "AdamW weight decay")
    label_smoothing: float = _opt(0.0, "cross-entropy label smoothing")
    scheduler: str = _opt("cosine", "learning-rate schedule over all steps", choices=SCHEDULERS)
    image_size: int = _opt(224, "crop size fed to the network; the resize keeps the weights' own ratio")
    aug_views: int = _opt(2, "augmented views cached per training image on the fast path (0 = no augmentation)")
    feature_cache: bool = _opt(True, "train a frozen backbone's head on cached embeddings; --no-feature-cache recomputes the backbone every epoch")
    embed_backend: str = _opt("auto", "how the frozen backbone embeds the images: auto (times PyTorch and ONNX Runtime on "
                                      "the first batch, takes the faster; exports only for jobs long enough to pay for it), "
                                      "eager or onnx", choices=EMBED_BACKENDS)
    cache_dir: str | None = _opt(None, "embedding cache folder (default: $DOGBREED_CACHE or ~/.cache/dogbreed)")
    patience: int = _opt(0, "stop after this many epochs without a better val_loss (0 = never stop early)")
    seed: int = _opt(0, "random seed (data order, augmentation, head init)")
    device: str = _opt("auto", DEVICES)
    amp: str = _opt("auto", "mixed precision: auto (bf16 where the device supports it), bf16 or off", choices=AMP_MODES)
    workers: int | None = _opt(None, "data-loader worker processes (default: the machine's cores)")
    rank_timeout: int = _opt(600, "under torchrun: end the job, naming the rank, once a rank has stopped answering, or "
                                  "has made no progress while the others wait for it, for this many seconds")
    threshold: float | None = _opt(None, "top-1 probability under which an answer says unsure (default: chosen on the "
                                         "validation split, the lowest that keeps --unsure-accuracy of the answers right)")
    unsure_accuracy: float = _opt(DEFAULT_UNSURE_ACCURACY, "how often the answers a model gives (not unsure) must be right "
                                                          "on the validation split, which places the unsure threshold")
    reject: str = _opt("mahalanobis", "the score that says \"not a dog\": mahalanobis (on the embeddings; measured best, "
                                      "benchmarks/RESULTS.md), energy, msp, imagenet (the ImageNet head's dog classes; "
                                      "needs ImageNet weights and --train-layers head), or none", choices=REJECT_SCORES)
    reject_keep: float = _opt(DEFAULT_KEEP, "share of the valid images the \"not a dog\" threshold keeps")
    calibrate: bool = _opt(True, "fit a temperature on the validation split so that a 0.9 is right 9 times in 10 "
                                 "(applied by every prediction); --no-calibrate to keep raw probabilities")
    profile: bool = _opt(True, "record system and step metrics and debugger tensors, run the rules live and write profile/report.html; --no-profile to skip")
    profile_interval_ms: int = _opt(500, "milliseconds between system samples (CPU, memory, disk, GPU)")
    debug_interval: int = _opt(25, "train steps between debugger records (loss, gradient/weight norms, update ratios; 0 = only the first steps)")
    trace_start: int = _opt(5, "first train step of the torch.profiler + cProfile window")
    trace_steps: int = _opt(5, "train steps in that window (0 = no trace)")
    rules: str | None = _opt(None, "YAML file of rule parameters and actions, e.g. `Overfit: {action: stop}` (see docs/profiling.md)")
    tracking_uri: str | None = _opt(None, "log the run to this MLflow tracking store (http://HOST:5000, sqlite:///FILE, "
                                          "...; default: $MLFLOW_TRACKING_URI, else not tracked; docs/tracking.md)")
    track: bool = _opt(False, "log the run to a local MLflow store, sqlite:///OUT/mlflow.db (`mlflow ui "
                              "--backend-store-uri` shows it)")

    def validate(self) -> "TrainConfig":
        check_choices(self)
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr}
        for key, value in positive.items():
            if not (math.isfinite(value) and value > 0):
                raise DogbreedError(f"{key} must be a positive number, got {value}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise DogbreedError(f"weight_decay must be a number at least 0, got {self.weight_decay}")
        try:
            Options(threshold=DEFAULT_THRESHOLD if self.threshold is None else self.threshold, keep=self.reject_keep)
        except OptionError as exc:  # named as the field that set it: Options' keep is reject_keep here
            raise DogbreedError(f"{'reject_keep' if exc.field == 'keep' else exc.field} {exc.problem}") from None
        if not 0.0 < self.unsure_accuracy <= 1.0:  # NaN fails too
            raise DogbreedError(f"unsure_accuracy must be in (0, 1], got {self.unsure_accuracy:g}")
        if self.image_size < 32:
            raise DogbreedError(f"image_size must be at least 32, got {self.image_size}")
        if self.aug_views < 0 or self.patience < 0 or (self.workers is not None and self.workers < 0):
            raise DogbreedError("aug_views, patience and workers cannot be negative")
        if self.rank_timeout < 5:
            raise DogbreedError(f"rank_timeout must be at least 5 seconds, got {self.rank_timeout}")
        if min(self.debug_interval, self.trace_start, self.trace_steps) < 0 or self.profile_interval_ms < 50:
            raise DogbreedError("debug_interval, trace_start and trace_steps cannot be negative; profile_interval_ms is at least 50")
        resolve_device(self.device)  # a device this machine has, or one line saying which it has
        remote.local_only(self.cache_dir, "cache_dir", "the embedding cache is a folder on this machine (an S3 data "
                                                       "set is mirrored under it)")
        if self.name is not None and (self.name in ("", ".", "..") or "/" in self.name or os.sep in self.name):
            raise DogbreedError(f"name {self.name!r} must be a plain folder name (no '/', not '.' or '..'): "
                                f"the run's folder is made inside --out")
        if self.reject == "imagenet" and (self.train_layers != "head" or not (self.pretrained or self.weights)):
            raise DogbreedError("--reject imagenet reads the ImageNet head on the backbone's own embeddings: it needs "
                                "ImageNet weights (--pretrained or --weights) and a frozen backbone (--train-layers head)")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise DogbreedError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def uses_feature_cache(self) -> bool:
        return self.train_layers == "head" and self.feature_cache


FIELD_TYPES = {f.name: f.type for f in fields(TrainConfig)}
# Settings that change how a run is observed, never what it learns.
PROFILE_KEYS = {"profile", "profile_interval_ms", "debug_interval", "trace_start", "trace_steps", "rules"}
TRUTH = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}  # a boolean as a word


def coerce(key: str, value: Any) -> Any:
    """Cast a YAML/CLI value to the field's type, naming the key when it does not fit."""
    if key not in FIELD_TYPES:
        valid = ", ".join(FIELD_TYPES)
        raise DogbreedError(f"unknown config key {key!r}; valid keys: {valid}")
    kind = FIELD_TYPES[key]
    if value is None:
        if "None" in kind:
            return None
        raise DogbreedError(f"config key {key!r} cannot be empty")
    try:
        if kind.startswith("bool"):
            return TRUTH[value.lower()] if isinstance(value, str) else bool(value)
        if kind.startswith("int"):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if kind.startswith("float"):
            return float(value)
        return str(value)
    except (TypeError, ValueError, KeyError):
        raise DogbreedError(f"config key {key!r} expects {kind}, got {value!r}") from None


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    doc = remote.read_yaml(path, "config file") or {}
    if not isinstance(doc, dict):
        raise DogbreedError(f"config file {path} must be a mapping of key: value")
    return {key: coerce(key, value) for key, value in doc.items()}


def resolve(recipe: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults, then the recipe file, then overrides (flags): later wins."""
    values: dict[str, Any] = {}
    if recipe:
        values.update(load_yaml(recipe))
    values.update({k: coerce(k, v) for k, v in (overrides or {}).items()})
    return apply_sagemaker_env(TrainConfig(**values), given=set(values)).validate()


def save_yaml(cfg: TrainConfig, path: str | os.PathLike) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")


# --- SageMaker training-job compatibility ----------------------------------------------------------

# SageMaker passes hyperparameters as --key value with the names users gave them in the estimator.
SAGEMAKER_ALIASES = {"learning_rate": "lr", "learning-rate": "lr", "model_name": "backbone"}
BOOL_FLAGS = {k.replace("_", "-") for k, kind in FIELD_TYPES.items() if kind.startswith("bool")}


@dataclass(frozen=True)
class Flag:
    """One ``--name`` of a command line as SageMaker or a person wrote it, and what it means to us."""

    given: str  # as written, any "=value" included: "--learning_rate", "--batch_size=8"
    name: str  # our flag's name: "lr", "batch-size"
    value: str | None  # after "=", or the next word unless that is a flag; None: neither
    inline: bool = False  # the value came after "="

    @property
    def key(self) -> str:
        """The TrainConfig field it names, if it names one: "lr", "batch_size"."""
        return self.name.replace("-", "_")

    def ours(self) -> list[str]:
        """Our spelling: ``--lr 0.01``, ``--batch-size=8``; a boolean given as a word, ``--no-pretrained``."""
        if self.name in BOOL_FLAGS and self.value is not None and self.value.lower() in TRUTH:
            return [f"--{self.name}" if TRUTH[self.value.lower()] else f"--no-{self.name}"]
        if self.value is None:
            return [f"--{self.name}"]
        return [f"--{self.name}={self.value}"] if self.inline else [f"--{self.name}", self.value]


def _is_flag(word: str) -> bool:
    return word.startswith("--") and len(word) > 2


def read_argv(argv: list[str]) -> list[Flag | str]:
    """The words of a command line: each ``--name[=value]`` with the value that follows it as a
    :class:`Flag` (SageMaker's ``--learning_rate`` is our ``lr``, ``_`` is ``-``), the rest as they are."""
    words: list[Flag | str] = []
    i = 0
    while i < len(argv):
        word = argv[i]
        i += 1
        if not _is_flag(word):
            words.append(word)
            continue
        raw, eq, value = word[2:].partition("=")
        name = SAGEMAKER_ALIASES.get(raw, raw).replace("_", "-")
        if eq:
            words.append(Flag(word, name, value, inline=True))
        elif i < len(argv) and not _is_flag(argv[i]):
            words.append(Flag(word, name, argv[i]))
            i += 1
        else:
            words.append(Flag(word, name, None))
    return words


def normalize_argv(argv: list[str]) -> list[str]:
    """SageMaker's spelling to ours: ``--learning_rate 0.01`` -> ``--lr 0.01``, ``--batch_size`` ->
    ``--batch-size``, and booleans passed as values, ``--pretrained False`` -> ``--no-pretrained``."""
    return [w for word in read_argv(argv) for w in (word.ours() if isinstance(word, Flag) else [word])]


def apply_sagemaker_env(cfg: TrainConfig, given: set[str]) -> TrainConfig:
    """Inside a SageMaker training job, read the data and output locations from SM_* variables."""
    env = os.environ
    if "data" not in given and env.get("SM_CHANNEL_TRAINING"):
        cfg.data = env["SM_CHANNEL_TRAINING"]
    if "out" not in given and env.get("SM_OUTPUT_DATA_DIR"):
        cfg.out = env["SM_OUTPUT_DATA_DIR"]
    return cfg


def sagemaker_model_dir() -> str | None:
    """Where a SageMaker job must leave the model (SageMaker tars this folder into model.tar.gz)."""
    return os.environ.get("SM_MODEL_DIR") or None


def write_sagemaker_failure(reason: str) -> None:
    """SageMaker's failure file (shown as the job's failure reason), in a job only: its output
    folder exists, or SAGEMAKER_BASE_DIR says where. One that cannot be written is one line on
    stderr: the job is failing already, and its reason was said there."""
    base = os.environ.get("SAGEMAKER_BASE_DIR")
    output = Path(base or "/opt/ml") / "output"
    if base or output.is_dir():
        try:
            output.mkdir(parents=True, exist_ok=True)
            (output / "failure").write_text(reason.strip().splitlines()[0] + "\n", encoding="utf-8")
        except OSError as exc:
            print(f"error: could not write SageMaker's failure file {output / 'failure'}: "
                  f"{exc.strerror or type(exc).__name__}", file=sys.stderr)
