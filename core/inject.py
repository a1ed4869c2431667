"""Where the data-layer observer's script element goes in a storefront page, found by tokenizing the page as HTML.

The element goes at the first point where a browser's HTML parser is in the document's head: right after the
real `<head>` start tag, or, where the page has none, just before the first token that makes the parser open the
head itself (HTML "before head" insertion mode). Everything before that point is markup the parser skips in the
"initial", "before html" and "before head" modes: whitespace, comments, the DOCTYPE, `<html>` start tags and the
end tags those modes ignore. Those are tokenized exactly as the WHATWG tokenizer does (comments ending at `-->`,
`--!>`, `<!-->`; bogus comments; quoted attribute values holding `>`), so the point is never inside a comment,
an attribute or a `srcdoc`, and always before any element with content of its own (`<script>`, `<style>`,
`<template>`, `<noscript>`, `<plaintext>`, `<textarea>`, `<iframe>`, ...). Why not `html.parser`: the standard
library's tokenizer (Python 3.12.1 here) ends `<!-->` and `--!>` comments, `<![CDATA[` sections and end tags
with a quoted `>` differently from browsers, exactly where it matters; html5lib reads whole documents, far
too slowly for a proxy, and is used by the tests to check this module against a full HTML5 parser.

After the point, the head is read on as far as the page's bytes go (at most `SEARCH_BYTES` from the start) for
`<meta http-equiv="Content-Security-Policy">` policies, which decide whether the observer may run at all.

The tokenizer works on bytes: the markup it reads is ASCII, and a page whose encoding is not ASCII-compatible
(UTF-16, UTF-32, the ISO-2022 family, ...) is left as it is. `PageStream` does the same as a page streams
through the proxy, holding only the bytes it has not placed yet.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from dataclasses import dataclass

from clickwatch.core.decoding import DecodeError, StreamDecoder
from clickwatch.core.observer import OBSERVER_SCRIPT_PATH, TOKEN_ATTRIBUTE

# How far into a page the place (and the head's policies) are looked for: the head comes first, and a page can be
# hundreds of megabytes long.
SEARCH_BYTES = 65536
_NONCE_SAFE = re.compile(r"[A-Za-z0-9+/_=-]{1,200}")
_TOKEN_SAFE = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Encodings in which markup is not ASCII bytes (or which browsers decode to nothing): the page is left as it is.
_NOT_ASCII_COMPATIBLE = re.compile(
    r"charset\s*=\s*[\"']?\s*(utf-?16|utf-?32|ucs-?2|unicode|iso-?2022|csiso2022|hz-gb|replacement|utf-?7)",
    re.IGNORECASE,
)
_BOM_UTF8 = b"\xef\xbb\xbf"

_WHITESPACE = re.compile(rb"[\t\n\f\r ]*+")
# A tag's attributes as the tokenizer reads them: quoted values may hold '>'.
_ATTRIBUTES = rb"""
    (?:[\t\n\f\r /]++
      |[^\t\n\f\r />][^\t\n\f\r />=]*+
       (?:[\t\n\f\r ]*+=[\t\n\f\r ]*+(?:"[^"]*+"|'[^']*+'|[^\t\n\f\r >"'][^\t\n\f\r >]*+|(?=>))
         |(?![\t\n\f\r ]*+=))  # after '=' a value must follow: a quote not closed yet is an unfinished tag
    )*+"""
# A start or end tag: a name, then attributes.
_TAG = re.compile(rb"</?([A-Za-z][^\t\n\f\r />]*+)(" + _ATTRIBUTES + rb")>", re.VERBOSE)
# The start most pages have, read in one match (the same tokens the loop in `_find_place` reads one by one): a
# byte order mark, a DOCTYPE, an <html> start tag and the <head> start tag, with whitespace between.
_COMMON_START = re.compile(
    rb"(?:\xef\xbb\xbf)?[\t\n\f\r ]*+(?:<!doctype[^>]*+>[\t\n\f\r ]*+)?"
    rb"(?:<html(?=[\t\n\f\r />])" + _ATTRIBUTES + rb">[\t\n\f\r ]*+)?"
    rb"<head(?=[\t\n\f\r />])" + _ATTRIBUTES + rb">",
    re.VERBOSE | re.IGNORECASE,
)
_ATTRIBUTE = re.compile(
    rb"""([^\t\n\f\r />][^\t\n\f\r />=]*+)
    (?:[\t\n\f\r ]*+=[\t\n\f\r ]*+(?:"([^"]*+)"|'([^']*+)'|([^\t\n\f\r >"'][^\t\n\f\r >]*+))?+)?+""",
    re.VERBOSE,
)
_HTTP_EQUIV = re.compile(rb"http-equiv", re.IGNORECASE)
_SEPARATORS = re.compile(rb"[\t\n\f\r /]*+")
_COMMENT_END = re.compile(rb"--!?>")
# Character references the tokenizer turns into whitespace, which the modes before the head skip like whitespace.
_WHITESPACE_REFERENCE = re.compile(
    rb"&(?:#0*+(?:9|10|12|13|32)(?![0-9])|#[xX]0*+(?:9|[aAcCdD]|20)(?![0-9A-Fa-f])|Tab;|NewLine;)(?:(?<=;)|;?)"
)
_LONGEST_REFERENCE = 16
# End tags that open the head in the modes before it (any other end tag is ignored there).
_HEAD_OPENING_END_TAGS = frozenset((b"head", b"body", b"html", b"br"))
# What the "in head" mode keeps in the head; anything else closes it.
_VOID_IN_HEAD = frozenset((b"base", b"basefont", b"bgsound", b"link", b"meta"))
_TEXT_IN_HEAD = frozenset((b"title", b"noscript", b"noframes", b"style", b"script"))
_CLOSING = {name: re.compile(rb"</" + name + rb"(?=[\t\n\f\r />])", re.IGNORECASE) for name in _TEXT_IN_HEAD}


