"""An artifact's handlers run the way SageMaker runs them: the SageMaker inference toolkit's
``Transformer`` (what SageMaker's PyTorch containers call handlers through) dispatching requests to
``code/inference.py``, with TorchServe's request context, in a fresh interpreter where only the
artifact's ``code/`` folder is importable as the handlers' package (dogbreed itself is never imported).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent("""
    import base64, json, os, sys
    code_dir, model_dir = sys.argv[1:3]
    sys.path.insert(0, code_dir)
    from sagemaker_inference.transformer import Transformer
    from ts.context import Context, RequestProcessor

    transformer = Transformer()
    context = Context("dogbreed", model_dir, {}, 1, None, "0")  # one per model worker, as TorchServe keeps it
    out = []
    for case in json.load(sys.stdin):
        context.request_processor = [RequestProcessor(case["headers"])]  # each request's, as TorchServe sets it
        body = transformer.transform([{"body": base64.b64decode(case["body"])}], context)[0]
        processor = context.request_processor[0]
        out.append({"status": processor.get_response_status_code(),
                    "content_type": processor.get_response_header("content-type"),
                    "body": body if isinstance(body, str) else body.decode(errors="replace"),
                    "body_b64": base64.b64encode(body.encode() if isinstance(body, str) else body).decode()})
    leaked = sorted(m for m in sys.modules if m.split(".")[0] == "dogbreed")
    assert not leaked, f"the handlers imported {leaked}"
    print(json.dumps(out))
""")


def run_handlers(model_dir: str | os.PathLike, requests: list[tuple[bytes, dict]], env: dict | None = None,
                 timeout: float = 300) -> list[dict]:
    """Each (body, headers) through the toolkit: {"status", "content_type", "body", "body_b64"} per
    request (``body_b64``: the bytes, for an image). An error's body is the toolkit's: the handler's
    message, then the traceback."""
    cases = [{"body": base64.b64encode(body).decode(), "headers": headers} for body, headers in requests]
    full_env = {**os.environ, "SAGEMAKER_PROGRAM": "inference.py", **(env or {})}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(Path(model_dir) / "code"), str(model_dir)],
                          input=json.dumps(cases), capture_output=True, text=True, env=full_env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.splitlines()[-1])
