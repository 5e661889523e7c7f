"""``dogbreed report RUN``: the rules over a run's recorded profile, their result files, a timeline
picture and one self-contained HTML page (charts included: it opens offline, from anywhere)."""

from __future__ import annotations

import html
import json
import logging
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from dogbreed.files import atomic_write_text
from dogbreed.monitor import charts
from dogbreed.monitor.rules import RuleSet, load_rules_file
from dogbreed.monitor.rules.base import State, Status
from dogbreed.monitor.streams import STREAMS, Profile, load_profile

log = logging.getLogger(__name__)


@dataclass
class Report:
    html: Path
    png: Path
    rules: list[dict]
    profile: Profile


def triggered(results: list[dict]) -> list[dict]:
    return [r for r in results if r["status"].state is State.TRIGGERED]


def evaluated(results: list[dict]) -> list[dict]:
    """The rules that ran and decided: triggered or found no issue (not summaries, not applicable, no data)."""
    return [r for r in results if r["status"].state in (State.TRIGGERED, State.NO_ISSUES)]


def run_rules(profile: Profile, rules_file: str | os.PathLike | None = None) -> list[dict]:
    """Every rule over the recorded streams, in time order (as they ran live)."""
    own = profile.folder / "rules.yaml"
    settings = load_rules_file(rules_file or (own if own.exists() else None))
    ruleset = RuleSet(profile.meta, settings)
    merged = sorted(((r.get("t", 0.0), i, n, r) for i, n in enumerate(STREAMS) for r in profile.stream(n)),
                    key=lambda x: (x[0], x[1]))
    for _, _, stream, record in merged:
        ruleset.feed(stream, [record])
    ruleset.finish()
    return ruleset.results()


def write_report(run_dir: str | os.PathLike, rules_file: str | os.PathLike | None = None) -> Report:
    profile = load_profile(run_dir)
    results = run_rules(profile, rules_file)
    rules_dir = profile.folder / "rules"
    rules_dir.mkdir(exist_ok=True)
    for result in results:
        atomic_write_text(rules_dir / f"{result['rule']}.json",
                          json.dumps({**result, "status": str(result["status"])}, indent=1, default=str))
    png = profile.folder / "timeline.png"
    if profile.system:
        charts.timeline_png(profile, png)
    page = profile.folder / "report.html"
    atomic_write_text(page, render(profile, results))
    return Report(page, png, results, profile)