@dataclass(frozen=True, slots=True)
class Place:
    """Where the element goes in a document (a byte offset), or why nowhere; and the head's meta policies."""

    at: int | None
    reason: str = ""
    policies: tuple[str, ...] = ()


class _More(Exception):
    """The bytes so far end inside a token: it is read again when more come."""


class HeadScanner:
    """Finds the place in a document fed in pieces; `feed` answers once it knows, `end` when the bytes end."""

    def __init__(self, limit: int = SEARCH_BYTES) -> None:
        self.limit = limit
        self.buffer = bytearray()
        self._pos = 0  # where the next token starts
        self._at: int | None = None  # the place, once found
        self._policies: list[str] = []
        self._answer: Place | None = None

    def feed(self, data: bytes, last: bool = False) -> Place | None:
        """Take the next bytes (`last`: no more will come); the place once it is known (and the head read as far
        as it must be), else None."""
        if self._answer is None:
            self.buffer += data
            self._scan(final=last)
        return self._answer

    def end(self) -> Place:
        """The bytes ended (or stop here): the place as far as they show it."""
        if self._answer is None:
            self._scan(final=True)
        assert self._answer is not None
        return self._answer

    def _scan(self, final: bool) -> None:
        stop = min(len(self.buffer), self.limit)
        if self._pos == 0:
            if len(self.buffer) < 2 and not final:
                return  # a byte order mark may be coming
            if self.buffer[:2] in (b"\xff\xfe", b"\xfe\xff"):
                self._answer = Place(None, "the page is UTF-16 or UTF-32 (a byte order mark)")
                return
        try:
            if self._at is None:
                self._find_place(stop, final and stop == len(self.buffer))
            self._read_head(stop, final and stop == len(self.buffer))
        except _More:
            if final or len(self.buffer) >= self.limit:
                self._give_up()

    def _give_up(self) -> None:
        if self._at is None:
            if len(self.buffer) >= self.limit:
                reason = f"no place for it in the first {self.limit} bytes"
            else:
                reason = "the page ends inside markup before its head"
            self._answer = Place(None, reason)
        else:
            self._answer = Place(self._at, policies=tuple(self._policies))

    def _find_place(self, stop: int, final: bool) -> None:
        buf = self.buffer
        i = self._pos
        if i == 0:
            common = _COMMON_START.match(buf, 0, stop)
            if common is not None:
                self._at = self._pos = common.end()
                return
            if buf.startswith(_BOM_UTF8):
                i = 3
        while True:
            i = _skip(_WHITESPACE, buf, i, stop)
            self._pos = i
            if i >= stop:
                if not final:
                    raise _More
                self._at = i  # nothing but skipped markup: the parser opens the head at the end
                return
            byte = buf[i]
            if byte == 0x26:  # '&'
                if stop - i < _LONGEST_REFERENCE and not final:
                    raise _More
                reference = _WHITESPACE_REFERENCE.match(buf, i, stop)
                if reference is None:
                    self._at = i
                    return
                i = reference.end()
                continue
            if byte != 0x3C:  # '<': any other character opens the head
                self._at = i
                return
            end, name = _markup(buf, i, stop, final)
            if end is None:  # text, not markup
                self._at = i
                return
            if name is not None:
                if buf[i + 1] == 0x2F:  # an end tag: ignored, unless it makes the parser open the head
                    if name in _HEAD_OPENING_END_TAGS:
                        self._at = i
                        return
                elif name == b"head":
                    self._at = self._pos = end
                    return
                elif name != b"html":
                    self._at = i
                    return
            i = end  # a comment, a DOCTYPE, <html>, or an end tag these modes ignore

    def _read_head(self, stop: int, final: bool) -> None:
        """Read on through the head for its policies; the answer once the head ends (or the bytes do)."""
        buf = self.buffer
        i = self._pos
        if final and _HTTP_EQUIV.search(buf, i, stop) is None:
            # All the bytes there will be, and no meta element among them can set a policy: nothing to read.
            self._answer = Place(self._at, policies=tuple(self._policies))
            return
        while True:
            i = _skip(_WHITESPACE, buf, i, stop)
            self._pos = i
            if i >= stop:
                raise _More
            if buf[i] != 0x3C:
                break  # text ends the head
            end, name = _markup(buf, i, stop, final)
            if end is None:
                break
            if buf[i + 1] == 0x2F:
                if name in _HEAD_OPENING_END_TAGS:
                    break
            elif name in _VOID_IN_HEAD:
                if name == b"meta":
                    self._meta(buf[i:end])
            elif name in _TEXT_IN_HEAD:
                end = _text_end(buf, end, name, stop)
            elif name not in (None, b"html", b"head"):
                break  # <template> (whose content this does not follow), <body>, or anything the head cannot hold
            i = end
        self._answer = Place(self._at, policies=tuple(self._policies))

    def _meta(self, tag: bytes | bytearray) -> None:
        attributes = _attributes(tag)
        if attributes.get(b"http-equiv", "").lower() == "content-security-policy" and b"content" in attributes:
            self._policies.append(attributes[b"content"])


