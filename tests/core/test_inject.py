"""Where the observer's script element goes in a page: checked against html5lib, a full HTML5 parser."""

from __future__ import annotations

import gzip
import zlib
from xml.dom import minidom

import brotli
import html5lib
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clickwatch.core.decoding import DecodeError, StreamDecoder
from clickwatch.core.inject import SEARCH_BYTES, PageStream, Place, find_place, inject, script_element, unplaceable
from clickwatch.core.observer import OBSERVER_SCRIPT_PATH

ELEMENT = f'<script src="{OBSERVER_SCRIPT_PATH}" data-test="1"></script>'.encode()
BOUNDED = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- the HTML5 reading the tests hold the injector to --------------------------------------------------------------


def tree(node: minidom.Node) -> object:
    """A node as nested tuples: what an HTML5 parser built, comments and text included."""
    if node.nodeType == node.TEXT_NODE:
        return ("#text", node.data)
    if node.nodeType == node.COMMENT_NODE:
        return ("#comment", node.data)
    if node.nodeType == node.DOCUMENT_TYPE_NODE:
        return ("#doctype", node.name, node.publicId, node.systemId)
    attributes = tuple(sorted(node.attributes.items())) if node.nodeType == node.ELEMENT_NODE else ()
    return (node.nodeName, attributes, tuple(tree(child) for child in node.childNodes))


def parse(document: bytes) -> minidom.Document:
    # Decoded as the tests' documents are written (ASCII and Latin-1 only), so the parser sniffs nothing; a UTF-8
    # byte order mark is the decoder's, as in a browser.
    return html5lib.parse(document.removeprefix(b"\xef\xbb\xbf").decode("latin-1"), treebuilder="dom")


def without_observer(document: bytes) -> object:
    """The injected document's tree with the observer's element taken out, after checking where it was."""
    dom = parse(document)
    ours = [s for s in dom.getElementsByTagName("script") if s.getAttribute("data-test") == "1"]
    assert len(ours) == 1, f"{len(ours)} observer elements in {document!r}"
    script = ours[0]
    head = dom.getElementsByTagName("head")[0]
    assert script.parentNode is head and head.firstChild is script, f"not first in the head: {document!r}"
    head.removeChild(script)
    dom.normalize()
    return tree(dom)


def assert_injected_right(document: bytes) -> None:
    changed = inject(document, "text/html", ELEMENT)
    if not document:
        assert changed is None  # an empty page stays empty
        return
    if changed is None:
        # Only a page that ends inside a comment, DOCTYPE or tag before its head has no place.
        assert find_place(document).reason == "the page ends inside markup before its head", document
        return
    assert changed.replace(ELEMENT, b"", 1) == document
    expected = parse(document)
    expected.normalize()
    assert without_observer(changed) == tree(expected), document


# --- fixed cases: the hostile pages, and the ordinary ones ---------------------------------------------------------

HOSTILE = {
    "script string": b"<!doctype html><script>var s='<head>';document.title='ran'</script><head><title>t</title>",
    "srcdoc": b"""<!doctype html><html><iframe srcdoc="<head><script>parent.x=1</script>"></iframe><head>""",
    "attribute": b"<!doctype html><html><head data-x='a>b'><title>t</title></head><body>b</body></html>",
    "comment": b"<!doctype html><!-- <head> --><html><!--><head>--><head><title>t</title>",
    "plaintext": b"<plaintext><head><script>x()</script>",
    "template": b"<html><template><head></template><head>",
    "noscript": b"<noscript><head></noscript><head>",
    "textarea": b"<textarea><head></textarea>",
    "cdata": b"<![CDATA[<head>]]><head>",
    "processing instruction": b"<?xml version='1.0'?><html><head>",
    "end tag with a quoted >": b'<html></x a="><head>"><head lang=en>',
    "bang comment end": b"<!-- a --!><head>",
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_hostile_page_gets_the_element_only_where_the_parser_is_in_its_head(name):
    assert_injected_right(HOSTILE[name])


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        (b"<!doctype html><html><head><title>x</title></head></html>", b"<!doctype html><html><head>{S}<title>"),
        (b"<HTML><HEAD lang=en>\n<meta charset=utf-8>", b"<HTML><HEAD lang=en>{S}\n<meta"),
        (b"<html><header>no head</header>", b"<html>{S}<header>"),
        (b"<!DOCTYPE html>\n<p>bare</p>", b"<!DOCTYPE html>\n{S}<p>"),
        (b"<p>fragment</p>", b"{S}<p>fragment</p>"),
        (b"\xef\xbb\xbf<html><head>", b"\xef\xbb\xbf<html><head>{S}"),
        (b"<html>\n  <!-- c -->\n  <head>", b"<html>\n  <!-- c -->\n  <head>{S}"),
        (b"<script>var s='<head>'</script><head>", b"{S}<script>"),
        (b"<html><meta charset=utf-8><title>t</title>", b"<html>{S}<meta"),
        (b"&#32; <head>", b"&#32; <head>{S}"),
        (b" ", b" {S}"),
    ],
)
def test_the_element_goes_as_early_as_the_head_allows(document, expected):
    changed = inject(document, "text/html; charset=utf-8", ELEMENT)
    assert changed is not None
    assert changed.startswith(expected.replace(b"{S}", ELEMENT))
    assert_injected_right(document)


