"""What a finished study leaves behind: trials.csv, best.json and the plots."""

from __future__ import annotations

import csv
import json
import logging
import warnings
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from dogbreed.errors import DogbreedError
from dogbreed.files import atomic_path, atomic_write_text
from dogbreed.tune.study import SETUP_ATTR, masked, open_storage, sqlite_file

log = logging.getLogger(__name__)


def trial_row(t: FrozenTrial, params: list[str]) -> dict:
    seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None
    return {
        "number": t.number,
        "state": t.state.name,
        "value": t.value,
        **{f"param_{p}": t.params.get(p) for p in params},
        "epochs_run": t.user_attrs.get("epochs_run"),
        "best_epoch": t.user_attrs.get("best_epoch"),
        "val_accuracy": t.user_attrs.get("val_accuracy"),
        "last_step": t.last_step,
        "seconds": round(seconds, 2) if seconds is not None else None,
        "worker": t.user_attrs.get("worker"),
        "retry_of": t.system_attrs.get("failed_trial"),
    }


def table(study: optuna.Study) -> list[dict]:
    trials = study.get_trials(deepcopy=False)
    params = sorted({p for t in trials for p in t.params})
    return [trial_row(t, params) for t in trials]


def format_trial(row: dict, objective: str) -> str:
    params = format_params({k[6:]: v for k, v in row.items() if k.startswith("param_")})
    value = f"{objective} {row['value']:.4f}" if row["value"] is not None else f"{objective} -"
    seconds = f"{row['seconds']:.1f}s" if row["seconds"] is not None else "-"
    return f"trial {row['number']:>3}  {row['state']:<8}  {value:<20}  {params}  {seconds}"


def format_params(params: dict) -> str:
    """``lr=0.00123 batch_size=32``: a trial's parameters on one line, floats to 3 significant digits."""
    return " ".join(f"{k}={f'{v:.3g}' if isinstance(v, float) else v}" for k, v in params.items())


def write_table(rows: list[dict], path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["number"])
        writer.writeheader()
        writer.writerows(rows)


def best_summary(study: optuna.Study) -> dict | None:
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        return None
    best = study.best_trial
    return {"number": best.number, "value": best.value, "params": best.params, "user_attrs": best.user_attrs}


def pruning_savings(study: optuna.Study) -> dict:
    """Trials pruned and epochs they did not run (each would have run its ``epochs``)."""
    pruned = study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
    saved = sum(max(0, t.user_attrs.get("epochs_planned", 0) - (t.last_step or 0)) for t in pruned)
    return {"pruned": len(pruned), "epochs_saved": saved}


def write_plots(study: optuna.Study, folder: Path) -> list[str]:
    """PNG for each plot, and an HTML version where the plot is interactive (plotly.js written once
    beside them, so the pages open offline)."""
    from optuna import visualization as vis
    from optuna.visualization import matplotlib as vis_mpl

    from dogbreed.plots import save

    folder.mkdir(parents=True, exist_ok=True)
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        log.info("no completed trial: no plots")
        return []
    plots = {
        "optimization_history": (vis.plot_optimization_history, vis_mpl.plot_optimization_history),
        "intermediate_values": (vis.plot_intermediate_values, vis_mpl.plot_intermediate_values),
        "param_importances": (vis.plot_param_importances, vis_mpl.plot_param_importances),
        "parallel_coordinate": (vis.plot_parallel_coordinate, vis_mpl.plot_parallel_coordinate),
    }
    written = []
    for name, (html_plot, png_plot) in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # optuna's matplotlib plots are marked experimental
                ax = png_plot(study)
                fig = (ax.flat[0] if hasattr(ax, "flat") else ax).get_figure()
                fig.set_size_inches(9, 5)
                save(fig, folder / f"{name}.png", bbox_inches="tight")
                html_plot(study).write_html(folder / f"{name}.html", include_plotlyjs="directory")
            written.append(name)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # e.g. importances need 2+ finished trials
            log.info("plot %s skipped: %s", name, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    return written


def write_best(path: Path, doc: dict) -> None:
    atomic_write_text(path, json.dumps(doc, indent=1, default=str))


def show(study_name: str, storage_url: str) -> tuple[list[dict], dict | None, str]:
    """(trials table, best trial, objective name) of an existing study."""
    if (db := sqlite_file(storage_url)) and not db.is_file():
        raise DogbreedError(f"no study database at {db}; pass --out or --storage of a tuning run")
    storage = open_storage(storage_url)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise DogbreedError(f"no study {study_name!r} in {masked(storage_url)}; studies there: {', '.join(names) or 'none'}") from None
    objective = (study.user_attrs.get(SETUP_ATTR) or {}).get("objective", "value")
    return table(study), best_summary(study), objective
