"""`llmtune serve`: a checkpoint behind an OpenAI-style HTTP API (FastAPI + uvicorn)."""

from llmtune.serve.app import build_app
from llmtune.serve.engine import Engine
from llmtune.serve.model import Served, load_served

__all__ = ["Engine", "Served", "build_app", "load_served"]
