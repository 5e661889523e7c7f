"""``dogbreed serve``: SageMaker's endpoint contract on one machine (FastAPI + uvicorn).

    config.py    ServeConfig: every setting, its validation; the flags are generated from it
    server.py    the loaded model, its one model thread, the decode pool, the batcher, metrics
    batcher.py   dynamic batching of concurrent requests
    routes.py    the app: /ping, /invocations, /endpoints/NAME/invocations, /predict, /, /docs, /metrics
    requests.py  reading what clients send: bounded bodies, the API key
    errors.py    every refusal as ``{"error": ...}``, in SageMaker's shapes on the Runtime API route
    main.py      ``serve(cfg)``: the uvicorn launch

Each request goes through the one inference path (``dogbreed.runtime.pipeline``), the same code
SageMaker's handlers run, with batching and threads around it.
"""

from dogbreed.serve.config import ServeConfig
from dogbreed.serve.main import serve

__all__ = ["ServeConfig", "serve"]
