"""Credentials on the command line: refused before Hydra records the overrides (in the run
folder's .hydra/, then config.yaml and metrics), and never echoed in the error."""

from __future__ import annotations

import re

from llmtune.errors import ConfigError

# A key's last part that names a credential: token, hf_token, password, api_key, secret, ...
_CREDENTIAL_KEY = re.compile(
    r"(\w+_)?(token|password|passwd|pwd|secret|secret_key|api_?key|access_?key|credentials?)",
    re.IGNORECASE,
)
# user:password@ (or a bare token@) before a URL's host
_URL_USERINFO = re.compile(r"[a-z][a-z0-9+.-]*://[^/?#\s@]+@", re.IGNORECASE)
USE_ENV = "give credentials through the environment (e.g. HF_TOKEN), never on the command line"


def refuse_credentials(overrides: list[str]) -> None:
    """One line naming the key (not the value) of the first override holding a credential."""
    for text in overrides:
        key, _, value = text.partition("=")
        key = key.lstrip("+~").split("@")[0]
        if _CREDENTIAL_KEY.fullmatch(key.rsplit(".", 1)[-1]):
            raise ConfigError(f"{key}: looks like a credential (value not shown); {USE_ENV}")
        if _URL_USERINFO.search(value):
            raise ConfigError(
                f"{key}: the value holds credentials in a URL (user:password@host; not shown), "
                f"which the run folder would keep; {USE_ENV}"
            )
