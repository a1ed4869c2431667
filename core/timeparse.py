"""Times as people and scripts write them (epoch seconds, ISO 8601, or a span back from now ('10m')), the range
of times a record may hold, and times written back out so that no stored number can make that fail."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

# The times a record may hold: from the epoch to the start of the year 9999 (UTC). A year's margin keeps every
# such time, in any time zone and after any duration, within what a date can hold.
EARLIEST = 0.0
LATEST = datetime(9999, 1, 1, tzinfo=UTC).timestamp()

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


def in_range(ts: float) -> bool:
    """Whether a time lies in the range a record may hold (EARLIEST to LATEST)."""
    return EARLIEST <= ts <= LATEST


def _moment(ts: float) -> datetime | None:
    try:
        return datetime.fromtimestamp(ts, UTC)
    except (OverflowError, ValueError, OSError):  # non-finite, or no date can hold it
        return None


def _unshowable(ts: float) -> str:
    return f"out of range ({ts:g} s)"


def iso_utc(ts: float, timespec: str = "auto") -> str:
    """Epoch seconds -> ISO 8601 UTC ('...Z'); a time no date can hold as 'out of range (N s)', never an error."""
    moment = _moment(ts)
    if moment is None:
        return _unshowable(ts)
    return moment.isoformat(timespec=timespec).replace("+00:00", "Z")


def clock_utc(ts: float) -> str:
    """Epoch seconds -> 'YYYY-MM-DD HH:MM:SS.mmm UTC'; a time no date can hold as 'out of range (N s)'."""
    moment = _moment(ts)
    if moment is None:
        return _unshowable(ts)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d} UTC"
