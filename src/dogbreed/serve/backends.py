"""Model backends the server can run: the eager network, or the TorchScript export."""

from __future__ import annotations

from dogbreed.artifact import load_artifact
from dogbreed.errors import DogbreedError
from dogbreed.runtime.inference import LoadedModel
from dogbreed.serve import BACKENDS


def load_backend(path: str, backend: str = "eager") -> LoadedModel:
    if backend not in BACKENDS:
        raise DogbreedError(f"backend {backend!r} is not available; choose one of: {', '.join(BACKENDS)}")
    return load_artifact(path, backend=backend)
