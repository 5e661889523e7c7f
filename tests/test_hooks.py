"""The loops' view of a watcher: the do-nothing one and the profiler both speak the protocol."""

import inspect

from dogbreed.hooks import NO_HOOKS, NoHooks, StepHooks
from dogbreed.monitor import Monitor


def test_the_profiler_and_the_null_watcher_implement_every_hook_with_its_signature():
    hooks = [name for name, _ in inspect.getmembers(StepHooks, inspect.isfunction) if not name.startswith("_")]
    assert {"steps", "after_backward", "after_step", "epoch_begin", "epoch_end", "describe_loader"} <= set(hooks)
    run_level = [name for name, _ in inspect.getmembers(NoHooks, inspect.isfunction) if not name.startswith("_")]
    for cls in (NoHooks, Monitor):
        for name in {*hooks, *run_level}:
            ours, theirs = (inspect.signature(getattr(c, name)).parameters for c in (cls, NoHooks))
            assert list(ours) == list(theirs), (cls, name)
    assert NO_HOOKS.stop_requested is False and list(NO_HOOKS.steps([1, 2], "train")) == [1, 2]
