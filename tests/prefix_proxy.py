"""
A reverse proxy that mounts a llamaswap under a path of its own, as nginx
or Traefik would: C{/llama/...} is passed on as C{/...}, the prefix named in
C{X-Forwarded-Prefix}, answers streamed back as they come.  For the web
UI's path-prefix test.

Usage: python -m tests.prefix_proxy LISTEN_PORT TARGET_PORT PREFIX
"""

import sys

from twisted.internet import reactor
from twisted.web.proxy import ProxyClientFactory
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site


class Prefixed(Resource):
    isLeaf = True

    def __init__(self, target_port: int, prefix: bytes):
        super().__init__()
        self.target_port = target_port
        self.prefix = prefix

    def render(self, request):
        uri = request.uri
        if not (uri == self.prefix or uri.startswith(self.prefix + b"/") or uri.startswith(self.prefix + b"?")):
            request.setResponseCode(404)
            return b"not under the prefix\n"
        rest = uri[len(self.prefix) :]
        if not rest.startswith(b"/"):
            rest = b"/" + rest
        headers = request.getAllHeaders()
        headers[b"host"] = b"127.0.0.1:%d" % self.target_port
        headers[b"x-forwarded-prefix"] = self.prefix
        request.content.seek(0)
        factory = ProxyClientFactory(request.method, rest, request.clientproto, headers, request.content.read(), request)
        reactor.connectTCP("127.0.0.1", self.target_port, factory)
        return NOT_DONE_YET


def main(listen: str, target: str, prefix: str) -> None:
    reactor.listenTCP(int(listen), Site(Prefixed(int(target), prefix.rstrip("/").encode())), interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main(*sys.argv[1:4])
