"""Compose a command's config the way `llmtune <command>` will, before Hydra runs it: for
`--help`, and so a composition error (a missing option in a user config directory, a bad
interpolation) ends as one line instead of Hydra's multi-line report."""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from llmtune.errors import ConfigError


def compose(command: str, overrides: list[str]) -> dict[str, Any]:
    """The composed config (unresolved: `???` marks a required key), without Hydra's node."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("llmtune.configs", version_base="1.3"):
            cfg = hydra_compose(config_name=command, overrides=overrides)
        container = OmegaConf.to_container(cfg, resolve=False)
    except (HydraException, OmegaConfBaseException) as exc:
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        raise ConfigError(lines[0] if lines else type(exc).__name__) from None
    finally:
        GlobalHydra.instance().clear()
    return {k: v for k, v in container.items() if k != "hydra"}
