"""A baseline of the session's trained model on a larger draw of its synthetic breeds, and
windows of requests drawn from them (``synth.requests``)."""

import pytest

from dogbreed.artifact import load_artifact
from dogbreed.data.synth import synth

# the session's synth_data: 4 classes at 64 px, seed 1 (tests/conftest.py)
WORLD = {"classes": 4, "size": 64, "seed": 1}


@pytest.fixture(scope="session")
def big_data(tmp_path_factory):
    """The same breeds, 140 images each: 21 validation images a breed for the baseline."""
    return synth(tmp_path_factory.mktemp("big") / "data", per_class=140, progress=False, **WORLD)


@pytest.fixture(scope="session")
def baseline_dir(trained_run, big_data, tmp_path_factory):
    from dogbreed.drift.baseline import from_data

    out = tmp_path_factory.mktemp("baseline")
    from_data(str(trained_run.artifact), str(big_data), str(out), progress=False)
    return out


@pytest.fixture(scope="session")
def loaded(trained_run):
    return load_artifact(trained_run.artifact, backend="eager")
