"""`llmtune serve`: load a checkpoint once, then answer OpenAI-style HTTP requests on
serve.host:serve.port (loopback by default) until interrupted."""

from __future__ import annotations

import importlib.util
import socket
from pathlib import Path

import torch

from llmtune.config.schema import RunConfig
from llmtune.console import console as shared_console
from llmtune.console import note, stage
from llmtune.errors import ConfigError
from llmtune.train.hardware import resolve_runtime

SERVE_HINT = "pip install 'llmtune[serve]'"


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the model loads: a taken port fails in a second."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)  # connections made before uvicorn starts wait in the backlog
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"serve.host={host} serve.port={port}: cannot listen there ({exc.strerror}); "
            "choose another port (serve.port=0 takes any free one)"
        ) from None
    return sock


def run(config: RunConfig, run_dir: Path) -> None:
    cfg = config.serve
    cfg.check()
    missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"llmtune serve needs {', '.join(missing)}: {SERVE_HINT}")
    import uvicorn

    from llmtune.serve import Engine, build_app, load_served

    sock = _bind(cfg.host, cfg.port)
    runtime = resolve_runtime(config.hardware)
    torch.manual_seed(config.seed)
    with stage("checkpoint", f"loading {config.ckpt}"):
        served = load_served(config.ckpt, runtime.device, cfg.model_name)
        note(f"{served.loaded.family} {list(served.loaded.model.heads)} as '{served.name}'")
    engine = Engine(served, cfg, config.seed)
    app = build_app(served, engine, cfg)
    host, port = sock.getsockname()[:2]
    console = shared_console()
    console.print(f"serving {served.loaded.step_dir} on http://{host}:{port}", soft_wrap=True)
    console.print(f"routes: {', '.join(served.endpoints())}  (Ctrl-C stops)", soft_wrap=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    engine.start()
    try:
        server.run(sockets=[sock])  # uvicorn shuts down gracefully, then re-raises Ctrl-C
    except KeyboardInterrupt:
        pass  # the way a server is meant to stop: not an error
    finally:
        engine.stop()
        sock.close()
        console.print(f"stopped after {len(engine.batches)} generation batches")
