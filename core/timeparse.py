"""Times as people and scripts write them: epoch seconds, ISO 8601, or a span back from now ('10m')."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

_SPAN = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d)$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(text: str, now: float | None = None, allow_span: bool = False) -> float:
    """Epoch seconds, ISO 8601 (UTC when no zone), or with `allow_span` '90s'/'10m'/'2h'/'1d' before `now`."""
    text = text.strip()
    if allow_span and now is not None and (match := _SPAN.match(text)):
        return now - float(match.group(1)) * _UNIT[match.group(2)]
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(number):
            raise ValueError(f"{text!r} is not a finite time")
        return number
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        spans = ", or a span like 10m" if allow_span else ""
        raise ValueError(f"{text!r} is neither epoch seconds nor an ISO 8601 time{spans}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
