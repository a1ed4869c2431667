"""Add the data-layer observer's script element to a storefront page, as early in the document as it can go."""

from __future__ import annotations

import re

from clickwatch.core.observer import OBSERVER_SCRIPT_PATH, TOKEN_ATTRIBUTE

# Where to look for the document's opening tags: they come first, and a page can be megabytes long.
_SEARCH_BYTES = 65536
_HEAD = re.compile(rb"<head(?:\s[^>]*)?>", re.IGNORECASE)
_HTML = re.compile(rb"<html(?:\s[^>]*)?>", re.IGNORECASE)
_DOCTYPE = re.compile(rb"\A(?:\xef\xbb\xbf)?\s*<!doctype[^>]*>", re.IGNORECASE)
_NONCE_SAFE = re.compile(r"[A-Za-z0-9+/_=-]{1,200}")
_TOKEN_SAFE = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Encodings in which '<head>' is not ASCII bytes: the page is left as it is.
_WIDE = re.compile(r"utf-?16|utf-?32|ucs-?2", re.IGNORECASE)


def script_element(nonce: str | None = None, token: str | None = None) -> bytes:
    """The element the proxy adds: synchronous, so it runs before the storefront's and the tag's scripts.

    `token` (core.observer.new_token) binds the observer's reports to this page: it rides in an attribute, so the
    script itself stays one cacheable file.
    """
    if nonce is None and token is None:
        return _PLAIN_ELEMENT
    attributes = f' {TOKEN_ATTRIBUTE}="{token}"' if token and _TOKEN_SAFE.fullmatch(token) else ""
    if nonce and _NONCE_SAFE.fullmatch(nonce):
        attributes += f' nonce="{nonce}"'
    return f'<script src="{OBSERVER_SCRIPT_PATH}"{attributes}></script>'.encode()


def inject(document: bytes, content_type: str, nonce: str | None = None, token: str | None = None) -> bytes | None:
    """The document with the observer's script first in <head> (else after <html>, else first); None: leave it."""
    if _WIDE.search(content_type) or document[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return None
    element = script_element(nonce, token)
    start = document[:_SEARCH_BYTES]
    for pattern in (_HEAD, _HTML, _DOCTYPE):
        match = pattern.search(start)
        if match is not None:
            return document[: match.end()] + element + document[match.end() :]
    return element + document


_PLAIN_ELEMENT = f'<script src="{OBSERVER_SCRIPT_PATH}"></script>'.encode()
