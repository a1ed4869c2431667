"""A visitor is one browser: client IP plus User-Agent."""

from __future__ import annotations

import hashlib


def normalise_ip(address: str) -> str:
    """Fold IPv4-mapped IPv6 addresses ('::ffff:127.0.0.1') into plain IPv4."""
    return address[7:] if address.lower().startswith("::ffff:") and "." in address else address


def visitor_key(client_ip: str, user_agent: str) -> str:
    """A short, stable, URL-safe key for a browser; the IP and UA are stored beside it."""
    digest = hashlib.sha256(f"{normalise_ip(client_ip)}\n{user_agent}".encode("utf-8", "surrogatepass"))
    return digest.hexdigest()[:16]
