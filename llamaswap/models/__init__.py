"""
One model server: its process and lifecycle state machine (L{process}),
how it is started so that it cannot outlive llamaswap (L{launcher}), how
its readiness is noticed (L{readiness}), when it is unloaded for being idle
(L{ttl}), and the service that owns them all (L{manager}).
"""