# --- the page --------------------------------------------------------------------------------------

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d232b;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{font-size:24px;margin:0 0 4px} h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #dde1e6;padding-bottom:4px}
.sub{color:#5b6570} .card{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:14px;margin:10px 0}
table{border-collapse:collapse;width:100%;font-size:13px} th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #eceff2;vertical-align:top}
th{background:#f0f2f5;font-weight:600} td.n{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;border-radius:10px;padding:1px 9px;font-size:12px;font-weight:600}
.triggered{background:#fde2e1;color:#a4161a} .ok{background:#dff3e4;color:#1e6b34} .na{background:#eceff2;color:#5b6570}
.nodata{background:#fff4d6;color:#8a5a00} .summary{background:#e3ecfb;color:#1f4e9c}
.warn{background:#fff4d6;border:1px solid #f0d58a;border-radius:8px;padding:10px 14px}
details summary{cursor:pointer} code{background:#f0f2f5;padding:1px 4px;border-radius:4px}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(170px,1fr));gap:10px}
.kpi{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:10px 12px} .kpi b{display:block;font-size:20px}
"""


def _e(value) -> str:
    return html.escape(str(value))


def _when(t) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S") if t else "-"


def _secs(s) -> str:
    if s is None:
        return "-"
    return f"{s / 60:.1f} min" if s >= 120 else f"{s:.1f} s"


BADGES = {State.TRIGGERED: "triggered", State.NO_ISSUES: "ok", State.SUMMARY: "summary", State.NO_DATA: "nodata",
          State.NOT_APPLICABLE: "na"}  # state -> CSS class


def _badge(status: Status) -> str:
    return f'<span class="badge {BADGES[status.state]}" title="{_e(status)}">{_e(status.state.value)}</span>'


def _table(headers: list[str] | None, rows: list[list], numeric: set[int] = frozenset()) -> str:
    if headers is None:  # a key-value table: the keys are the headers
        rows = [[f"<b>{k}</b>", v] for k, v in rows]
        return "<table><tbody>" + "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in rows) + "</tbody></table>"
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(r))
                   + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _chart(fig, div_id: str) -> str:
    if fig is None:
        return '<p class="sub">no data recorded for this chart.</p>'
    return '<div class="chart card">' + fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id,
                                                   config={"displaylogo": False, "responsive": True}) + "</div>"


def _text(value) -> str:
    """Escaped text with `name` spans shown as code."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", _e(value))


def _rule_rows(results: list[dict]) -> str:
    rows = []
    for r in results:
        params = ", ".join(f"{k}={v}" for k, v in r["parameters"].items()) or "none"
        messages = "".join(f"<li>{_e(m['message'])}</li>" for m in r["messages"][:8])
        first = r["first_trigger"] or {}
        where = f"step {first['step']}" if first.get("step") is not None else _when(first.get("t")) if first else ""
        found = f"<br><span class='sub'>{_e(where)}: {_e(first.get('message', ''))}</span>" if first else ""
        reason = r["status"].reason
        detail = (f"<details><summary>{_text(r['description'])}</summary><p><b>Recommendation:</b> {_text(r['recommendation'])}</p>"
                  f"<p><b>Parameters:</b> {_e(params)}; action: {_e(r['action'])}</p>"
                  + (f"<p>Triggers ({r['triggers']}):</p><ul>{messages}</ul>" if messages else "") + "</details>" + found)
        rows.append([f"<b>{_e(r['rule'])}</b><br><span class='sub'>{_e(r['kind'])}</span>",
                     _badge(r["status"]) + (f"<br><span class='sub'>{_e(reason)}</span>" if reason else ""),
                     r["triggers"], r["datapoints"], detail])
    return _table(["rule", "status", "triggers", "datapoints", "what it checks; first trigger (click for details)"], rows,
                  numeric={2, 3})


METRIC_LABELS = {"cpu": "CPU, all cores (%)", "iowait": "I/O wait (%)", "mem_percent": "system memory used (%)",
                 "rss": "process RSS with workers (MB)", "proc_cpu": "process CPU (% of one core)",
                 "read_mb_s": "disk read (MB/s)", "write_mb_s": "disk write (MB/s)"}


def _metric_label(key: str) -> str:
    if key.startswith("core"):
        return f"core {key[4:]} (%)"
    if key.startswith("gpu"):
        gpu, _, what = key[3:].partition("_")
        return f"GPU {gpu} {'utilisation' if what == 'util' else 'memory'} (%)"
    return METRIC_LABELS.get(key, key)


def render(profile: Profile, results: list[dict]) -> str:
    import plotly.offline

    meta = profile.meta
    by_name = {r["rule"]: r for r in results}
    framework = by_name.get("OverallFrameworkMetrics", {}).get("details", {})
    system = by_name.get("OverallSystemUsage", {}).get("details", {}).get("metrics", {})
    hardware = meta.get("hardware", {})
    gpus = ", ".join(g["name"] for g in hardware.get("gpus", [])) or "none"
    status = meta.get("status", "unknown")
    warnings = []
    if status in ("running", "failed", "interrupted"):
        warnings.append(f"This run did not finish (status: {_e(status)}). The report covers what was collected until "
                        f"{_e(_when(profile.last_time))}.")
    if profile.damaged_lines:
        warnings.append(f"{profile.damaged_lines} partial or damaged line(s) in the recorded files were skipped.")
    duration = (meta.get("ended") or profile.last_time or 0) - meta.get("started", 0)
    kpis = [("duration", _secs(duration)), ("initialisation", _secs(framework.get("initialization_s"))),
            ("rules triggered", f"{len(triggered(results))} of {len(evaluated(results))}"),
            ("CPU p95", f"{system.get('cpu', {}).get('p95', '-')}%"),
            ("peak RSS", f"{system.get('rss', {}).get('max', 0) / 1000:.2f} GB" if system.get("rss") else "-")]
    phase_rows = [[_e(p), d["steps"], _secs(d["total_s"]), f"{d['data_percent']:.1f}%", f"{d['mean_step_s'] * 1000:.2f}",
                   f"{(d['p95_step_s'] or 0) * 1000:.2f}"] for p, d in framework.get("phases", {}).items()]
    usage_rows = [[_e(_metric_label(k)), *(v.get(q, "-") for q in ("p50", "p95", "max", "min"))] for k, v in system.items()]
    loaders = [[_e(p), _e(d.get("kind")), d.get("workers"), _e(d.get("pin_memory", "-")), _e(d.get("batch_size"))]
               for p, d in meta.get("loaders", {}).items()]
    outliers = by_name.get("StepOutlier", {}).get("details", {}).get("phases", {})
    dead = by_name.get("DeadRelu", {}).get("details", {}).get("dead_percent", {})
    trace = profile.folder / "trace"
    cprofile = (trace / "cprofile.txt").read_text(encoding="utf-8") if (trace / "cprofile.txt").exists() else ""
    files = [f for f in ("trace/trace.json", "trace/cprofile.prof", "trace/cprofile.txt", "trace/ops.txt", "tensorboard",
                         "timeline.png", "tensors.jsonl", "steps.jsonl", "system.jsonl", "events.jsonl") if (profile.folder / f).exists()]
    cfg = meta.get("config", {})
    summary = _table(None, [
        ["run", _e(meta.get("run"))], ["status", _e(status + (f" (by rule {meta['stopped_by']})" if meta.get("stopped_by") else ""))],
        ["started / ended", f"{_e(_when(meta.get('started')))} / {_e(_when(meta.get('ended')))}"],
        ["training", _e(", ".join(f"{k}={v}" for k, v in cfg.items()) + f"; path: {meta.get('path', '-')}")],
        ["device", _e(f"{meta.get('device')}; CPU: {hardware.get('cpu_model')} ({hardware.get('cpu_cores')} cores); GPUs: {gpus}")],
        ["software", _e(f"torch {meta.get('torch')}, Python {meta.get('python')}, host {meta.get('hostname')}")],
        ["time split", _e(f"initialisation {_secs(framework.get('initialization_s'))}, steps loop {_secs(framework.get('loop_s'))} "
                          f"(of which outside steps {_secs(framework.get('outside_steps_s'))}), finalisation {_secs(framework.get('finalization_s'))}")],
    ])
    parts = [
        f"<h1>Profile report: {_e(meta.get('run'))}</h1><p class='sub'>dogbreed debugger and profiler, "
        f"{len(profile.system)} system samples, {len(profile.steps)} steps, {len(profile.tensors)} debugger records</p>",
        *(f"<p class='warn'>{w}</p>" for w in warnings),
        "<div class='grid'>" + "".join(f"<div class='kpi'>{_e(k)}<b>{_e(v)}</b></div>" for k, v in kpis) + "</div>",
        "<h2>Rules</h2><div class='card' id='rules'>" + _rule_rows(results) + "</div>",
        "<h2>Job summary</h2><div class='card'>" + summary + "</div>",
        "<h2>System usage</h2>" + _chart(charts.system_timeline(profile), "timeline"),
        "<div class='card'>" + _table(["metric", "p50", "p95", "max", "min"], usage_rows, {1, 2, 3, 4}) + "</div>",
        "<h2>Steps</h2>" + _chart(charts.step_charts(profile, outliers), "steps"),
        "<div class='card'>" + _table(["phase", "steps", "time in steps", "waiting for data", "mean ms", "p95 ms"], phase_rows,
                                      {1, 2, 3, 4, 5}) + "</div>",
        "<h2>Data loading</h2>" + _chart(charts.data_loading(framework), "dataloading"),
        "<div class='card'>" + _table(["phase", "source", "workers", "pinned memory", "batch size"], loaders, {2}) + "</div>",
        "<h2>Debugger tensors</h2>" + _chart(charts.debugger_charts(profile), "tensors"),
        (_chart(charts.dead_relu_chart(dead), "relu") if any(dead.values()) else
         f"<p class='sub'>ReLU activity in the first steps: no dead units in any of {len(dead)} ReLU calls.</p>" if dead else ""),
        "<h2>Framework trace</h2><div class='card'>" + (
            "<p>torch.profiler trace of train steps "
            + _e(", ".join(f"{e['first_step']}-{e['last_step']}" for e in profile.events if e.get("event") == "trace"))
            + ": open <code>trace/trace.json</code> in <a href='https://ui.perfetto.dev'>Perfetto</a> or chrome://tracing.</p>"
            f"<details><summary>cProfile of the same steps (top functions by cumulative time)</summary><pre>{_e(cprofile[:12000])}</pre></details>"
            if cprofile else "<p class='sub'>no trace window ran (fewer train steps than --trace-start, or --trace-steps 0).</p>") + "</div>",
        "<h2>Files</h2><div class='card'><ul>" + "".join(f"<li><a href='{_e(f)}'>{_e(f)}</a></li>" for f in files)
        + "</ul><p class='sub'>TensorBoard: <code>tensorboard --logdir " + _e(profile.folder / "tensorboard") + "</code></p></div>",
    ]
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'><meta name='viewport' content='width=device-width'>"
            f"<title>dogbreed profile: {_e(meta.get('run'))}</title><style>{CSS}</style>"
            f"<script>{plotly.offline.get_plotlyjs()}</script></head><body><main>{''.join(parts)}</main></body></html>")
