"""Turn raw message bytes into a storable body: undo content encodings, parse JSON, bound the work and the size.

Bounded whatever the input: a body is never inflated past a cap (streaming, the whole output is never allocated),
JSON is parsed only when its count of values and its depth are small enough, and an odd charset never raises.
"""

from __future__ import annotations

import base64
import codecs
import functools
import json
import re
import zlib
from collections.abc import Callable
from typing import Any

import brotli
import zstandard

from clickwatch.core.findings import clip
from clickwatch.core.model import Body, BodyKind

BINARY_PREFIX_BYTES = 512
# The most any body is inflated to (a storefront page the observer reads): a bomb must not take the proxy's memory.
MAX_DECODED_BYTES = 64 * 1024 * 1024
# The most a tracking body is inflated to by default (capture.body_decode_limit): an event is a few kilobytes, a
# whole cart snapshot rarely 100 KB, so a bomb costs milliseconds and a couple of megabytes, not a stalled store.
DEFAULT_DECODE_LIMIT = 2 * 1024 * 1024
# Content-Encoding lists longer than this are not a server's: real ones name one coding, rarely two.
MAX_CODINGS = 4
# JSON is parsed only below these: a 3 KB gzip body of a million '{}' must not build a million dicts. An event body
# holds tens of values, a cart snapshot a few thousand; the observer copies data at most 20 levels deep.
MAX_JSON_VALUES = 50_000
MAX_JSON_DEPTH = 64
# Charsets that name no web text encoding (punycode, idna: domain names; the escape codecs: Python source).
_NOT_WEB_CHARSETS = frozenset(("punycode", "idna", "unicode_escape", "raw_unicode_escape", "undefined", "utf_7"))


class DecodeError(ValueError):
    """A body could not be decoded as its Content-Encoding claims."""


class TooLarge(DecodeError):
    """A body decodes to more than the cap."""


def _too_large(cap: int) -> TooLarge:
    return TooLarge(f"decoded body exceeds {cap} bytes")


def _gunzip(data: bytes, cap: int) -> bytes:
    return _inflate(data, zlib.MAX_WBITS | 16, cap)


def _deflate(data: bytes, cap: int) -> bytes:
    # "deflate" is zlib-wrapped by the RFC, but some servers send raw deflate.
    try:
        return _inflate(data, zlib.MAX_WBITS, cap)
    except zlib.error:
        return _inflate(data, -zlib.MAX_WBITS, cap)


def _inflate(data: bytes, wbits: int, cap: int) -> bytes:
    d = zlib.decompressobj(wbits)
    out = d.decompress(data, cap)
    if d.unconsumed_tail:
        raise _too_large(cap)
    if not d.eof:
        raise zlib.error("incomplete or truncated stream")
    return out


def _brotli(data: bytes, cap: int) -> bytes:
    # Bounded as it goes: an 841-byte brotli body can decode to gigabytes.
    decompressor = brotli.Decompressor()
    out = decompressor.process(data, output_buffer_limit=cap + 1)
    if len(out) > cap:
        raise _too_large(cap)
    if not decompressor.is_finished():
        raise brotli.error("incomplete or truncated stream")
    return bytes(out)


def _zstd(data: bytes, cap: int) -> bytes:
    # zstandard ignores max_output_size when the frame states its size: check the stated size first (a frame
    # that decodes to another size than it states is an error in zstd itself).
    size = zstandard.frame_content_size(data)
    if size < 0:  # not stated: read up to the cap, to say "exceeds" rather than "corrupt"
        size = len(zstandard.ZstdDecompressor().stream_reader(data).read(cap + 1))
    if size > cap:
        raise _too_large(cap)
    return bytes(zstandard.ZstdDecompressor().decompress(data, max_output_size=cap))


_DECODERS: dict[str, Callable[[bytes, int], bytes]] = {
    "gzip": _gunzip,
    "x-gzip": _gunzip,
    "deflate": _deflate,
    "br": _brotli,
    "zstd": _zstd,
    "identity": lambda b, cap: b,
}


def undo_content_encoding(data: bytes, content_encoding: str, cap: int = MAX_DECODED_BYTES) -> bytes:
    """Undo every coding in a Content-Encoding header, last applied first, never past `cap` bytes."""
    codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip()]
    if len(codings) > MAX_CODINGS:
        raise DecodeError(f"{len(codings)} content-codings, more than {MAX_CODINGS}")
    for coding in reversed(codings):
        decoder = _DECODERS.get(coding)
        if decoder is None:
            raise DecodeError(f"unsupported content-encoding {clip(coding, 40)!r}")
        try:
            data = decoder(data, cap)
        except DecodeError:
            raise
        except Exception as exc:
            raise DecodeError(f"{coding} data is corrupt ({clip(str(exc), 200)})") from None
    if len(data) > cap:
        raise _too_large(cap)
    return data