def test_an_empty_page_stays_empty():
    assert inject(b"", "text/html", ELEMENT) is None
    assert PageStream(lambda place: ELEMENT)(b"") == []
    assert PageStream(lambda place: ELEMENT).whole(b"") == b""


def test_a_page_with_no_place_in_the_searched_bytes_is_left_alone():
    # A comment longer than the search: the place would be after it, beyond what the proxy holds.
    document = b"<!--" + b"x" * SEARCH_BYTES + b"--><head>"
    assert inject(document, "text/html", ELEMENT) is None
    assert find_place(document) == Place(None, f"no place for it in the first {SEARCH_BYTES} bytes")
    assert find_place(b"<!doctype html><!-- never closed").at is None


def test_a_page_whose_markup_is_not_ascii_is_left_alone():
    assert inject("<html><head>".encode("utf-16"), "text/html", ELEMENT) is None
    assert inject(b"<head>", "text/html; charset=UTF-16LE", ELEMENT) is None
    assert unplaceable("text/html; charset=iso-2022-jp") == "the page's encoding (iso-2022) is not ASCII-compatible"
    assert unplaceable("text/html; charset=utf-8") is None
    assert find_place("<html><head>".encode("utf-16")).reason == "the page is UTF-16 or UTF-32 (a byte order mark)"
    stream = PageStream(lambda place: ELEMENT)
    wide = "<html><head>".encode("utf-16")
    assert stream(wide[:1]) == [] and b"".join([*stream(wide[1:]), *stream(b"")]) == wide  # a mark in two pieces


def test_a_nonce_is_carried_only_when_safe():
    assert b'nonce="abc+/="' in script_element("abc+/=")
    assert b"nonce" not in script_element('"><script>alert(1)</script>')


def test_the_heads_meta_policies_are_read_and_nothing_outside_the_head():
    document = (
        b'<html><head><meta http-equiv=Content-Security-Policy content="script-src &#39;none&#39;">'
        b"<script>var m = '<meta http-equiv=content-security-policy content=x>'</script>"
        b"<title><meta http-equiv=content-security-policy content=y></title>"
        b"<meta name=description content=d><meta http-equiv='content-security-policy' content='b' content='c'>"
        b"</head><body><meta http-equiv=content-security-policy content=z>"
    )
    assert find_place(document).policies == ("script-src 'none'", "b")
    # Before the head, a meta element opens it: it is in the head.
    assert find_place(b"<html><meta http-equiv=content-security-policy content=a><p>").policies == ("a",)


# --- generated pages -------------------------------------------------------------------------------------------

PIECES = [
    b"<!DOCTYPE html>",
    b"<!doctype html public '-//W3C//DTD HTML 4.01//EN'>",
    b"<html>",
    b"<HTML lang=en>",
    b"<head>",
    b"<HEAD data-x='a>b'>",
    b"<head/>",
    b"</head>",
    b"<body>",
    b"</body>",
    b"</html>",
    b"</br>",
    b"</p>",
    b"</>",
    b"</ x>",
    b"<br>",
    b"<p>t</p>",
    b"<meta charset=utf-8>",
    b"<title><head></title>",
    b"<link rel=x href=y>",
    b"<!-- <head> -->",
    b"<!-->",
    b"<!--->",
    b"<!---->",
    b"<!-- a --!>",
    b"<!-- a -- b -->",
    b"<![CDATA[<head>]]>",
    b"<?xml <head>?>",
    b"<!x <head>>",
    b"<script>var s='<head>'</script>",
    b"<style>/*<head>*/</style>",
    b"<template><head></template>",
    b"<noscript><head></noscript>",
    b"<textarea><head></textarea>",
    b"<plaintext><head>",
    b'<iframe srcdoc="<head><script>x()</script>"></iframe>',
    b"<svg><head/></svg>",
    b"<frameset>",
    b'</x a=">">',
    b"<a href='>'>",
    b" ",
    b"\n",
    b"\t",
    b"text",
    b"&#32;",
    b"&#x20;",
    b"&amp;",
    b"&Tab;",
    b"<",
    b"< head>",
    b'<head\n  lang = "e>n"\n>',
    b"<h\xe9ad>",
    b"\xe9",
]
SOUP = st.binary(max_size=0) | st.text(alphabet="<>/!-?\"' =headtmlbosy&#3;\n", max_size=40).map(str.encode)


