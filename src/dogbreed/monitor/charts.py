"""The report's interactive charts (plotly figures) and its static timeline picture (matplotlib).

Time on every x axis is seconds since the run started; phases are shaded bands (embed, train,
eval, test) and epoch ends are dotted lines, so a spike lines up with what the run was doing.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dogbreed.monitor.rules.base import num
from dogbreed.monitor.streams import Profile

PHASE_COLOURS = {"embed": "#8e6cc0", "train": "#3b7dd8", "eval": "#e8912d", "test": "#3aa655"}
LAYOUT = dict(template="plotly_white", margin=dict(l=60, r=20, t=40, b=40), legend=dict(orientation="h", y=-0.15))


def phase_spans(profile: Profile) -> list[tuple[str, int, float, float]]:
    """(phase, epoch, start, end) from the phase begin/end events; an unfinished phase ends at the last record."""
    spans, open_ = [], {}
    last = profile.last_time or 0.0
    for e in profile.events:
        if e.get("event") != "phase":
            continue
        key = (e["phase"], e.get("epoch"))
        if e["state"] == "begin":
            open_[key] = e["t"]
        elif key in open_:
            spans.append((e["phase"], e.get("epoch"), open_.pop(key), e["t"]))
    spans += [(p, ep, t0, last) for (p, ep), t0 in open_.items()]
    return sorted(spans, key=lambda s: s[2])


def epoch_ends(profile: Profile) -> list[tuple[int, float]]:
    return [(e["epoch"], e["t"]) for e in profile.events if e.get("event") == "epoch"]


def _decorate(fig: go.Figure, profile: Profile, t0: float) -> None:
    """Phase bands and epoch lines across every subplot (shared x axis): one shape each, set in one
    layout update (plotly's add_vrect per shape grows quadratically with the run's epochs)."""
    spans = phase_spans(profile)
    shapes = [dict(type="rect", xref="x", yref="paper", x0=start - t0, x1=end - t0, y0=0, y1=1, layer="below",
                   fillcolor=PHASE_COLOURS.get(phase, "#999"), opacity=0.12, line_width=0) for phase, _, start, end in spans]
    ends = epoch_ends(profile)
    shapes += [dict(type="line", xref="x", yref="paper", x0=t - t0, x1=t - t0, y0=0, y1=1,
                    line=dict(color="#777", dash="dot", width=1)) for _, t in ends]
    labels = [dict(x=t - t0, y=1.0, xref="x", yref="paper", text=f"epoch {epoch}", showarrow=False, font=dict(size=9),
                   xanchor="right", yanchor="bottom") for epoch, t in ends[:: max(1, len(ends) // 30)]]
    fig.update_layout(shapes=shapes, annotations=[*fig.layout.annotations, *labels])
    for phase, colour in PHASE_COLOURS.items():  # a legend entry per phase shown
        if any(s[0] == phase for s in spans):
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=f"{phase} phase",
                                     marker=dict(color=colour, size=10, symbol="square", opacity=0.4)), row=1, col=1)


def system_timeline(profile: Profile) -> go.Figure | None:
    samples = profile.system
    if not samples:
        return None
    t0 = profile.meta.get("started", samples[0]["t"])
    x = [s["t"] - t0 for s in samples]
    gpus = max((len(s.get("gpus") or []) for s in samples), default=0)
    titles = ["CPU utilisation (%)", "memory", "disk I/O and I/O wait"] + (["GPU utilisation and memory (%)"] if gpus else [])
    fig = make_subplots(rows=len(titles), cols=1, shared_xaxes=True, subplot_titles=titles, vertical_spacing=0.07)
    cores = max(len(s.get("cores", [])) for s in samples)
    for i in range(cores):
        fig.add_trace(go.Scatter(x=x, y=[_at(s.get("cores"), i) for s in samples], name=f"core {i}", mode="lines",
                                 line=dict(width=0.8), opacity=0.45, legendgroup="cores", showlegend=i == 0), row=1, col=1)
    fig.add_trace(go.Scatter(x=x, y=[s["cpu"] for s in samples], name="CPU total", line=dict(width=2.2, color="#1f3b73")), row=1, col=1)
    fig.add_trace(go.Scatter(x=x, y=[s["rss"] / 1e9 for s in samples], name="process RSS (GB, with workers)"), row=2, col=1)
    fig.add_trace(go.Scatter(x=x, y=[s["mem_used"] / 1e9 for s in samples], name="system memory used (GB)"), row=2, col=1)
    if "read_mb_s" in samples[0]:
        fig.add_trace(go.Scatter(x=x, y=[s.get("read_mb_s") for s in samples], name="disk read MB/s"), row=3, col=1)
        fig.add_trace(go.Scatter(x=x, y=[s.get("write_mb_s") for s in samples], name="disk write MB/s"), row=3, col=1)
    fig.add_trace(go.Scatter(x=x, y=[s.get("iowait") for s in samples], name="I/O wait %"), row=3, col=1)
    for g in range(gpus):
        gpu_at = [(s.get("gpus") or [None] * gpus)[g] for s in samples]
        fig.add_trace(go.Scatter(x=x, y=[v["util"] if v else None for v in gpu_at], name=f"GPU {g} util"), row=4, col=1)
        fig.add_trace(go.Scatter(x=x, y=[v["mem_percent"] if v else None for v in gpu_at], name=f"GPU {g} memory",
                                 line=dict(dash="dash")), row=4, col=1)
    _decorate(fig, profile, t0)
    fig.update_xaxes(title_text="seconds since start", row=len(titles), col=1)
    fig.update_layout(height=230 * len(titles) + 80, **LAYOUT)
    return fig


def _at(values, i):
    return values[i] if values and i < len(values) else None


def step_charts(profile: Profile, outliers: dict) -> go.Figure | None:
    """Step duration over time (outliers marked) and its histogram per phase."""
    if not profile.steps:
        return None
    t0 = profile.meta.get("started", profile.steps[0]["t"])
    by_phase = defaultdict(list)
    for s in profile.steps:
        by_phase[s["phase"]].append(s)
    fig = make_subplots(rows=1, cols=2, column_widths=[0.62, 0.38],
                        subplot_titles=["step duration over time (ms)", "step duration histogram (ms)"])
    for phase, steps in by_phase.items():
        ms = np.array([(s["data"] + s["compute"]) * 1000 for s in steps])
        colour = PHASE_COLOURS.get(phase, "#999")
        fig.add_trace(go.Scatter(x=[s["t"] - t0 for s in steps], y=ms, mode="markers", name=phase,
                                   marker=dict(size=4, color=colour), legendgroup=phase,
                                   text=[f"{phase} step {s['step']} (epoch {s['epoch']})" for s in steps]), row=1, col=1)
        fig.add_trace(go.Histogram(x=ms, name=phase, marker_color=colour, opacity=0.7, legendgroup=phase,
                                   showlegend=False, nbinsx=60), row=1, col=2)
        threshold = outliers.get(phase, {}).get("threshold_s")
        if threshold is None and len(ms) > 1:
            threshold = (ms.mean() + 3 * ms.std()) / 1000
        if threshold:
            fig.add_vline(x=threshold * 1000, line=dict(color=colour, dash="dash"), row=1, col=2)
            slow = [(s, m) for s, m in zip(steps, ms) if m > threshold * 1000]
            if slow:
                fig.add_trace(go.Scatter(x=[s["t"] - t0 for s, _ in slow], y=[m for _, m in slow], mode="markers",
                                           name=f"{phase} outliers", marker=dict(size=9, color="#d62728", symbol="x")),
                              row=1, col=1)
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_xaxes(title_text="seconds since start", row=1, col=1)
    fig.update_layout(height=380, barmode="overlay", **LAYOUT)
    return fig


def data_loading(framework: dict) -> go.Figure | None:
    phases = framework.get("phases") or {}
    if not phases:
        return None
    names = list(phases)
    fig = go.Figure([
        go.Bar(name="waiting for data", x=names, y=[phases[p]["data_s"] for p in names], marker_color="#d62728"),
        go.Bar(name="compute", x=names, y=[phases[p]["compute_s"] for p in names], marker_color="#3b7dd8"),
    ])
    for p in names:
        fig.add_annotation(x=p, y=phases[p]["total_s"], text=f"{phases[p]['data_percent']:.0f}% waiting", showarrow=False,
                           yanchor="bottom")
    fig.update_layout(barmode="stack", height=320, title="time in steps, per phase (s)", **LAYOUT)
    return fig


def debugger_charts(profile: Profile) -> go.Figure | None:
    records = [r for r in profile.tensors if "grad_l2" in r]
    if not profile.tensors:
        return None
    fig = make_subplots(rows=1, cols=3, subplot_titles=["loss", "gradient norm per tensor", "update / weight ratio"])
    fig.add_trace(go.Scatter(x=[r["step"] for r in profile.tensors], y=[num(r["loss"]) for r in profile.tensors],
                             name="train loss (mean since last record)"), row=1, col=1)
    epochs = [e for e in profile.events if e.get("event") == "epoch"]
    if epochs:
        fig.add_trace(go.Scatter(x=[e["step"] for e in epochs], y=[e["val_loss"] for e in epochs], mode="lines+markers",
                                 name="val loss (epoch)"), row=1, col=1)
    names = records[-1]["names"] if records else []
    shown = names if len(names) <= 12 else _spread_pick(names, 12)
    for key, col in (("grad_l2", 2), ("update_ratio", 3)):
        for name in shown:
            xs, ys = [], []
            for r in records:
                if key in r and name in r["names"]:
                    xs.append(r["step"])
                    ys.append(num(r[key][r["names"].index(name)]))
            fig.add_trace(go.Scatter(x=xs, y=ys, name=name, mode="lines", legendgroup=name, showlegend=col == 2,
                                     line=dict(width=1.2)), row=1, col=col)
    for col in (1, 2, 3):
        fig.update_xaxes(title_text="train step", row=1, col=col)
        fig.update_yaxes(type="log", row=1, col=col)
    fig.update_layout(height=400, **LAYOUT)
    return fig


def _spread_pick(names: list[str], k: int) -> list[str]:
    idx = np.linspace(0, len(names) - 1, k).round().astype(int)
    return [names[i] for i in sorted(set(idx))]


def dead_relu_chart(dead: dict) -> go.Figure | None:
    if not dead:
        return None
    fig = go.Figure(go.Bar(x=list(dead), y=list(dead.values()), marker_color="#8e6cc0"))
    fig.update_layout(title="dead units per ReLU call in the first steps (%)", height=320, xaxis_tickangle=-60, **LAYOUT)
    return fig


def timeline_png(profile: Profile, path: str | os.PathLike) -> None:
    """The system timeline as a picture, for people without a browser at hand."""
    import matplotlib.pyplot as plt

    from dogbreed.plots import save

    samples = profile.system
    t0 = profile.meta.get("started", samples[0]["t"] if samples else 0.0)
    gpus = max((len(s.get("gpus") or []) for s in samples), default=0)
    rows = 3 + (1 if gpus else 0)
    fig, axes = plt.subplots(rows, 1, figsize=(11, 2.3 * rows), sharex=True)
    x = [s["t"] - t0 for s in samples]
    axes[0].plot(x, [s["cpu"] for s in samples], color="#1f3b73", lw=1.5, label="CPU total")
    for i in range(max((len(s.get("cores", [])) for s in samples), default=0)):
        axes[0].plot(x, [_at(s.get("cores"), i) for s in samples], lw=0.6, alpha=0.4)
    axes[0].set(ylabel="CPU %", ylim=(0, 105))
    axes[1].plot(x, [s["rss"] / 1e9 for s in samples], label="process RSS")
    axes[1].plot(x, [s["mem_used"] / 1e9 for s in samples], label="system used")
    axes[1].set(ylabel="memory GB")
    axes[2].plot(x, [s.get("read_mb_s", math.nan) for s in samples], label="read MB/s")
    axes[2].plot(x, [s.get("write_mb_s", math.nan) for s in samples], label="write MB/s")
    axes[2].plot(x, [s.get("iowait") for s in samples], label="I/O wait %")
    axes[2].set(ylabel="disk")
    for g in range(gpus):
        gpu_at = [(s.get("gpus") or [None] * gpus)[g] for s in samples]
        axes[3].plot(x, [v["util"] if v else math.nan for v in gpu_at], label=f"GPU {g} util %")
        axes[3].plot(x, [v["mem_percent"] if v else math.nan for v in gpu_at], ls="--", label=f"GPU {g} memory %")
    spans, ends = phase_spans(profile), epoch_ends(profile)
    for ax in axes:
        for phase, _, start, end in spans:
            ax.axvspan(start - t0, end - t0, color=PHASE_COLOURS.get(phase, "#999"), alpha=0.12, lw=0)
        for _, t in ends:
            ax.axvline(t - t0, color="#777", ls=":", lw=0.8)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper right", fontsize=7)
    phases = sorted({s[0] for s in spans})
    axes[-1].set_xlabel("seconds since start   (shaded: " + ", ".join(phases) + " phases; dotted: epoch ends)")
    fig.suptitle(f"{profile.meta.get('run', '')}: system timeline")
    fig.tight_layout()
    save(fig, path)
