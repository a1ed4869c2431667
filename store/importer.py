"""Import a HAR recording as its own run, judged exactly like live traffic, all or nothing."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from clickwatch.core.config import Config
from clickwatch.core.findings import clip
from clickwatch.core.har import HarError, observations
from clickwatch.core.model import BrowserReport, ObserverRejected, StorefrontSeen
from clickwatch.core.pipeline import Pipeline, StoreOps
from clickwatch.store.apply import apply_ops
from clickwatch.store.schema import open_database


class HarImportError(ValueError):
    """An import that cannot be done; nothing was written."""


@dataclass(frozen=True, slots=True)
class ImportResult:
    """What an import added."""

    run: str
    deliveries: int
    findings: int
    storefront_requests: int
    observer_reports: int = 0  # the data-layer observer's reports read, bound to their pages as live
    observer_refused: int = 0  # those that did not fit their page (core.observer.refusal)


def import_har(har_path: str, db_path: str, run: str | None = None, config: Config | None = None) -> ImportResult:
    """Judge a HAR file's traffic and store it as run `run` (default: the file's name) in one transaction."""
    run = run or Path(har_path).stem
    try:
        with open(har_path, encoding="utf-8-sig") as handle:
            har = json.load(handle)
    except OSError as exc:
        raise HarImportError(f"{har_path}: cannot read ({exc.strerror or exc})") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise HarImportError(f"{har_path}: not a JSON file ({clip(str(exc), 200)})") from None
    except RecursionError:
        raise HarImportError(f"{har_path}: not a HAR file (JSON nested too deeply to read)") from None
    config = config or Config()
    try:
        seen = observations(har, run, config.patterns())
    except HarError as exc:
        raise HarImportError(f"{har_path}: {exc}") from None
    pipeline = Pipeline(config)
    ops = StoreOps()
    for observation in seen:
        ops.extend(pipeline.process(observation))
    ops.extend(pipeline.evaluate(float("inf"), final=True))
    try:
        db = open_database(db_path, timeout=10.0)
    except sqlite3.Error as exc:
        raise HarImportError(f"{db_path}: cannot open the store ({exc})") from None
    try:
        with db.conn:
            if db.conn.execute("SELECT 1 FROM deliveries WHERE run = ? LIMIT 1", (run,)).fetchone():
                raise HarImportError(f"run {run!r} already has deliveries in {db_path}: choose another --run")
            apply_ops(db.conn, ops)
    except sqlite3.Error as exc:
        raise HarImportError(f"{db_path}: import failed, nothing was written ({exc})") from None
    finally:
        db.conn.close()
    return ImportResult(
        run=run,
        deliveries=len(ops.inserts),
        findings=len(ops.findings),
        storefront_requests=sum(1 for o in seen if isinstance(o, StorefrontSeen)),
        observer_reports=sum(1 for o in seen if isinstance(o, BrowserReport)),
        observer_refused=sum(n for o in seen if isinstance(o, ObserverRejected) for _, n in o.counts),
    )