@st.composite
def documents(draw: st.DrawFn) -> bytes:
    parts = draw(st.lists(st.sampled_from(PIECES) | SOUP, max_size=12))
    return b"".join(parts)


@BOUNDED
@given(documents())
def test_the_injected_page_parses_to_the_original_tree_and_one_script_first_in_the_head(document):
    assert_injected_right(document)


@BOUNDED
@given(documents(), st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=20))
def test_a_page_streamed_in_any_pieces_gets_what_the_whole_page_gets(document, sizes):
    chosen: list[Place] = []

    def choose(place: Place) -> bytes | None:
        chosen.append(place)
        return ELEMENT

    stream = PageStream(choose)
    out: list[bytes] = []
    i = 0
    for size in sizes * (len(document) // sum(sizes) + 1):
        if i >= len(document):
            break
        out += stream(document[i : i + size])
        i += size
    out += stream(b"")
    assert b"" not in out  # an empty piece would end a chunked HTTP/1.1 answer
    assert chosen == ([find_place(document)] if document else [])
    assert b"".join(out) == (inject(document, "text/html", ELEMENT) or document)


def test_a_stream_holds_only_what_comes_before_its_decision():
    stream = PageStream(lambda place: ELEMENT)
    assert stream(b"<!doctype html><html><he") == []  # the place may be after a <head> not yet whole
    [first] = stream(b"ad><title>t</title><body>" + b"x" * 100)
    assert first.startswith(b"<!doctype html><html><head>" + ELEMENT + b"<title>")
    assert stream(b"y" * 1000) == [b"y" * 1000]  # decided: every later piece goes straight on
    assert stream(b"") == []


def test_a_stream_the_chooser_refuses_goes_through_unchanged():
    places: list[Place] = []
    stream = PageStream(lambda place: places.append(place))
    document = b"<html><head><meta http-equiv=content-security-policy content=\"script-src 'none'\"><body>"
    assert [*stream(document), *stream(b"")] == [document]
    assert places == [Place(12, policies=("script-src 'none'",))]


# --- decoding as the page streams ------------------------------------------------------------------------------

PAGE = b"<!doctype html><html><head><title>t</title></head><body>" + b"<p>row</p>" * 5000 + b"</body></html>"


def _deflate_raw(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", _deflate_raw),
        ("br", brotli.compress),
        ("zstd", lambda d: zstandard.ZstdCompressor().compress(d)),
        ("gzip, br", lambda d: brotli.compress(gzip.compress(d))),
    ],
)
def test_an_encoded_page_is_decoded_as_it_streams(encoding, encode):
    encoded = encode(PAGE)
    stream = PageStream(lambda place: ELEMENT, encoding)
    out = [piece for i in range(0, len(encoded), 1000) for piece in stream(encoded[i : i + 1000])] + stream(b"")
    assert b"".join(out) == inject(PAGE, "text/html", ELEMENT)
    assert stream.failed is None
    assert PageStream(lambda place: ELEMENT, encoding).whole(encoded) == b"".join(out)


def test_a_stream_that_is_not_what_its_encoding_says_ends_after_what_was_held():
    compressor = zlib.compressobj(wbits=31)
    start = compressor.compress(PAGE[:300]) + compressor.flush(zlib.Z_SYNC_FLUSH)
    stream = PageStream(lambda place: ELEMENT, "gzip")
    [out] = stream(start)
    assert stream.failed is None and out.startswith(b"<!doctype html><html><head>" + ELEMENT)
    assert stream(b"\xff" * 10) == []  # an invalid block: the page ends here
    assert stream.failed is not None
    assert stream(b"more") == [] and stream(b"") == []


def test_the_stream_decoder_refuses_what_it_cannot_undo_and_bombs():
    with pytest.raises(DecodeError):
        StreamDecoder("compress")
    bomb = gzip.compress(b"\x00" * (4 * 1024 * 1024))
    with pytest.raises(DecodeError, match="exceeds"):
        StreamDecoder("gzip", cap=1024 * 1024).decode(bomb)
    truncated = StreamDecoder("gzip")
    encoded = gzip.compress(PAGE)
    truncated.decode(encoded[: len(encoded) // 2])
    with pytest.raises(DecodeError):
        truncated.flush()


@BOUNDED
@given(documents())
def test_a_page_read_whole_gets_what_a_streamed_one_gets(document):
    whole = PageStream(lambda place: ELEMENT).whole(document)
    streamed = PageStream(lambda place: ELEMENT)
    assert whole == b"".join([*streamed(document), *streamed(b"")])
