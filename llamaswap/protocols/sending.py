"""
Sending without waiting for the reactor's next pass.

A Twisted transport queues what it is given and sends it when the reactor
next finds the socket writable: one more trip round the loop (and one more
wake-up of the process) for every small request and answer, which is most
of what a proxy does.  Right after queueing, the transport can be asked to
write what it holds -- the very call the reactor would make -- so the bytes
leave at once, in order behind anything queued before them; what the
kernel does not take stays queued for the reactor as before, and flow
control and producers work as they always do.
"""

from __future__ import annotations

from twisted.internet.tcp import Connection


def send_now(transport, data: bytes) -> None:
    """
    Write C{data} to C{transport} and, for a plain TCP connection, send
    what it holds at once.
    """
    transport.write(data)
    if (
        isinstance(transport, Connection)
        and transport.connected
        and not transport.disconnecting
        and not getattr(transport, "TLS", False)
        # a paused producer (or a pull producer) is resumed when the queue
        # drains: that stays the reactor's business, never a side effect of
        # this write
        and not transport.producerPaused
        and (transport.producer is None or transport.streamingProducer)
    ):
        # A failure (the peer went away) leaves the connection registered
        # for writing: the reactor's own attempt reports it as usual.
        transport.doWrite()
