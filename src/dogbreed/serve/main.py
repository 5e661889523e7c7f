"""``serve(cfg)``: the uvicorn launch, in one process or several."""

from __future__ import annotations

import json
import logging
import os

from dogbreed.serve.config import ServeConfig

log = logging.getLogger(__name__)
MAX_HEADER_BYTES = 64 * 1024
CONFIG_ENV = "DOGBREED_SERVE_CONFIG"  # how ``--workers N`` hands the settings to each worker process


def serve(cfg: ServeConfig) -> None:
    """Serve until interrupted. The artifact loads before the socket opens, so a bad one is a
    one-line error and /ping never answers for a model that cannot run."""
    import uvicorn

    from dogbreed.artifact import load_artifact
    from dogbreed.serve.routes import create_app
    from dogbreed.serve.server import Server

    cfg.validate()
    if cfg.exposed and not cfg.api_key:
        log.warning("serving on %s without --api-key: anyone who can reach this address can use the model", cfg.host)
    # h11 bounds a request's headers (httptools reads any amount); the body has its own limit.
    http = {"host": cfg.host, "port": cfg.port, "log_level": "warning", "http": "h11",
            "h11_max_incomplete_event_size": MAX_HEADER_BYTES}
    where = f"http://{cfg.host}:{cfg.port} (endpoint name {cfg.name!r}"
    if cfg.workers > 1:
        load_artifact(cfg.model, device="cpu", backend=cfg.backend)  # fail here, in one line, not in each worker
        log.info("serving %s on %s, %d workers)", cfg.model, where, cfg.workers)
        os.environ[CONFIG_ENV] = json.dumps(cfg.to_dict())
        uvicorn.run("dogbreed.serve.main:worker_app", factory=True, workers=cfg.workers, **http)
    else:
        server = Server(cfg)
        server.load()  # the model is loaded once, on the thread that will run it
        log.info("serving %s on %s)", cfg.model, where)
        uvicorn.run(create_app(cfg, server), **http)


def worker_app():
    """The app of one ``--workers N`` process (uvicorn's factory), configured by the parent."""
    from dogbreed.serve.routes import create_app

    return create_app(ServeConfig(**json.loads(os.environ[CONFIG_ENV])))
