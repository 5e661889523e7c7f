"""``dogbreed serve``'s flags and the uvicorn launch."""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import asdict

from dogbreed.errors import DogbreedError
from dogbreed.runtime.presets import DEFAULT_MAX_PIXELS
from dogbreed.serve import BACKENDS

log = logging.getLogger(__name__)
MAX_HEADER_BYTES = 64 * 1024


def add_serve_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="model.tar.gz", help="trained artifact (or its unpacked folder)")
    p.add_argument("--name", default="dogbreed", help="endpoint name /endpoints/NAME/invocations answers to (default: dogbreed)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind; 0.0.0.0 exposes the server to the network (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port; SageMaker's containers use 8080 (default: 8080)")
    p.add_argument("--workers", type=int, default=1, help="server processes, each with its own model copy (default: 1)")
    p.add_argument("--max-batch-size", type=int, default=8, help="most images run through the model at once; 8 is fastest on CPU, try more on GPU (default: 8)")
    p.add_argument("--max-delay-ms", type=float, default=5.0, help="how long the first image of a batch waits for others (default: 5)")
    p.add_argument("--queue-size", type=int, default=256, help="images that may wait; past it requests get 503 + Retry-After (default: 256)")
    p.add_argument("--timeout-s", type=float, default=30.0, help="a request waiting longer gets 504 (default: 30)")
    p.add_argument("--max-body-mb", type=float, default=6.0, help="largest request body; larger gets 413 (default: 6, SageMaker's limit)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"largest image in pixels, checked before decoding; predict and training use the same (default: {DEFAULT_MAX_PIXELS})")
    p.add_argument("--max-instances", type=int, default=16, help="most images in one JSON request (default: 16)")
    p.add_argument("--topk", type=int, default=5, help="breeds per answer; a request may ask otherwise with the topk= custom attribute (default: 5)")
    p.add_argument("--threshold", type=float, default=None, help="low_confidence below this top-1 probability (default: the artifact's, 0.8)")
    p.add_argument("--backend", default="eager", help=f"model runtime: {', '.join(BACKENDS)} (default: eager)")
    p.add_argument("--api-key", default=os.environ.get("DOGBREED_API_KEY"),
                   help="require Authorization: Bearer KEY on everything but /ping and the page (default: $DOGBREED_API_KEY, else none)")


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from dogbreed.artifact import load_artifact
    from dogbreed.serve.app import ServeConfig, Server, create_app
    from dogbreed.serve.requests import MAX_TOPK

    fields = set(ServeConfig.__dataclass_fields__)
    cfg = ServeConfig(**{k: v for k, v in vars(args).items() if k in fields})
    if cfg.backend not in BACKENDS:
        raise DogbreedError(f"--backend {cfg.backend!r} is not available; choose one of: {', '.join(BACKENDS)}")
    for key in ("max_batch_size", "queue_size", "workers", "max_instances", "topk"):
        if getattr(cfg, key) < 1:
            raise DogbreedError(f"--{key.replace('_', '-')} must be at least 1")
    if not 1 <= cfg.port <= 65535:
        raise DogbreedError(f"--port must be 1..65535, got {cfg.port}")
    if not cfg.max_body_mb > 0 or not cfg.timeout_s > 0 or cfg.max_pixels < 1 or cfg.max_delay_ms < 0:
        raise DogbreedError("--max-body-mb, --timeout-s and --max-pixels must be positive, --max-delay-ms at least 0")
    if cfg.topk > MAX_TOPK:
        raise DogbreedError(f"--topk must be at most {MAX_TOPK}")
    if cfg.threshold is not None and not 0 <= cfg.threshold <= 1:
        raise DogbreedError(f"--threshold must be in [0, 1], got {cfg.threshold:g}")
    if cfg.host not in ("127.0.0.1", "localhost", "::1") and not cfg.api_key:
        log.warning("serving on %s without --api-key: anyone who can reach this address can use the model", cfg.host)
    # h11 bounds a request's headers (httptools reads any amount); the body has its own limit.
    http = {"host": cfg.host, "port": cfg.port, "log_level": "warning", "http": "h11",
            "h11_max_incomplete_event_size": MAX_HEADER_BYTES}
    if cfg.workers > 1:
        load_artifact(cfg.model, device="cpu", backend=cfg.backend)  # fail here, in one line, not in each worker
        log.info("serving %s on http://%s:%d (endpoint name %r, %d workers)", cfg.model, cfg.host, cfg.port, cfg.name,
                 cfg.workers)
        os.environ["DOGBREED_SERVE_CONFIG"] = json.dumps(asdict(cfg))
        uvicorn.run("dogbreed.serve.app:app_from_env", factory=True, workers=cfg.workers, **http)
    else:
        server = Server(cfg)
        server.load()  # fail here, in one line; the model is loaded once, on the thread that will run it
        log.info("serving %s on http://%s:%d (endpoint name %r)", cfg.model, cfg.host, cfg.port, cfg.name)
        uvicorn.run(create_app(cfg, server), **http)
    return 0
