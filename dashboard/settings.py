"""The dashboard's settings, from arguments or CLICKWATCH_* environment variables."""

from __future__ import annotations

import ipaddress

from pydantic_settings import BaseSettings, SettingsConfigDict


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

    model_config = SettingsConfigDict(env_prefix="CLICKWATCH_", extra="ignore")

    db: str = "clickwatch.db"
    listen_host: str = "127.0.0.1"
    dashboard_port: int = 8000
    token: str | None = None
    proxy_url: str = "http://127.0.0.1:8080"
    confdir: str = "~/.mitmproxy"
    poll_seconds: float = 0.25

    def needs_token(self) -> bool:
        """Anything but loopback must be protected by an access token."""
        return not is_loopback(self.listen_host)
