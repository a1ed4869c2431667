"""Webhook notifications for a QA working without Prometheus: rate-limited, retried, never blocking the proxy."""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from urllib.parse import urlsplit

from clickwatch.core.pipeline import Notice

log = logging.getLogger("clickwatch.notify")

MAX_LISTED = 10


class WebhookError(ValueError):
    """A webhook URL that cannot be used."""


def check_url(url: str) -> str:
    """Validate a webhook URL; returns it unchanged."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookError(f"{redact(url)!r} is not an http(s) URL")
    return url


def redact(url: str) -> str:
    """A webhook URL fit for logs: Slack-style URLs carry their secret in the path."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}/…" if parts.netloc else "<invalid url>"


def message(notices: list[Notice], dashboard_url: str | None) -> dict[str, object]:
    """The JSON body: a Slack-compatible `text` plus the structured notices."""
    runs = sorted({n.run for n in notices})
    lines = [f"clickwatch: {len(notices)} problem(s) in run(s) {', '.join(runs)}"]
    lines += [f"• {n.title}: {n.detail}" for n in notices[:MAX_LISTED]]
    if len(notices) > MAX_LISTED:
        lines.append(f"… and {len(notices) - MAX_LISTED} more")
    if dashboard_url:
        lines.append(f"Dashboard: {dashboard_url}")
    return {
        "text": "\n".join(lines),
        "notices": [{"run": n.run, "title": n.title, "detail": n.detail, "at": n.at} for n in notices],
    }


class WebhookNotifier:
    """Gathers notices and posts at most one message per interval from its own thread."""

    def __init__(
        self,
        url: str,
        *,
        min_interval: float = 10.0,
        retries: int = 3,
        timeout: float = 5.0,
        queue_size: int = 1000,
        dashboard_url: str | None = None,
    ) -> None:
        self.url = check_url(url)
        self.min_interval = min_interval
        self.retries = retries
        self.timeout = timeout
        self.dashboard_url = dashboard_url
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self._queue: queue.Queue[Notice] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="clickwatch-webhook", daemon=True)
        self._thread.start()

    def notify(self, notices: Iterable[Notice]) -> None:
        """Hand over notices; never blocks, drops (and counts) beyond the queue's bound."""
        for notice in notices:
            try:
                self._queue.put_nowait(notice)
            except queue.Full:
                self.dropped += 1

    def close(self, timeout: float = 5.0) -> None:
        """Send what is gathered (one last message) and stop."""
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        last_sent = float("-inf")
        while True:
            batch = self._gather(last_sent)
            if batch:
                self._post(batch)
                last_sent = time.monotonic()
            elif self._stop.is_set():
                return

    def _gather(self, last_sent: float) -> list[Notice]:
        try:
            first = self._queue.get(timeout=0.2)
        except queue.Empty:
            return []
        batch = [first]
        # Rate limit: whatever arrives until the interval has passed goes into the same message.
        while not self._stop.is_set() and time.monotonic() < last_sent + self.min_interval:
            time.sleep(0.05)
        while True:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                return batch

    def _post(self, batch: list[Notice]) -> None:
        body = json.dumps(message(batch, self.dashboard_url)).encode()
        delay = 0.5
        for attempt in range(1, self.retries + 1):
            request = urllib.request.Request(
                self.url, data=body, method="POST", headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    response.read()
                self.sent += 1
                return
            except urllib.error.HTTPError as exc:
                if exc.code < 500 and exc.code != 429:
                    log.warning("webhook %s refused the notification: HTTP %d", redact(self.url), exc.code)
                    break
                reason = f"HTTP {exc.code}"
            except (urllib.error.URLError, OSError) as exc:
                reason = str(getattr(exc, "reason", exc))
            if attempt < self.retries and not self._stop.is_set():
                time.sleep(delay)
                delay *= 2
            log.info("webhook %s attempt %d failed (%s)", redact(self.url), attempt, reason)
        self.failed += 1
        log.warning("clickwatch could not notify %s; %d notice(s) not sent", redact(self.url), len(batch))