def _markup(buf: bytearray, i: int, stop: int, final: bool) -> tuple[int | None, bytes | None]:
    """The end of the markup at buf[i] ('<') and a tag's lowercase name (None for comments and the like); no end:
    it is text. Raises _More when the bytes end inside it."""
    if i + 1 >= stop:
        if final:
            return None, None  # '<' at the very end is text
        raise _More
    second = buf[i + 1]
    if second == 0x21:  # '!'
        if buf.startswith(b"<!--", i):
            if buf.startswith(b">", i + 4) or buf.startswith(b"->", i + 4):  # '<!-->' and '<!--->' end at once
                return (i + 5 if buf[i + 4] == 0x3E else i + 6), None
            if i + 6 > stop:
                raise _More
            close = _COMMENT_END.search(buf, i + 4, stop)
            if close is None:
                raise _More
            return close.end(), None
        return _to_gt(buf, i + 2, stop), None  # a DOCTYPE or a bogus comment ('<![CDATA[' too) ends at '>'
    if second == 0x3F:  # '<?': a bogus comment
        return _to_gt(buf, i + 2, stop), None
    if second == 0x2F:  # '</'
        if i + 2 >= stop:
            if final:
                return None, None
            raise _More
        third = buf[i + 2]
        if third == 0x3E:  # '</>' is dropped
            return i + 3, None
        if not (0x41 <= third <= 0x5A or 0x61 <= third <= 0x7A):
            return _to_gt(buf, i + 2, stop), None
    elif not (0x41 <= second <= 0x5A or 0x61 <= second <= 0x7A):
        return None, None  # '<' and something other than a letter is text
    tag = _TAG.match(buf, i, stop)
    if tag is None:
        raise _More
    return tag.end(), tag.group(1).lower()


def _skip(pattern: re.Pattern[bytes], buf: bytes | bytearray, i: int, stop: int) -> int:
    """Past what a pattern that always matches (maybe nothing) matches at i."""
    found = pattern.match(buf, i, stop)
    assert found is not None
    return found.end()


def _to_gt(buf: bytearray, start: int, stop: int) -> int:
    gt = buf.find(b">", start, stop)
    if gt < 0:
        raise _More
    return gt + 1


