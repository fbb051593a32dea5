"""
Byte-level pieces: the upstream HTTP/1.1 client connection (L{client}), the
model server's ProcessProtocol (L{process}), SSE framing (L{sse}), bounded
streaming to HTTP clients (L{streaming}) and failures put into words
(L{failures}).
"""
