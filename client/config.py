"""Where the API is and which key to send: options, then the environment, then the key file the server wrote."""

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
# Written by `rlhf-service serve` on its first start (core.settings.Settings.local_key_file), read
# relative to the current directory: the client run in the checkout finds the local service's key.
KEY_FILE = Path("var/api-key")


class ConfigError(Exception):
    """The client cannot know where to send requests or which key to use."""


@dataclass(frozen=True)
class Config:
    base_url: str
    api_key: str | None
    key_source: str  # where the key came from, for error messages


def resolve(*, base_url: str | None = None, api_key: str | None = None, env: Mapping[str, str] | None = None,
            cwd: Path | None = None) -> Config:
    """The options win, then RLHF_BASE_URL / RLHF_API_KEY, then the default address and `var/api-key`."""
    env = os.environ if env is None else env
    url = base_url or env.get("RLHF_BASE_URL") or DEFAULT_BASE_URL
    url = url.rstrip("/").removesuffix("/v1")  # an OpenAI-style base URL names the same server
    if api_key:
        return Config(url, api_key.strip(), "--api-key")
    if env.get("RLHF_API_KEY"):
        return Config(url, env["RLHF_API_KEY"].strip(), "RLHF_API_KEY")
    key_file = (cwd or Path.cwd()) / KEY_FILE
    try:
        key = key_file.read_text().strip()
    except FileNotFoundError:
        return Config(url, None, "none")
    except OSError as exc:
        raise ConfigError(f"cannot read the API key file {key_file}: {exc.strerror}") from None
    return Config(url, key or None, str(KEY_FILE))


def require_key(config: Config) -> str:
    if not config.api_key:
        raise ConfigError(f"no API key: pass --api-key, set RLHF_API_KEY, or run where {KEY_FILE} is "
                          "(the file the service writes on its first start)")
    return config.api_key
