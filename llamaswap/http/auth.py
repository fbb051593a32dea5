"""
Where an API key is checked.

With C{apiKeys} in the configuration, every route but a few (health checks,
the root redirect, the favicon) needs one of the keys, given as
C{Authorization: Bearer <key>}, as the password of C{Authorization: Basic}
(what a browser sends after its login prompt, so the web UI is protected
too) or as C{x-api-key}.  Anything else gets 401 with a C{WWW-Authenticate}
challenge.  Keys are compared in constant time, and no key is ever written
to a log.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Callable

from twisted.web.server import Request

from llamaswap.http.answers import error_response

# (method, path) pairs anyone may use, as upstream leaves them open.
OPEN = frozenset(
    (method, path)
    for method in (b"GET", b"HEAD")
    for path in (b"/health", b"/wol-health", b"/", b"/favicon.ico", b"/upstream")
)
CHALLENGE = b'Basic realm="llama-swap"'
UNAUTHORIZED = "unauthorized: invalid or missing API key"


def presented_key(request: Request) -> bytes:
    """
    The key a request carries: the Basic password, else the Bearer token,
    else C{x-api-key} (upstream's order); empty when there is none.
    """
    authorization = request.getHeader(b"authorization") or b""
    scheme, _, credentials = authorization.partition(b" ")
    scheme = scheme.lower()
    if scheme == b"basic":
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True)
        except (binascii.Error, ValueError):
            decoded = b""
        user, colon, password = decoded.partition(b":")
        if colon and password:
            return password
    if scheme == b"bearer" and credentials:
        return credentials
    return request.getHeader(b"x-api-key") or b""


class KeyCheck:
    """
    The API key check of one running service; C{keys} gives the current
    configuration's keys (a reload may change them), C{known} says whether
    a request would reach a route at all (unknown paths stay 404s).
    """

    def __init__(self, keys: Callable[[], tuple[str, ...]], known: Callable[[Request], bool]):
        self._keys = keys
        self._known = known

    def refuse(self, request: Request) -> bytes | None:
        """
        C{None} when the request may go on, else the 401 answer's body.
        """
        keys = self._keys()
        if not keys or (request.method, request.path) in OPEN:
            return None
        given = presented_key(request)
        matched = False
        for key in keys:  # every key is compared: the time says nothing about which
            matched |= hmac.compare_digest(given, key.encode("utf-8"))
        if matched or not self._known(request):
            return None
        request.setHeader(b"www-authenticate", CHALLENGE)
        return error_response(request, 401, UNAUTHORIZED)
