"""A PyTorch module as an ONNX graph, for ONNX Runtime: the network ``dogbreed export`` writes
beside model.pth, and the backbone the embedding cache runs there."""

from __future__ import annotations

import contextlib
import io
import warnings

import torch


def onnx_export(module: torch.nn.Module, example: torch.Tensor, path: str, outputs: list[str]) -> None:
    """``module`` as ONNX with a dynamic batch size and input ``images`` (torch's dynamo exporter)."""
    batch = torch.export.Dim("batch", min=1, max=1024)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():  # the exporter's step-by-step chatter
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module.eval(), (example,), input_names=["images"], output_names=outputs,
                                    dynamic_shapes=({0: batch},), dynamo=True, verbose=False)
    program.save(path)
