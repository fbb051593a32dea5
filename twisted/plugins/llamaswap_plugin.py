"""
The C{twistd llamaswap} command line.

Kept free of heavy imports: twistd imports every plugin module just to list
the available commands.
"""

from __future__ import annotations

import gc
import os
import sys

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Serve many local LLM inference servers behind one OpenAI-compatible endpoint, "
        "starting, swapping and stopping them on demand. Without --config, ./config.yaml is "
        "used if it exists, else a built-in demo configuration."
    )
    optParameters = [
        ["config", "c", None, "Configuration file (YAML)."],
        [
            "config-dir",
            None,
            None,
            "Directory of *.yml/*.yaml configuration files, merged in name order after --config.",
        ],
        [
            "listen",
            "l",
            None,
            "Listen address: HOST:PORT, :PORT (all interfaces) or a Twisted endpoint "
            "description such as tcp:8080:interface=127.0.0.1 "
            "[default: 127.0.0.1:8080, 127.0.0.1:8443 with TLS].",
        ],
        ["tls-cert-file", None, None, "TLS certificate file (PEM); needs --tls-key-file."],
        ["tls-key-file", None, None, "TLS private key file (PEM); needs --tls-cert-file."],
    ]
    optFlags = [
        [
            "watch-config",
            "w",
            "Reload the configuration when its files change (SIGHUP always reloads it).",
        ]
    ]

    def opt_version(self):
        """
        Print the llamaswap version and exit.
        """
        from llamaswap import __version__

        print(f"llamaswap version {__version__}")
        sys.exit(0)

    def postOptions(self):
        from llamaswap.http.listen import ListenError, endpoint_description

        try:
            self["endpoint"] = endpoint_description(
                self["listen"], self["tls-cert-file"], self["tls-key-file"]
            )
        except ListenError as error:
            raise usage.UsageError(str(error)) from None
        for option in ("tls-cert-file", "tls-key-file"):
            path = self[option]
            if path and not os.access(path, os.R_OK):
                raise usage.UsageError(f"--{option} {path}: cannot read the file")
        directory = self["config-dir"]
        if directory is not None and not os.path.isdir(directory):
            raise usage.UsageError(f"--config-dir {directory}: not a directory")
        if self["config"] is None and directory is None and os.path.exists("config.yaml"):
            self["config"] = "config.yaml"
        if self["watch-config"] and self["config"] is None and directory is None:
            raise usage.UsageError("--watch-config needs a configuration file (-c) or --config-dir")


@implementer(IServiceMaker, IPlugin)
class LlamaswapServiceMaker:
    tapname = "llamaswap"
    description = "One OpenAI-compatible endpoint for many local LLMs, swapped on demand."
    options = Options

    def makeService(self, options):
        from llamaswap.config import ConfigError, load_config
        from llamaswap.config.demo import DEMO_NOTICE, demo_config
        from llamaswap.observe.store import StoreError
        from llamaswap.observe.textlog import for_twistd
        from llamaswap.service import LlamaswapService

        notes: tuple[str, ...] = ()
        path = options["config"]
        directory = options["config-dir"]
        try:
            if path is None and directory is None:
                config = demo_config()
                notes = (DEMO_NOTICE,)
            else:
                path = path and os.path.abspath(path)
                directory = directory and os.path.abspath(directory)
                config = load_config(path, config_dir=directory)
        except ConfigError as error:
            sys.stderr.write(f"llamaswap: error loading config: {error}\n")
            sys.exit(1)
        try:
            service = LlamaswapService(
                config,
                listen=options["endpoint"],
                config_path=path,
                config_dir=directory,
                watch_config=options["watch-config"],
                reload_on_hangup=True,
                startup_notes=notes,
            )
        except StoreError as error:
            sys.stderr.write(f"llamaswap: error opening the activity database: {error}\n")
            sys.exit(1)
        # What exists now (modules, Twisted, the configuration) lives as long
        # as the process: the garbage collector's full passes need not walk
        # it again and again (they paused the server for tens of ms).
        gc.collect()
        gc.freeze()
        return for_twistd(service, getattr(options, "parent", None))


serviceMaker = LlamaswapServiceMaker()
