"""The monitor's report, one self-contained HTML page (images inline, no network): each check over
every execution so far (its p-value against the threshold it was held to, or its value against its
threshold), the latest execution's violations, and its most unusual captured images."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

from dogbreed.files import atomic_write_text  # noqa: E402

THUMB = 160


def history(out: Path) -> list[dict]:
    """Every execution's checks.json under ``out``, oldest window first."""
    docs = []
    for path in sorted((out / "executions").glob("*/checks.json")):
        try:
            docs.append({**json.loads(path.read_text()), "folder": path.parent.name})
        except (OSError, ValueError):
            continue
    return docs


def _plot(name: str, points: list[tuple[str, dict]]) -> str:
    """One check over the executions, as an inline PNG."""
    fig, ax = plt.subplots(figsize=(6, 2.4))
    by_p = points[-1][1]["p_value"] is not None
    xs = list(range(len(points)))
    floor = 1e-16  # a p-value of 0 (as far as floating point goes) still gets a point on the log scale
    values = [max(c["p_value"], floor) if by_p else c["value"] for _, c in points]
    thresholds = [c["threshold"] for _, c in points]
    colors = ["#c0392b" if c["violated"] else "#2c7fb8" for _, c in points]
    ax.plot(xs, values, color="#888", lw=1)
    ax.scatter(xs, values, c=colors, zorder=3)
    ax.plot(xs, thresholds, color="#c0392b", ls="--", lw=1, marker="_", markersize=24, label="threshold")
    if by_p:
        ax.set_yscale("log")
        ax.set_ylim(min(values + thresholds) / 5, 2.0)
        ax.set_ylabel("p-value")
    else:
        ax.set_ylabel("value")
    ax.set_xlim(-0.5, len(points) - 0.5)
    ax.set_title(name, fontsize=10)
    ax.set_xticks(xs, [_short(folder) for folder, _ in points], rotation=30, fontsize=7, ha="right")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _short(folder: str) -> str:
    """An execution's folder name (its window's end, 2026-12-07T03-00-00Z) as a tick label."""
    day, _, clock = folder.partition("T")
    return f"{day[5:]} {clock[:5].replace('-', ':')}"


def _thumb(data: bytes) -> str | None:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.draft("RGB", (THUMB, THUMB))
            small = img.convert("RGB")
            small.thumbnail((THUMB, THUMB))
            buffer = io.BytesIO()
            small.save(buffer, format="JPEG", quality=80)
            return base64.b64encode(buffer.getvalue()).decode()
    except Exception:  # noqa: BLE001 - an input that is no image shows as text
        return None


def write(out: Path, unusual: list[dict]) -> Path:
    runs = history(out)
    latest = runs[-1] if runs else {"checks": []}
    series: dict[str, list[tuple[str, dict]]] = {}
    for doc in runs:
        for check in doc["checks"]:
            series.setdefault(check["name"], []).append((doc["folder"], check))
    rows = "".join(
        f"<tr class='{'bad' if c['violated'] else ''}'><td>{html.escape(c['name'])}</td><td>{html.escape(c['kind'])}</td>"
        f"<td>{'violation' if c['violated'] else 'ok'}</td><td>{html.escape(c['description'])}</td></tr>"
        for c in latest["checks"])
    plots = "".join(f"<img alt='{html.escape(name)}' src='data:image/png;base64,{_plot(name, points)}'>"
                    for name, points in series.items())
    cells = []
    for item in unusual:
        thumb = _thumb(item["image"])
        picture = f"<img src='data:image/jpeg;base64,{thumb}'>" if thumb else "<div class='none'>not an image</div>"
        cells.append(f"<figure>{picture}<figcaption>{html.escape(item['verdict'])}, score {item['score']:.3g}<br>"
                     f"<code>{html.escape(item['key'])}</code><br>{html.escape(item['time'])}</figcaption></figure>")
    window = latest.get("window") or {}
    violated = sum(c["violated"] for c in latest["checks"])
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>dogbreed monitor</title><style>
body{{font-family:system-ui,sans-serif;margin:2em;max-width:75em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left;font-size:.9em}} tr.bad td{{background:#fde2e1}}
figure{{display:inline-block;margin:.4em;width:{THUMB}px;font-size:.75em;vertical-align:top}} code{{word-break:break-all}}
.none{{width:{THUMB}px;height:{THUMB // 2}px;background:#eee;display:flex;align-items:center;justify-content:center}}
</style></head><body>
<h1>dogbreed monitor</h1>
<p>Latest execution: window {html.escape(str(window.get('start') or 'the first record'))} to {html.escape(str(window.get('end', '')))},
{latest.get('images', 0)} images from {latest.get('requests', 0)} requests ({latest.get('unreadable', 0)} unreadable);
<b>{violated} violation(s)</b>. {len(runs)} execution(s) so far.</p>
<h2>Checks</h2><table><tr><th>check</th><th>type</th><th>result</th><th>what was found</th></tr>{rows}</table>
<h2>Over time</h2><p>Each point is one execution; red points are violations, the dashed line the threshold.</p>{plots}
<h2>Most unusual captured images</h2><p>Lowest "not a dog" score (else lowest confidence) first.</p>{''.join(cells)}
</body></html>"""
    path = out / "report.html"
    atomic_write_text(path, page)
    return path
