"""SageMaker's Debugger rules, with its names, defaults and semantics, over dogbreed's recorded
tensors (every ``debug_interval`` train steps, every step for the first few) and epoch metrics.

Where SageMaker compares per-step losses, dogbreed's loss at a recorded step is the mean training
loss since the previous record, and validation losses are per epoch (the mean over the whole
valid split): the same questions, asked of less noisy numbers.
"""

from __future__ import annotations

import math

from dogbreed.monitor.rules.base import Rule, num


def _named(record: dict, key: str) -> list[tuple[str, float]]:
    return list(zip(record.get("names", []), (num(v) for v in record.get(key, []))))


def _few(names: list[str], limit: int = 3) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


class VanishingGradient(Rule):
    name, kind = "VanishingGradient", "debugger"
    description = "Detects gradients that vanish: the mean absolute gradient of a trained tensor falls under `threshold`."
    recommendation = "Raise the learning rate, check the initialisation, or train fewer frozen-in-between layers; normalisation layers help deep networks."
    defaults = {"threshold": 1e-7}
    streams = ("tensors",)

    def observe(self, stream: str, record: dict) -> None:
        grads = _named(record, "grad_abs_mean")
        if not grads:
            return
        self.datapoints += len(grads)
        small = [n for n, g in grads if g < self.params["threshold"]]
        self.check(bool(small), record, f"mean |gradient| under {self.params['threshold']:g} in {_few(small)}")


class ExplodingTensor(Rule):
    name, kind = "ExplodingTensor", "debugger"
    description = "Detects non-finite values (NaN, or infinity unless only_nan) in the loss, gradients or weights."
    recommendation = "Lower the learning rate, clip gradients, or check the input data for NaN; bf16 overflow can also cause it (--amp off)."
    defaults = {"only_nan": False}
    streams = ("tensors",)

    def bad(self, value: float) -> bool:
        return math.isnan(value) or (not self.params["only_nan"] and math.isinf(value))

    def observe(self, stream: str, record: dict) -> None:
        found = ["loss"] if self.bad(num(record.get("loss"))) else []
        for key in ("grad_l2", "weight_l2"):
            found += [f"{key.split('_')[0]}:{n}" for n, v in _named(record, key) if self.bad(v)]
        self.datapoints += 1 + 2 * len(record.get("names", []))
        self.check(bool(found), record, f"non-finite values in {_few(found)}")


class Overfit(Rule):
    name, kind = "Overfit", "debugger"
    description = "Detects overfitting: (val_loss - train_loss) / train_loss exceeds ratio_threshold for `patience` epochs in a row, from start_step on."
    recommendation = "Regularise: more augmentation (--aug-views), weight decay, label smoothing, fewer epochs, or early stopping (--patience)."
    defaults = {"ratio_threshold": 0.1, "patience": 1, "start_step": 0}
    streams = ("events",)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.run = 0

    def observe(self, stream: str, record: dict) -> None:
        if record.get("event") != "epoch" or record.get("step", 0) < self.params["start_step"]:
            return
        self.datapoints += 1
        train, val = num(record["train_loss"]), num(record["val_loss"])
        ratio = (val - train) / train if train > 0 else math.inf
        self.run = self.run + 1 if ratio > self.params["ratio_threshold"] else 0
        self.check(self.run >= self.params["patience"], record,
                   f"epoch {record['epoch']}: val_loss {val:.4f} is {100 * ratio:.0f}% above train_loss {train:.4f}")


class Overtraining(Rule):
    name, kind = "Overtraining", "debugger"
    description = "Detects training past its use: train_loss has not improved by more than `delta` for patience_train epochs, or val_loss for patience_validation epochs."
    recommendation = "Stop earlier: fewer --epochs or --patience N (early stopping on val_loss); the best epoch is kept either way."
    defaults = {"patience_train": 5, "patience_validation": 10, "delta": 0.1}
    streams = ("events",)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.best = {"train_loss": math.inf, "val_loss": math.inf}
        self.since = {"train_loss": 0, "val_loss": 0}

    def observe(self, stream: str, record: dict) -> None:
        if record.get("event") != "epoch":
            return
        self.datapoints += 1
        for key in ("train_loss", "val_loss"):
            value = num(record[key])
            if value < self.best[key] - self.params["delta"]:
                self.best[key], self.since[key] = value, 0
            else:
                self.since[key] += 1
        stale = []
        if self.since["train_loss"] >= self.params["patience_train"]:
            stale.append(f"train_loss for {self.since['train_loss']} epochs")
        if self.since["val_loss"] >= self.params["patience_validation"]:
            stale.append(f"val_loss for {self.since['val_loss']} epochs")
        self.check(bool(stale), record, f"no improvement over {self.params['delta']:g} in " + " and ".join(stale))