def _charset(content_type: str) -> str | None:
    for param in content_type.split(";")[1:]:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip():
            return value.strip().strip('"').lower()
    return None


def _codec(charset: str) -> str | None:
    """The Python codec for a declared charset, or None when it names no web text encoding."""
    try:
        info = codecs.lookup(charset)
    except (LookupError, ValueError):
        return None
    if not getattr(info, "_is_text_encoding", True) or info.name.replace("-", "_") in _NOT_WEB_CHARSETS:
        return None
    return info.name


def _text(data: bytes, content_type: str) -> tuple[str | None, str | None]:
    """(text, note): the body as text in its declared charset (UTF-8 when none or an odd one); text None if not."""
    declared = _charset(content_type)
    codec = _codec(declared) if declared else "utf-8"
    note = None
    if codec is None:
        note = f"charset {clip(declared or '', 40)!r} is not a text encoding clickwatch reads: read as UTF-8"
        codec = "utf-8"
    try:
        return data.decode(codec), note
    except Exception as exc:  # any codec error, whatever the codec raises
        shown = clip(declared, 40) if declared and note is None else "utf-8"
        return None, f"not valid {shown} text ({exc.__class__.__name__})" + (f"; {note}" if note else "")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def too_deep(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether parsed JSON nests deeper than `limit` (iterative: no recursion on hostile input)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return False


# A JSON string: what the second count of parse_json leaves out.
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')


def parse_json(text: str) -> tuple[Any, str | None, bool]:
    """(parsed, why not, refused): JSON parsed within bounds; `refused` when it is JSON too big or deep to judge.

    Counted before anything is built: every value but the first follows a ',' or opens with '[' or '{' (commas in
    strings count too, so the count can only be high).
    """
    values = text.count(",") + text.count("[") + text.count("{") + 1
    if values > MAX_JSON_VALUES:
        # Commas, brackets and braces inside strings (a long product description) are no values: count again
        # without the strings (one regex pass over at most the decode limit) before refusing a healthy body.
        bare = _JSON_STRING.sub("", text)
        values = bare.count(",") + bare.count("[") + bare.count("{") + 1
    if values > MAX_JSON_VALUES:
        return None, f"JSON with more than {MAX_JSON_VALUES} values: not parsed", True
    try:
        parsed = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        return None, f"JSON nested deeper than {MAX_JSON_DEPTH} levels: not parsed", True
    except ValueError as exc:
        return None, f"invalid JSON: {clip(str(exc), 200)}", False
    if too_deep(parsed):
        return None, f"JSON nested deeper than {MAX_JSON_DEPTH} levels: not parsed", True
    return parsed, None, False


def _looks_like_json(text: str, content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    if media.endswith("json") or media.endswith("+json"):
        return True
    # Beacons post JSON as text/plain; some tags omit the type entirely.
    return media in ("", "text/plain", "application/x-www-form-urlencoded") and text.lstrip()[:1] in ("{", "[")


def _binary(data: bytes, size: int, note: str | None, refused: bool = False) -> Body:
    prefix = base64.b64encode(data[:BINARY_PREFIX_BYTES]).decode("ascii")
    return Body(BodyKind.BINARY, prefix, size, truncated=len(data) > BINARY_PREFIX_BYTES, note=note, refused=refused)


def _oversized(data: bytes, content_type: str, limit: int, why: str) -> Body:
    """A body too big to judge: not parsed, but its beginning kept as text when it is text (as a smaller one's is)."""
    head = data[: limit * 4]
    for cut in range(4 if len(data) > len(head) else 1):  # a multi-byte character may straddle the cut
        text, _ = _text(head[: len(head) - cut], content_type)
        if text is not None:
            return Body(BodyKind.TEXT, text[:limit], len(data), truncated=True, note=f"{why}: not parsed", refused=True)
    return _binary(data, len(data), f"{why}: not read", refused=True)


def _joined(*notes: str | None) -> str | None:
    return "; ".join(n for n in notes if n) or None


def decode_body(
    raw: bytes,
    content_encoding: str = "",
    content_type: str = "",
    limit: int = 65536,
    max_decoded: int = DEFAULT_DECODE_LIMIT,
) -> Body:
    """Decode a raw body into what is stored: JSON or text up to `limit` characters, or a base64 prefix.

    A body that decodes to more than `max_decoded` bytes is not read (`refused`, with a note saying why).
    """
    if not raw:
        return Body(BodyKind.EMPTY, None, 0)
    data = raw
    if content_encoding:
        try:
            data = undo_content_encoding(raw, content_encoding, max_decoded)
        except TooLarge as exc:
            return _binary(raw, len(raw), f"{exc} (capture.body_decode_limit): not read", refused=True)
        except DecodeError as exc:
            return _binary(raw, len(raw), f"could not undo content-encoding: {exc}")
    size = len(data)
    if size == 0:
        return Body(BodyKind.EMPTY, None, 0)
    if size > max_decoded:
        return _oversized(data, content_type, limit, f"body exceeds {max_decoded} bytes (capture.body_decode_limit)")
    text, note = _text(data, content_type)
    if text is None:
        return _binary(data, size, note)
    kind = BodyKind.TEXT
    parsed = None
    refused = False
    if _looks_like_json(text, content_type):
        parsed, unparsed, refused = parse_json(text)
        if unparsed is None:
            kind = BodyKind.JSON
        note = _joined(unparsed, note)
    truncated = len(text) > limit
    text = text[:limit] if truncated else text
    return Body(kind, text, size, truncated=truncated, note=note, parsed=parsed, refused=refused)


class _Inflater:
    """gzip or deflate (zlib-wrapped, or raw as some servers send it), a piece at a time."""

    def __init__(self, gzip: bool) -> None:
        self.gzip = gzip
        self.inflater: Any = zlib.decompressobj(zlib.MAX_WBITS | 16) if gzip else None
        self.start = b""

    def process(self, data: bytes, cap: int) -> bytes:
        if self.inflater is None:
            self.start += data
            if len(self.start) < 2:
                return b""
            data, self.start = self.start, b""
            zlib_wrapped = (data[0] & 0x0F) == 8 and (data[0] << 8 | data[1]) % 31 == 0
            self.inflater = zlib.decompressobj(zlib.MAX_WBITS if zlib_wrapped else -zlib.MAX_WBITS)
        out = self.inflater.decompress(data, cap + 1)
        if len(out) > cap or self.inflater.unconsumed_tail:
            raise _too_large(cap)
        return out

    def flush(self) -> bytes:
        if self.inflater is None:
            if self.start:
                raise zlib.error("incomplete or truncated stream")
            return b""
        out = self.inflater.flush()
        if not self.inflater.eof:
            raise zlib.error("incomplete or truncated stream")
        return out


class _Unbrotli:
    def __init__(self) -> None:
        self.decompressor = brotli.Decompressor()

    def process(self, data: bytes, cap: int) -> bytes:
        out = self.decompressor.process(data, output_buffer_limit=cap + 1)
        if len(out) > cap or not self.decompressor.can_accept_more_data():
            raise _too_large(cap)
        return bytes(out)

    def flush(self) -> bytes:
        if not self.decompressor.is_finished():
            raise brotli.error("incomplete or truncated stream")
        return b""


class _Unzstd:
    def __init__(self) -> None:
        self.decompressor = zstandard.ZstdDecompressor().decompressobj()

    def process(self, data: bytes, cap: int) -> bytes:
        out = self.decompressor.decompress(data)
        if len(out) > cap:
            raise _too_large(cap)
        return bytes(out)

    def flush(self) -> bytes:
        if not self.decompressor.eof:
            raise zstandard.ZstdError("incomplete or truncated stream")
        return b""


_STREAM_DECODERS: dict[str, Callable[[], Any]] = {
    "gzip": lambda: _Inflater(True),
    "x-gzip": lambda: _Inflater(True),
    "deflate": lambda: _Inflater(False),
    "br": _Unbrotli,
    "zstd": _Unzstd,
}


def stream_codings(content_encoding: str) -> list[str]:
    """The codings of a Content-Encoding header, first applied first; DecodeError if one cannot be undone."""
    codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip() and c.strip().lower() != "identity"]
    if len(codings) > MAX_CODINGS:
        raise DecodeError(f"{len(codings)} content-codings, more than {MAX_CODINGS}")
    for coding in codings:
        if coding not in _STREAM_DECODERS:
            raise DecodeError(f"unsupported content-encoding {clip(coding, 40)!r}")
    return codings


class StreamDecoder:
    """Undoes a Content-Encoding a piece at a time, as a body streams; each piece decodes to at most `cap` bytes."""

    def __init__(self, content_encoding: str, cap: int = MAX_DECODED_BYTES) -> None:
        self.stages = [_STREAM_DECODERS[c]() for c in reversed(stream_codings(content_encoding))]
        self.cap = cap

    def decode(self, data: bytes) -> bytes:
        """The decoded bytes of the next piece (maybe none yet)."""
        for stage in self.stages:
            if not data:
                return b""
            data = _undone(functools.partial(stage.process, data, self.cap))
        return data

    def flush(self) -> bytes:
        """What is left once the body has ended; DecodeError if it ended early."""
        data = b""
        for stage in self.stages:
            if data:
                data = _undone(functools.partial(stage.process, data, self.cap))
            data += _undone(stage.flush)
        return data


def _undone(step: Callable[[], bytes]) -> bytes:
    try:
        return step()
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(f"corrupt encoded data ({clip(str(exc), 200)})") from None
