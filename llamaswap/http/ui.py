"""
The web UI's files, served from the C{static/} folder (installed as the
C{llamaswap.ui} package).

The UI is a few small files, so each is read once and served whole from
memory (read again when its modification time changes), with an ETag so
that browsers revalidate with a cheap 304.  A path that is not a file of
the folder gets C{index.html}, which routes on the client side; a path that
tries to leave the folder (dot segments, encoded slashes, NUL, backslashes)
gets a 404 and nothing else.

C{index.html} is served at any depth below C{/ui/} (C{/ui/models/a/b} is a
page too), so its C{<base>} is rewritten to lead back to the UI's folder
with a relative path: the UI then works unchanged behind a proxy that
mounts llamaswap under a path of its own.
"""

from __future__ import annotations

import hashlib
import mimetypes
import re
from urllib.parse import unquote_to_bytes

from attrs import frozen
from twisted.python.filepath import FilePath, InsecurePath
from twisted.web.server import Request

from llamaswap.http.answers import sized

TEXT = b"text/plain; charset=utf-8"
TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/json",
    ".ico": "image/x-icon",
    ".png": "image/png",
    ".woff2": "font/woff2",
}
FORBIDDEN_IN_SEGMENTS = ("/", "\\", "\x00")
BROKEN_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
BASE = b'<base href="./">'
PREFIX = re.compile(rb"(/(?!\.\.?(?:/|$))[A-Za-z0-9._~-]+)+")


def forwarded_prefix(request: Request) -> bytes:
    """
    The path a proxy in front mounts llamaswap under, as its
    C{X-Forwarded-Prefix} header says, for our redirects; C{b""} without one
    or for anything but plain path segments (never another host).
    """
    value = (request.getHeader(b"x-forwarded-prefix") or b"").rstrip(b"/")
    return value if PREFIX.fullmatch(value) else b""


def _segment(raw: bytes) -> str | None:
    """
    One percent-decoded path segment, or C{None} for an empty one, a dot
    segment, one that is not UTF-8, one with a broken percent escape, or one
    hiding a slash, backslash or NUL.
    """
    if BROKEN_ESCAPE.search(raw):
        return None
    try:
        segment = unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return None
    if segment in ("", ".", "..") or any(bad in segment for bad in FORBIDDEN_IN_SEGMENTS):
        return None
    return segment


@frozen
class _Cached:
    mtime: float
    body: bytes
    content_type: bytes
    etag: bytes


def content_type_of(path: FilePath) -> bytes:
    extension = path.splitext()[1].lower()
    kind = TYPES.get(extension) or mimetypes.guess_type(path.basename())[0] or "application/octet-stream"
    return kind.encode("ascii")


class UIFiles:
    def __init__(self, directory: FilePath):
        self.directory = directory
        self._cache: dict[str, _Cached] = {}

    def locate(self, relative: bytes) -> FilePath | None:
        """
        The file a path below C{/ui/} names: C{index.html} for anything that
        is not a file of the folder, C{None} for a path that tries to leave
        it or hides something odd in a segment (or when the UI is not
        installed).
        """
        target = self.directory
        raws = relative.split(b"/") if relative else []
        if raws and raws[-1] == b"":
            raws.pop()  # a trailing slash: the page of that path
        for raw in raws:
            segment = _segment(raw)
            if segment is None:
                return None
            try:
                target = target.child(segment)
            except InsecurePath:
                return None
        if not target.isfile():
            target = self.directory.child("index.html")
        return target if target.isfile() else None

    def render(self, request: Request, relative: bytes) -> bytes:
        target = self.locate(relative)
        if target is None:
            request.setResponseCode(404)
            if not self.directory.child("index.html").isfile():
                return sized(request, b"the web UI is not installed", TEXT)
            return sized(request, b"")
        cached = self._load(target)
        body, etag = cached.body, cached.etag
        depth = relative.count(b"/")
        if depth and target.basename() == "index.html":
            body = body.replace(BASE, b'<base href="' + b"../" * depth + b'">', 1)
            etag = etag[:-1] + b"-%d" % depth + b'"'
        request.setHeader(b"etag", etag)
        request.setHeader(b"cache-control", b"no-cache")
        if request.getHeader(b"if-none-match") == etag:
            request.setResponseCode(304)
            return b""
        request.setHeader(b"content-type", cached.content_type)
        request.setHeader(b"content-length", str(len(body)).encode())
        return b"" if request.method == b"HEAD" else body

    def _load(self, path: FilePath) -> _Cached:
        key = path.path
        mtime = path.getModificationTime()
        cached = self._cache.get(key)
        if cached is None or cached.mtime != mtime:
            body = path.getContent()
            etag = b'"' + hashlib.sha1(body).hexdigest()[:16].encode() + b'"'
            cached = _Cached(mtime, body, content_type_of(path), etag)
            self._cache[key] = cached
        return cached
