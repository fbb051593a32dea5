"""
The top-level service: wires the event bus, the logs, the model manager,
the request gateway and the HTTP listener together, and stops them in
order (no new connections, then every model server, then the streams).
"""

from __future__ import annotations

import os

from twisted.application.service import MultiService
from twisted.internet.endpoints import serverFromString
from twisted.python.filepath import FilePath

from llamaswap.config import Config, ConfigError, load_config
from llamaswap.http.auth import KeyCheck
from llamaswap.http.client import UpstreamClient, UpstreamEndpoints
from llamaswap.http.gateway import Gateway
from llamaswap.http.listen import ListeningService, display_url
from llamaswap.http.routes import Routes
from llamaswap.http.site import LlamaswapSite, RootResource
from llamaswap.models.manager import ModelManager
from llamaswap.models.process import ModelProcess
from llamaswap.models.readiness import PROBE_CONNECT_TIMEOUT, Probes, connect_probe, http_probe
from llamaswap.observe.activity import ActivityLog
from llamaswap.observe.backlog import Backlog
from llamaswap.observe.captures import Captures
from llamaswap.observe.events import ConfigFileChanged, EventBus, ProfileChanged
from llamaswap.observe.host import HostSampler
from llamaswap.observe.inflight import InFlight
from llamaswap.observe.logs import Logs
from llamaswap.observe.prometheus import Telemetry
from llamaswap.observe.store import Database
from llamaswap.routing.names import Names
from llamaswap.routing.profiles import Profiles
from llamaswap.routing.selectors import Selectors


def static_directory() -> FilePath:
    """
    Where the web UI's files are: the installed C{llamaswap.ui} package, or
    the C{static/} folder of a source checkout.
    """
    package = os.path.dirname(os.path.abspath(__file__))
    installed = os.path.join(package, "ui")
    if os.path.isfile(os.path.join(installed, "index.html")):
        return FilePath(installed)
    return FilePath(os.path.join(os.path.dirname(package), "static"))