class PoorWeightInitialization(Rule):
    name, kind = "PoorWeightInitialization", "debugger"
    description = ("Looks at the first `steps` steps for a poor start: ReLU-input variance differing across layers by more "
                   "than `threshold` x, a gradient p95-p5 spread under distribution_range, or a loss that has not "
                   "decreased after `patience` steps.")
    recommendation = "Start from pretrained weights, or use an initialisation matched to the activation (Kaiming for ReLU) and normalisation layers."
    defaults = {"threshold": 10.0, "distribution_range": 0.001, "patience": 5, "steps": 10}
    streams = ("tensors",)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.losses: list[float] = []

    def observe(self, stream: str, record: dict) -> None:
        if record["step"] >= self.params["steps"]:
            return
        self.datapoints += 1
        if relu := record.get("relu"):
            variances = [num(v["var"]) for v in relu.values() if num(v["var"]) > 0]
            if len(variances) > 1:
                ratio = max(variances) / min(variances)
                self.check(ratio > self.params["threshold"], record,
                           f"ReLU-input variance differs {ratio:.0f}x across layers")
        if spread := _named(record, "grad_range"):
            name, low = min(spread, key=lambda x: x[1])
            self.check(low < self.params["distribution_range"], record,
                       f"gradient p95-p5 of {name} is {low:.2e}")
        self.losses.append(num(record["loss"]))
        if len(self.losses) == int(self.params["patience"]) + 1:
            first, since = self.losses[0], min(self.losses[1:])
            self.check(not since < first, record, f"loss {first:.4f} at step 0 was not beaten in {self.params['patience']} steps")


class LossNotDecreasing(Rule):
    name, kind = "LossNotDecreasing", "debugger"
    description = "Checks every num_steps train steps that the loss fell by at least diff_percent percent since num_steps earlier."
    recommendation = "Lower the learning rate if the loss is noisy or rising; raise it if it is flat; check the labels."
    defaults = {"num_steps": 10, "diff_percent": 0.0}
    streams = ("tensors",)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.history: list[tuple[int, float]] = []
        self.next_check = 0

    def observe(self, stream: str, record: dict) -> None:
        step, loss = record["step"], num(record["loss"])
        self.history.append((step, loss))
        self.datapoints += 1
        if step < self.next_check:
            return
        earlier = [(s, v) for s, v in self.history if s <= step - self.params["num_steps"]]
        if not earlier:
            return
        s0, v0 = earlier[-1]
        self.history = [h for h in self.history if h[0] >= s0]
        self.next_check = step + self.params["num_steps"]
        self.check(not loss < v0 * (1 - self.params["diff_percent"] / 100), record,
                   f"loss {loss:.4f} at step {step} is not below {v0:.4f} at step {s0}")


class ClassImbalance(Rule):
    name, kind = "ClassImbalance", "debugger"
    description = ("Detects class imbalance in the training labels (largest class over smallest above threshold_imbalance, "
                   "once `samples` labels were seen) and classes mispredicted more often than threshold_misprediction on the test split.")
    recommendation = "Collect more images of the rare classes, oversample them, or weight the loss by class."
    defaults = {"threshold_imbalance": 10, "threshold_misprediction": 0.7, "samples": 500}
    streams = ("events",)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.imbalance_checked = False

    def observe(self, stream: str, record: dict) -> None:
        counts = self.meta.get("class_counts") or []
        if record.get("event") == "epoch" and counts and not self.imbalance_checked:
            self.datapoints = sum(counts) * record["epoch"]
            if self.datapoints < self.params["samples"]:
                self.details["waiting"] = f"evaluates once {self.params['samples']} labels were seen"
                return
            self.imbalance_checked = True
            largest, smallest = max(counts), max(1, min(counts))
            self.details["imbalance_ratio"] = round(largest / smallest, 3)
            self.check(largest / smallest > self.params["threshold_imbalance"], record,
                       f"largest class has {largest} training images, smallest {min(counts)} ({largest / smallest:.1f}x)")
        elif record.get("event") == "per_class":
            names, n, correct = record["names"], record["n"], record["correct"]
            worst = sorted(((1 - c / k, name) for name, k, c in zip(names, n, correct) if k), reverse=True)
            self.details["worst_classes"] = [{"class": name, "error": round(err, 3)} for err, name in worst[:10]]
            bad = [name for err, name in worst if err > self.params["threshold_misprediction"]]
            self.check(bool(bad), record, f"{len(bad)} class(es) mispredicted over {self.params['threshold_misprediction']:.0%} "
                                          f"on {record['split']}: {_few(bad)}")


class DeadRelu(Rule):
    name, kind = "DeadRelu", "debugger"
    description = ("Detects dead ReLUs in the first steps: a unit (channel) is dead when under threshold_inactivity percent of "
                   "its inputs are positive; a layer triggers when over threshold_layer percent of its units are dead.")
    recommendation = "Lower the learning rate, check the initialisation, or use LeakyReLU; pretrained weights rarely show it."
    defaults = {"threshold_inactivity": 1.0, "threshold_layer": 50.0}
    streams = ("tensors",)

    def not_applicable(self) -> str | None:
        if self.meta.get("tensors", {}).get("relu_modules") == 0:
            return "the trained network has no ReLU (the head alone, or another activation)"
        return None

    def observe(self, stream: str, record: dict) -> None:
        for layer, stats in (record.get("relu") or {}).items():
            active = stats["active"]
            if not active:
                continue
            self.datapoints += 1
            dead = sum(1 for a in active if 100 * a < self.params["threshold_inactivity"])
            share = 100 * dead / len(active)
            worst = self.details.setdefault("dead_percent", {})
            worst[layer] = max(worst.get(layer, 0.0), round(share, 2))
            self.check(share > self.params["threshold_layer"], record,
                       f"{share:.0f}% of {len(active)} units of {layer} are dead")
