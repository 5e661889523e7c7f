"""Debugger and profiler for training runs: system sampler, step timing, debugger tensors,
SageMaker's rules (live and over a finished run) and the report.

    monitor.py   Monitor: the hooks a profiled run carries (dogbreed.hooks), writing profile/
    sampler.py   system metrics in a background thread
    probes.py    debugger tensors and the torch.profiler window
    streams.py   the profile's files (JSON lines, meta.json) and reading them back
    rules/       SageMaker's Debugger and Profiler rules; to add one, see rules/__init__.py
    report.py    report.html, rules/<Rule>.json and timeline.png (charts.py draws them)
"""

from dogbreed.monitor.monitor import Monitor

__all__ = ["Monitor"]