def _text_end(buf: bytearray, start: int, name: bytes, stop: int) -> int:
    """The end of the element's end tag after its text content (title, style, script, ...).

    A script's text ends at the first `</script`: the tokenizer's escaped states (`<!--<script>` inside a script)
    are not followed, so such a head is taken to end early (only the search for meta policies stops sooner)."""
    found = _CLOSING[name].search(buf, start, stop)
    if found is None:
        raise _More
    tag = _TAG.match(buf, found.start(), stop)
    if tag is None:
        raise _More
    return tag.end()


def _attributes(tag: bytes | bytearray) -> dict[bytes, str]:
    """A start tag's attributes (the first of a name wins), values with character references resolved."""
    name = _TAG.match(tag)
    assert name is not None
    found: dict[bytes, str] = {}
    i = name.end(1)
    while True:
        i = _skip(_SEPARATORS, tag, i, len(tag))
        attribute = _ATTRIBUTE.match(tag, i)
        if attribute is None or attribute.end() == i:
            return found
        key = attribute.group(1).lower()
        raw = next((v for v in attribute.group(2, 3, 4) if v is not None), b"")
        found.setdefault(key, html.unescape(raw.decode("utf-8", "replace")))
        i = attribute.end()


def find_place(document: bytes, limit: int = SEARCH_BYTES) -> Place:
    """Where the element goes in a whole document."""
    scanner = HeadScanner(limit)
    return scanner.feed(document, last=True) or scanner.end()


def unplaceable(content_type: str) -> str | None:
    """Why a page cannot take the element whatever its markup (an encoding whose markup is not ASCII), or None."""
    wide = _NOT_ASCII_COMPATIBLE.search(content_type)
    if wide is not None:
        return f"the page's encoding ({wide.group(1)}) is not ASCII-compatible"
    return None


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


def inject(document: bytes, content_type: str, element: bytes) -> bytes | None:
    """The whole document with the element at its place; None: it has no place, or is empty (leave it as it is)."""
    if not document or unplaceable(content_type) is not None:
        return None
    place = find_place(document)
    if place.at is None:
        return None
    return document[: place.at] + element + document[place.at :]


# Called once per page with the place found: the element to put there, or None to leave the page as it is.
type Chooser = Callable[[Place], bytes | None]


class PageStream:
    """A page's body as it streams (mitmproxy's callable `Response.stream`): decoded, the element put at its
    place, passed on; only the bytes before the decision are held (at most `SEARCH_BYTES` and one piece more)."""

    def __init__(self, choose: Chooser, content_encoding: str = "", limit: int = SEARCH_BYTES) -> None:
        self.choose = choose
        self.decoder = StreamDecoder(content_encoding) if content_encoding else None
        self.scanner: HeadScanner | None = HeadScanner(limit)
        self.failed: str | None = None

    def __call__(self, data: bytes) -> list[bytes]:
        """The pieces to send on for the next piece of the body (b"": the body ended, whatever is held comes out).

        Never an empty piece: mitmproxy would send it to an HTTP/1.1 client as the chunk that ends the body."""
        ending = not data
        if self.decoder is not None:
            try:
                data = self.decoder.flush() if ending else self.decoder.decode(data)
            except DecodeError as exc:
                # Encoded as the header said it was not (the header is gone by now): the page ends here, after
                # what was held.
                self.failed = str(exc)
                self.decoder = None
                data, ending = b"", True
        elif self.failed is not None:
            return []
        if self.scanner is None:
            return [data] if data else []
        place = self.scanner.feed(data) if data else None
        if place is None and ending:
            if not self.scanner.buffer:
                self.scanner = None  # an empty page stays empty
                return []
            place = self.scanner.end()
        return [] if place is None else self._release(place)

    def whole(self, data: bytes) -> bytes:
        """A whole body at once, as it is to be sent on."""
        if self.decoder is not None:
            try:
                data = self.decoder.decode(data) + self.decoder.flush()
            except DecodeError as exc:
                self.failed = str(exc)
                return data
            self.decoder = None
        if self.scanner is None or not data:
            return data
        place = self.scanner.feed(data, last=True) or self.scanner.end()
        return b"".join(self._release(place))

    def _release(self, place: Place) -> list[bytes]:
        assert self.scanner is not None
        held, self.scanner = bytes(self.scanner.buffer), None
        element = self.choose(place)
        if element is None or place.at is None:
            return [held] if held else []
        return [held[: place.at] + element + held[place.at :]]


_PLAIN_ELEMENT = f'<script src="{OBSERVER_SCRIPT_PATH}"></script>'.encode()
