"""The dashboard's settings, from arguments or CLICKWATCH_* environment variables.

Declared in core.settings (names, defaults, variables); DashboardSettings is their pydantic-settings view, and
tests/test_settings_table.py checks that it agrees with the table.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any

from pydantic import field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from clickwatch.core.settings import BY_NAME, ENV_PREFIX, default


def is_loopback(host: str) -> bool:
    """Whether a listen address only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class DashboardSettings(BaseSettings):
    """Where the store is, where to listen, and who may look."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    db: str = default("db")
    listen_host: str = default("listen_host")
    dashboard_port: int = default("dashboard_port")
    token: str | None = default("token") or None
    proxy_url: str = default("proxy_url")
    confdir: str = default("confdir")
    poll_seconds: float = default("poll_seconds")
    # The storefront hosts the proxy intercepts (the setup page says which): comma-separated in the environment.
    storefront: Annotated[tuple[str, ...], NoDecode] = default("storefront")
    # The reverse proxies whose X-Forwarded-For names the client (docs/operations.md, "Security"): comma-separated.
    forwarded_allow_ips: Annotated[tuple[str, ...], NoDecode] = default("forwarded_allow_ips")

    @field_validator("storefront", "forwarded_allow_ips", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        return tuple(h.strip() for h in value.split(",") if h.strip()) if isinstance(value, str) else value

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _addresses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        problem = BY_NAME["forwarded_allow_ips"].problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    def needs_token(self) -> bool:
        """Anything but loopback must be protected by an access token."""
        return not is_loopback(self.listen_host)
