"""Run configs in and out: Hydra's composed config, and config.yaml (written into every
checkpoint, read back by resume, evaluate, export and finetune)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from llmtune.config.build import build_run_config
from llmtune.config.schema import RunConfig
from llmtune.errors import ConfigError


def from_hydra(cfg: DictConfig) -> tuple[RunConfig, Path]:
    """The validated RunConfig of a Hydra job, and the job's output (run) directory."""
    from hydra.core.hydra_config import HydraConfig

    try:
        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:
            raise ConfigError(f"{missing[0]} is required; set it with {missing[0]}=<value>")
        container = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        where = f"{key}: " if key else ""
        raise ConfigError(f"{where}cannot resolve ({str(exc).splitlines()[0]})") from None
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    return build_run_config(container), run_dir


def to_yaml(config: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.create(dataclasses.asdict(config)))


def load_yaml(path: Path) -> RunConfig:
    """Read a config.yaml written by `to_yaml` (e.g. from a checkpoint) and validate it.

    Keys a section's chosen class does not have are dropped: configs written before each
    choice had its own keys (every objective's keys in every checkpoint) still load.
    """
    try:
        values: Any = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except (OSError, OmegaConfBaseException) as exc:
        raise ConfigError(f"{path}: cannot read config ({str(exc).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: not a config mapping")
    return build_run_config(values, saved=True)
