"""
Byte-level pieces: the upstream process protocol, SSE framing and bounded
streaming to HTTP clients.
"""
