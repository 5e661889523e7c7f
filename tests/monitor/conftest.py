"""A profiled run shared by the monitor tests."""

import pytest

from dogbreed import config
from dogbreed.run import train

from ..conftest import TINY

PROFILED = {**TINY, "profile_interval_ms": 100, "debug_interval": 2, "trace_start": 1, "trace_steps": 2}


@pytest.fixture(scope="session")
def profiled_run(synth_data, tmp_path_factory):
    """layer4 + head trained on images (the rest frozen), 2 epochs of 6 steps."""
    cfg = config.resolve(overrides={**PROFILED, "data": str(synth_data), "out": str(tmp_path_factory.mktemp("runs")),
                                    "train_layers": "layer4", "epochs": 2, "name": "profiled"})
    return train(cfg, progress=False)