class LlamaswapService(MultiService):
    """
    One running llamaswap.

    @param listen: a server endpoint description, or C{None} for no
        listener (in-memory tests connect to C{site} themselves).
    @param endpoints: how model servers are reached, and C{process_factory}
        how they are run (tests put in-memory ones here).
    """

    def __init__(
        self,
        config: Config,
        *,
        listen: str | None,
        reactor=None,
        config_path: str | None = None,
        config_dir: str | None = None,
        watch_config: bool = False,
        reload_on_hangup: bool = False,
        startup_notes: tuple[str, ...] = (),
        probe=None,
        endpoints: UpstreamEndpoints | None = None,
        process_factory=ModelProcess,
    ):
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor
        self.clock = reactor
        self.config = config
        self.config_path = config_path
        self.config_dir = config_dir
        self.watch_config = watch_config
        self.listen = listen
        self._startup_notes = startup_notes
        self.bus = EventBus()
        self.bus.setServiceParent(self)
        self.logs = Logs(self.bus, config.log_level, config.log_time_format, config.log_to_stdout)
        self.client = UpstreamClient(reactor, endpoints)
        self.probe_client: UpstreamClient | None = None
        if probe is None:
            probe_endpoints = endpoints or UpstreamEndpoints(reactor, PROBE_CONNECT_TIMEOUT)
            self.probe_client = UpstreamClient(reactor, probe_endpoints)
            probe = Probes(
                http=http_probe(self.probe_client, reactor),
                connect=connect_probe(
                    probe_endpoints,
                    lambda url, why: self.logs.proxy.warn(f"not waiting for {url} to accept connections: {why}"),
                ),
            )
        self.manager = ModelManager(
            config, reactor=reactor, logs=self.logs, bus=self.bus, probe=probe, process_factory=process_factory
        )
        self.manager.setServiceParent(self)
        self.backlog = Backlog(reactor)
        self.hardware: dict | None = None  # taken at start-up
        self.host = HostSampler(reactor, config.performance_every, config.performance_disabled)
        self.host.setServiceParent(self)
        self.inflight = InFlight(self.bus, reactor)
        self.activity = ActivityLog(
            Database(config.store_path),  # StoreError if the file cannot be used
            Captures(config.capture_buffer_mb),
            self.bus,
            reactor,
            self.backlog,
            keep=config.metrics_max_in_memory,
            warn=self.logs.proxy.warn,
            debug=self.logs.proxy.debug,
        )
        self.gateway = Gateway(
            self.manager, self.client, self.activity, self.logs.proxy, reactor, self.backlog, self.inflight
        )
        self.telemetry = Telemetry(
            self.bus, reactor.seconds, self.host, self.manager.states, self.manager.scheduler.queued_by_model
        )
        self.profiles = Profiles(config, lambda active: self.bus.publish(ProfileChanged(active)))
        self.selectors = Selectors(config, self.manager.state_of)
        self.names = Names(config, self.profiles, self.selectors)
        self.routes = Routes(
            models=self.manager,
            names=self.names,
            profiles=self.profiles,
            gateway=self.gateway,
            logs=self.logs,
            bus=self.bus,
            activity=self.activity,
            static_dir=static_directory(),
            telemetry=self.telemetry,
            host=self.host,
            hardware=lambda: self.hardware,
        )
        keys = KeyCheck(lambda: self.config.api_keys, self.routes.knows)
        root = RootResource(self.routes.resource(), self.routes.fast_routes(), refuse=keys.refuse)
        self.site = LlamaswapSite(
            root, self.logs.proxy, clock=reactor, backlog=self.backlog, telemetry=self.telemetry
        )
        self.http: ListeningService | None = None
        if listen is not None:
            self.http = ListeningService(serverFromString(reactor, listen), self.site)
            self.http.setServiceParent(self)
        if watch_config and (config_path or config_dir):
            from llamaswap.config.watcher import ConfigWatcher

            self.watcher = ConfigWatcher(config_path, self.reload_config, reactor, directory=config_dir)
            self.watcher.setServiceParent(self)
        if reload_on_hangup:
            from llamaswap.config.watcher import ReloadOnHangup

            ReloadOnHangup(self.reload_config, reactor).setServiceParent(self)

    def startService(self) -> None:
        for note in self._startup_notes:
            self.logs.proxy.warn(note)
        for warning in self.config.warnings:
            self.logs.proxy.warn(f"config: {warning}")
        super().startService()
        from llamaswap.observe.hardware import snapshot

        def taken(document):
            self.hardware = document

        def failed(failure):
            self.logs.proxy.warn(f"hardware detection unavailable: {failure.getErrorMessage()}")

        snapshot().addCallbacks(taken, failed)
        if self.http is None:
            return
        scheme = "https" if self.listen.startswith("ssl:") else "http"

        def listening(port):
            address = port.getHost()
            host = getattr(address, "host", None)
            if host is None:
                where = display_url(self.listen)
            else:
                where = f"{scheme}://{'[' + host + ']' if ':' in host else host}:{address.port}"
            self.logs.proxy.info(f"llamaswap listening on {where}")
            return port

        self.http.when_listening().addCallback(listening)

    def reload_config(self) -> bool:
        """
        Load the configuration files again and switch to them; a
        configuration that does not load is reported and the current one
        keeps serving.
        """
        if not (self.config_path or self.config_dir):
            self.logs.proxy.info("nothing to reload: the built-in demo configuration is in use")
            return False
        self.bus.publish(ConfigFileChanged("start"))
        try:
            config = load_config(self.config_path, previous=self.config, config_dir=self.config_dir)
        except ConfigError as error:
            self.logs.proxy.error(f"configuration not reloaded, the previous one stays in use: {error}")
            self.bus.publish(ConfigFileChanged("end"))
            return False
        if config == self.config:
            self.logs.proxy.info("configuration file changed, but not its settings")
            self.bus.publish(ConfigFileChanged("end"))
            return True
        for warning in config.warnings:
            self.logs.proxy.warn(f"config: {warning}")
        added, removed, changed = self.manager.reconfigure(config)
        self.config = config
        self.names.reconfigure(config)
        self.selectors.reconfigure(config)
        self.profiles.reconfigure(config)
        self.logs.proxy.configure(config.log_level, config.log_time_format)
        self.logs.send_to_stdout(config.log_to_stdout)
        self.logs.forget_models(config.models)
        self.activity.reconfigure(config.metrics_max_in_memory, config.capture_buffer_mb)
        if config.store_path != self.activity.database.path:
            self.logs.proxy.warn("store.path changed: the new activity database is used after a restart")
        self.host.reconfigure(config.performance_every, config.performance_disabled)
        kept = len(config.models) - len(added) - len(changed)
        self.logs.proxy.info(
            "configuration reloaded: "
            f"{len(added)} added {sorted(added)}, {len(changed)} changed {sorted(changed)}, "
            f"{len(removed)} removed {sorted(removed)}, {kept} unchanged"
        )
        self.bus.publish(ConfigFileChanged("end"))
        return True

    def stopService(self):
        stopping = super().stopService()

        def close_connections(result):
            self.backlog.run()
            for client in (self.client, self.probe_client):
                if client is not None:
                    client.close()
            return self.activity.close().addBoth(lambda _: result)

        return stopping.addBoth(close_connections)
