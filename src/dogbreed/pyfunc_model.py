"""A dogbreed artifact as an MLflow model (the ``python_function`` flavor), for ``mlflow models
serve`` and the platforms that host MLflow models. ``dogbreed register`` logs this file with the
artifact, as MLflow's "model from code": MLflow runs it (it is not imported from the dogbreed
package), so it imports nothing of dogbreed's and answers through the artifact's own ``code/``
handlers, the same path as SageMaker's container, ``dogbreed serve`` and ``predict``.

Input: a DataFrame with an ``image`` column (or one column) of base64-encoded image bytes, raw
bytes, or paths of image files. Output: a DataFrame, one row per image, with the endpoint's answer
(``topk_labels``, ``topk_probs``, ``verdict``, ...). A path is read only where it names an image
file (by its suffix) on the machine that hosts the model. A request it refuses (an image that does not
decode, too many pixels) raises MLflow's invalid-parameter error, which ``mlflow models serve``
answers with 400.
"""

from __future__ import annotations

import base64
import binascii
import importlib
import os
import sys
import tarfile
import tempfile
import types

import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException
from mlflow.models import set_model

ARTIFACT_KEY = "model.tar.gz"
COLUMN = "image"
# a path is read only where it names an image file: a served model reads no other file a client names
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class DogbreedModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="dogbreed-pyfunc-")  # removed with the model
        with tarfile.open(context.artifacts[ARTIFACT_KEY]) as tar:
            tar.extractall(self._folder.name, filter="data")  # no links out, no absolute paths, no devices
        # code/ as a package of a name of its own: its modules import each other relatively, so they
        # never meet another artifact's (or dogbreed's) modules of the same names, and the handlers keep
        # this model's settings in their own module
        package = types.ModuleType(f"dogbreed_artifact_{id(self)}")
        package.__path__ = [os.path.join(self._folder.name, "code")]
        sys.modules[package.__name__] = package
        self._handlers = importlib.import_module(f"{package.__name__}.inference")
        self._model = self._handlers.model_fn(self._folder.name)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame({COLUMN: list(model_input)})
        if frame.shape[1] == 0 or frame.shape[0] == 0:
            raise MlflowException("no images: send a DataFrame with an 'image' column of base64 images or paths",
                                  INVALID_PARAMETER_VALUE)
        column = frame[COLUMN] if COLUMN in frame.columns else frame.iloc[:, 0]
        requests = []
        for row, value in enumerate(column):
            try:
                requests.append(self._handlers.input_fn(_image_bytes(value, row), "application/x-image"))
            except Exception as exc:
                if not hasattr(exc, "status_code"):  # not a RequestError (said as the endpoint says it)
                    raise
                raise MlflowException(f"image {row}: {exc}", INVALID_PARAMETER_VALUE) from None
        merged = self._handlers.Request([p for r in requests for p in r.pixels], requests[0].shape, requests[0].options)
        return pd.DataFrame(self._handlers.predict_fn(merged, self._model).answers)


def _image_bytes(value, row: int) -> bytes:
    """An image's bytes from a cell: bytes as they are, a path of a file, else base64."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if not isinstance(value, str):
        raise MlflowException(f"image {row}: expected base64 text, bytes or a file path, got {type(value).__name__}",
                              INVALID_PARAMETER_VALUE)
    if len(value) < 4096 and value.lower().endswith(IMAGE_SUFFIXES) and os.path.isfile(value):
        with open(value, "rb") as file:
            return file.read()
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise MlflowException(f"image {row}: neither a file on this machine nor base64", INVALID_PARAMETER_VALUE) from None


set_model(DogbreedModel())
