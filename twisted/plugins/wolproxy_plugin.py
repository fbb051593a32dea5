"""
The C{twistd wolproxy} command line: wake a sleeping llamaswap host with
Wake-on-LAN when requests arrive.
"""

from __future__ import annotations

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer


class Options(usage.Options):
    synopsis = "--mac MAC --upstream URL [options]"
    longdesc = (
        "Proxy requests to a llamaswap host that suspends itself when idle: while it is "
        "down, each request sends a Wake-on-LAN packet and waits for it to come back."
    )
    optParameters = [
        ["mac", None, None, "MAC address of the host to wake (AA:BB:CC:DD:EE:FF)."],
        ["upstream", None, None, "The llamaswap URL to proxy to, e.g. http://192.168.1.13:8080."],
        ["listen", "l", ":8080", "Listen address: HOST:PORT, :PORT or a Twisted endpoint description."],
        ["timeout", None, 60.0, "Seconds a request waits for the upstream before 408.", float],
        ["log", None, "info", "Log level: debug, info, warn or error."],
        ["broadcast", None, "255.255.255.255:9", "Where to send the magic packet (HOST:PORT)."],
    ]

    def postOptions(self):
        from llamaswap.http.listen import ListenError, endpoint_description
        from llamaswap.wolproxy import (
            LOG_LEVELS,
            parse_host_port,
            parse_mac,
            validate_upstream,
        )

        if not self["mac"]:
            raise usage.UsageError("--mac is required")
        if not self["upstream"]:
            raise usage.UsageError("--upstream is required")
        try:
            parse_mac(self["mac"])
            validate_upstream(self["upstream"])
            parse_host_port(self["broadcast"])
        except ValueError as error:
            raise usage.UsageError(str(error)) from None
        if self["timeout"] < 1:
            raise usage.UsageError("--timeout must be at least 1 second")
        if self["log"] not in LOG_LEVELS:
            raise usage.UsageError(f"--log must be one of {', '.join(LOG_LEVELS)}")
        try:
            self["endpoint"] = endpoint_description(self["listen"])
        except ListenError as error:
            raise usage.UsageError(str(error)) from None


@implementer(IServiceMaker, IPlugin)
class WolProxyServiceMaker:
    tapname = "wolproxy"
    description = "Wake a sleeping llamaswap host with Wake-on-LAN when requests arrive."
    options = Options

    def makeService(self, options):
        from twisted.internet import reactor

        from llamaswap.wolproxy import WolProxyService

        return WolProxyService(
            reactor=reactor,
            mac=options["mac"],
            upstream=options["upstream"],
            listen=options["endpoint"],
            timeout=options["timeout"],
            broadcast=options["broadcast"],
            log_level=options["log"],
        )


serviceMaker = WolProxyServiceMaker()
