"""Keeping the observer on pages Angular's service worker serves from its cache, without breaking the worker.

Angular's worker (`ngsw-worker.js`) fetches the files its manifest (`ngsw.json`) lists, `index.html` among them,
checks each body's SHA-1 against the manifest's `hashTable`, and answers navigations with its cached
`index.html`. The proxy adds the observer to that copy too, and gives the manifest the SHA-1 of the copy with the
observer, so the worker's checks pass and its update checks find nothing new. That needs the addition to be the
same bytes every time (no per-page token, no nonce) and the proxy to know the hash of the page with the observer
before the manifest passes: it learns it when it adds the observer to a page load whose HTML is that same
`index.html` (an Angular app answers every route with it). Plain values in, plain values out.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass

from clickwatch.core.decoding import DecodeError, undo_content_encoding
from clickwatch.core.inject import inject
from clickwatch.core.observer import OBSERVER_SCRIPT_PATH

MANIFEST_NAME = "/ngsw.json"
# Where a page served from a worker's copy (which carries no per-page token) asks the proxy for its token.
WORKER_PAGE_PATH = "/__clickwatch/page"
# The observer's element in a worker's copy: no token (one copy serves every page), and an attribute that tells the
# observer to ask WORKER_PAGE_PATH for one.
WORKER_ATTRIBUTE = "data-clickwatch-worker"
WORKER_ELEMENT = f'<script src="{OBSERVER_SCRIPT_PATH}" {WORKER_ATTRIBUTE}></script>'.encode()
MAX_MANIFEST_BYTES = 4 << 20
# Pages kept per origin until a manifest asks for their hashes: an Angular app answers every route with its one
# index.html, so the last few page loads hold it. Only references are kept (no copy, no hashing per page load).
_PAGES_PER_ORIGIN = 2
_MAX_ORIGINS = 64
_MAX_PAGE_BYTES = 256 << 10  # at most 32 MiB kept in all


def sha1(body: bytes) -> str:
    """The hash Angular's worker checks a file with (hex SHA-1 of the decoded body)."""
    return hashlib.sha1(body, usedforsecurity=False).hexdigest()


def is_manifest(path: str) -> bool:
    """Whether a request path (query included) asks for Angular's worker manifest."""
    return path.partition("?")[0].endswith(MANIFEST_NAME)


@dataclass(frozen=True, slots=True)
class Rewritten:
    """A file of the manifest whose hash was replaced: fetched with `original`, it is served as `observed`."""

    path: str
    original: str
    observed: str


def with_observer(page: bytes, content_type: str) -> bytes | None:
    """The page with the observer as a worker's copy gets it: the same bytes every time (no nonce, no token)."""
    if f'src="{OBSERVER_SCRIPT_PATH}"'.encode() in page:
        return None  # the observer is there already: leave the page as it is
    return inject(page, content_type, WORKER_ELEMENT)


class ShellHashes:
    """Per storefront origin, the last pages the observer was added to (without a nonce); hashed on demand."""

    def __init__(self) -> None:
        self._origins: OrderedDict[str, list[tuple[bytes, str, str]]] = OrderedDict()

    def learn(self, origin: str, page: bytes, content_type: str, coding: str = "") -> None:
        """Remember a page as it came, with its Content-Encoding (a reference: no copy, no decoding, no hashing)."""
        if len(page) > _MAX_PAGE_BYTES:
            return
        pages = self._origins.get(origin)
        if pages is None:
            pages = self._origins[origin] = []
            if len(self._origins) > _MAX_ORIGINS:
                self._origins.popitem(last=False)
        pages.append((page, content_type, coding))
        if len(pages) > _PAGES_PER_ORIGIN:
            del pages[0]

    def of(self, origin: str) -> dict[str, str]:
        """original hash -> hash with the observer, for one origin's remembered pages."""
        known = {}
        for raw, content_type, coding in self._origins.get(origin, ()):
            try:
                page = undo_content_encoding(raw, coding) if coding else raw
            except DecodeError:
                continue
            if len(page) > _MAX_PAGE_BYTES:
                continue
            observed = with_observer(page, content_type)
            if observed is not None:
                known[sha1(page)] = sha1(observed)
        return known


def rewrite_manifest(body: bytes, known: dict[str, str]) -> tuple[bytes, tuple[Rewritten, ...]] | None:
    """The manifest with its `index` file's hash replaced by the hash of that file with the observer.

    None when there is nothing to do: not an Angular manifest, an index whose hash the proxy has not seen with the
    observer added, or a body too large. The rest of the manifest is kept as it came (key order included), so the
    worker, which hashes the manifest it parsed, sees the same manifest every time the same files are served.
    """
    if len(body) > MAX_MANIFEST_BYTES or not known:
        return None
    try:
        manifest = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(manifest, dict) or manifest.get("configVersion") != 1:
        return None
    index, table = manifest.get("index"), manifest.get("hashTable")
    if not isinstance(index, str) or not isinstance(table, dict):
        return None
    original = table.get(index)
    observed = known.get(original) if isinstance(original, str) else None
    if original is None or observed is None:
        return None
    table[index] = observed
    return json.dumps(manifest, separators=(",", ":")).encode(), (Rewritten(index, str(original), observed),)
