"""The sections of the deployment commands: `llmtune serve` (the HTTP server) and `llmtune
prune` (what to remove); part of RunConfig (config/schema.py)."""

from __future__ import annotations

from dataclasses import dataclass

from llmtune.errors import ConfigError


def positive(key: str, value: float) -> None:
    """Raise ConfigError unless `value` > 0 (every section checks sizes with it)."""
    if value <= 0:
        raise ConfigError(f"{key}={value}: must be positive")


@dataclass(frozen=True)
class ServeConfig:
    """`llmtune serve`: where the server listens and how much one request may ask for."""

    host: str = "127.0.0.1"  # loopback: this machine only; 0.0.0.0 opens it to the network
    port: int = 8000  # 0 = any free port (printed when the server is up)
    max_tokens: int = 256  # the largest max_tokens a request may ask for (more: 400)
    max_body_bytes: int = 1000000  # larger request bodies get 413
    max_inputs: int = 64  # prompts or texts in one request, at most
    batch_size: int = 8  # prompts completed together, from one or several requests
    batch_wait_ms: float = 5.0  # how long a request waits for others to join its batch
    model_name: str = ""  # the name responses and /v1/models give; empty = the checkpoint's

    def check(self) -> None:
        """Raise ConfigError naming the first invalid key."""
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"serve.port={self.port}: must be in 0..65535 (0 = any free port)")
        for key in ("max_tokens", "max_body_bytes", "max_inputs", "batch_size"):
            positive(f"serve.{key}", getattr(self, key))
        if self.batch_wait_ms < 0:
            raise ConfigError(f"serve.batch_wait_ms={self.batch_wait_ms}: must be >= 0")


@dataclass(frozen=True)
class PruneConfig:
    """`llmtune prune`: which parts go, by importance measured on data.train."""

    layers: int = 0  # whole blocks to remove, those whose skipping raises the loss least
    keep_every: int = 0  # instead: keep blocks 0, k, 2k, ... (a distillation student's start)
    ffn_fraction: float = 0.0  # share of every block's MLP neurons to remove, least important
    heads: int = 0  # attention heads to remove in all blocks, least important (bert, gpt)
    batches: int = 8  # batches of data.train (evaluate.batch_size rows) importance is measured on
    latency_runs: int = 10  # timed batches per model (median reported)

    def check(self) -> None:
        """Raise ConfigError naming the first invalid key."""
        if self.layers < 0:
            raise ConfigError(f"prune.layers={self.layers}: must be >= 0")
        if not 0 <= self.ffn_fraction < 1:
            raise ConfigError(f"prune.ffn_fraction={self.ffn_fraction}: must be in [0, 1)")
        if self.keep_every < 0:
            raise ConfigError(f"prune.keep_every={self.keep_every}: must be >= 0")
        if self.heads < 0:
            raise ConfigError(f"prune.heads={self.heads}: must be >= 0")
        if self.layers and self.keep_every:
            raise ConfigError("prune.layers and prune.keep_every both choose blocks; set one")
        if self.layers == 0 and self.keep_every < 2 and self.ffn_fraction == 0 and not self.heads:
            raise ConfigError(
                "nothing to prune: set prune.layers=<blocks>, prune.keep_every=<k> (>= 2), "
                "prune.heads=<heads> and/or prune.ffn_fraction=<share>"
            )
        positive("prune.batches", self.batches)
        positive("prune.latency_runs", self.latency_runs)
