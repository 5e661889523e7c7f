"""``serve(cfg)``: the uvicorn launch, in one process or several."""

from __future__ import annotations

import dataclasses
import errno
import inspect
import json
import logging
import os
import socket

from dogbreed import registry, remote
from dogbreed.errors import DogbreedError
from dogbreed.files import make_folder
from dogbreed.lifetime import PARENT_ENV, end_with_parent
from dogbreed.serve.config import ServeConfig

log = logging.getLogger(__name__)
MAX_HEADER_BYTES = 64 * 1024
CONFIG_ENV = "DOGBREED_SERVE_CONFIG"  # how ``--workers N`` hands the settings to each worker process


def serve(cfg: ServeConfig) -> None:
    """Serve until interrupted. The port is taken first and the artifact loads before the server
    listens, so a busy port or a bad artifact is a one-line error, and /ping never answers for a
    model that cannot run."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from dogbreed.artifact import load_artifact
    from dogbreed.serve.routes import create_app
    from dogbreed.serve.server import Server

    cfg.validate()
    if remote.is_s3(cfg.capture):  # a destination that cannot be written is one line now, not a warning per record
        remote.check_writable(cfg.capture)
    elif cfg.capture:
        make_folder(cfg.capture, "--capture")
    sock = listen_socket(cfg.host, cfg.port)
    shown = cfg.model
    if remote.is_s3(cfg.model) or registry.is_model_uri(cfg.model):  # fetched once, here: each worker loads the copy
        cfg = dataclasses.replace(cfg, model=str(registry.model_file(cfg.model)))
    if cfg.exposed and not cfg.api_key:
        log.warning("serving on %s without --api-key: anyone who can reach this address can use the model", cfg.host)
    port = sock.getsockname()[1]  # --port 0: the one the system chose
    # h11 bounds a request's headers (httptools reads any amount); the body has its own limit.
    http = {"host": cfg.host, "port": port, "log_level": "warning", "http": "h11",
            "h11_max_incomplete_event_size": MAX_HEADER_BYTES}
    where = f"http://{cfg.host}:{port} (endpoint name {cfg.name!r}"
    if cfg.capture:
        where += f", capturing {cfg.capture_percent:g}% of requests to {cfg.capture}"
    if cfg.workers > 1:
        # fail here, in one line, not in each worker; and choose the backend once, here, for all of them
        # (workers timing at once would measure each other)
        model = load_artifact(cfg.model, device="cpu", backend=cfg.backend, budget_s=cfg.backend_budget_s,
                              batch_sizes=tuple(sorted({1, cfg.max_batch_size})), name=shown)
        cfg = dataclasses.replace(cfg, backend=model.backend)
        log.info("serving %s on %s, %d workers; each says when it is ready; %s)", shown, where, cfg.workers,
                 describe(model))
        os.environ[CONFIG_ENV] = json.dumps(cfg.to_dict())
        os.environ[PARENT_ENV] = str(os.getpid())
        config = uvicorn.Config("dogbreed.serve.main:worker_app", factory=True, workers=cfg.workers, **http)
        # uvicorn's own multi-process supervisor (its `target` argument went away in newer releases)
        extra = {"target": uvicorn.Server(config).run} if "target" in inspect.signature(Multiprocess).parameters else {}
        Multiprocess(config, sockets=[sock], **extra).run()
        return
    server = Server(cfg)
    model = server.load()  # the model is loaded once, on the thread that will run it
    log.info("serving %s on %s; %s)", shown, where, describe(model))
    runner = uvicorn.Server(uvicorn.Config(create_app(cfg, server), **http))
    runner.run(sockets=[sock])
    if not runner.started:
        raise DogbreedError("the server did not start; the lines above say why")


def describe(model) -> str:
    """The backend the model runs on and how it was chosen, for the serving line."""
    return model.selection.line() if model.selection else f"backend {model.backend}"


def listen_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (0: any free port); what stands in the way is one line."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror:
        raise DogbreedError(f"--host {host!r} is not an address of this machine; use 127.0.0.1, or 0.0.0.0 for "
                            f"every interface") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise DogbreedError(f"port {port} on {host} is in use (another server?); pick another --port, or "
                                f"--port 0 for any free one") from None
        raise DogbreedError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); check --host and --port") from None
    return sock


def worker_app():
    """The app of one ``--workers N`` process (uvicorn's factory), configured by the parent."""
    from dogbreed.logs import setup_logging
    from dogbreed.serve.routes import create_app

    end_with_parent(int(os.environ[PARENT_ENV]))  # a `dogbreed serve` killed outright takes its workers along
    setup_logging()  # each worker says when its model is loaded and warmed
    return create_app(ServeConfig(**json.loads(os.environ[CONFIG_ENV])))
