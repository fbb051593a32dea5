"""
The configuration watcher: inotify and polling, editors that replace the
file, Kubernetes' ..data symlink swap, debouncing.
"""

from __future__ import annotations

import os
import signal

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import Clock

from llamaswap.config.watcher import ConfigWatcher
from tests.helpers import sleep, wait_until


def test_polling_watcher_debounces_bursts(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("a")
    clock = Clock()
    fired = []
    watcher = ConfigWatcher(str(path), lambda: fired.append(clock.seconds()), clock, use_inotify=False)
    watcher.startService()
    assert watcher.mode == "polling"
    clock.advance(1.0)
    assert fired == []
    for content in ("bb", "ccc", "dddd"):
        path.write_text(content)
        clock.advance(0.5)  # each poll sees a change and restarts the quiet period
    assert fired == []
    clock.advance(0.5)
    assert fired == []
    clock.advance(0.5)
    assert fired == [3.5]
    clock.advance(5)
    assert fired == [3.5]
    watcher.stopService()
    assert clock.getDelayedCalls() == []


@pytest_twisted.inlineCallbacks
def test_inotify_watcher_sees_writes_renames_and_kubernetes_swaps(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("v1")
    fired = []
    watcher = ConfigWatcher(str(path), lambda: fired.append(path.read_text()), reactor, debounce=0.1)
    watcher.startService()
    try:
        assert watcher.mode == "inotify"
        path.write_text("v2")  # a plain write
        yield wait_until(lambda: fired == ["v2"])
        replacement = tmp_path / ".config.yaml.swp"
        replacement.write_text("v3")
        os.replace(replacement, path)  # an editor's atomic save
        yield wait_until(lambda: fired == ["v2", "v3"])
        (tmp_path / "unrelated.txt").write_text("noise")
        yield sleep(0.3)
        assert fired == ["v2", "v3"]
    finally:
        watcher.stopService()


@pytest_twisted.inlineCallbacks
def test_inotify_watcher_follows_a_configmap_data_swap(tmp_path):
    # the layout Kubernetes mounts: config.yaml -> ..data/config.yaml, ..data -> ..2024_01
    first = tmp_path / "..2024_01"
    first.mkdir()
    (first / "config.yaml").write_text("first")
    os.symlink("..2024_01", tmp_path / "..data")
    os.symlink("..data/config.yaml", tmp_path / "config.yaml")
    fired = []
    path = tmp_path / "config.yaml"
    watcher = ConfigWatcher(str(path), lambda: fired.append(path.read_text()), reactor, debounce=0.1)
    watcher.startService()
    try:
        second = tmp_path / "..2024_02"
        second.mkdir()
        (second / "config.yaml").write_text("second")
        os.symlink("..2024_02", tmp_path / "..data_tmp")
        os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
        yield wait_until(lambda: fired == ["second"])
    finally:
        watcher.stopService()


def settle(clock: Clock) -> None:
    """
    One poll and the quiet period after it, in poll-sized steps.
    """
    for _ in range(3):
        clock.advance(0.5)


def test_polling_watcher_sees_files_added_changed_and_removed_in_the_directory(tmp_path):
    main = tmp_path / "main.yaml"
    main.write_text("main")
    directory = tmp_path / "conf.d"
    directory.mkdir()
    (directory / "a.yaml").write_text("a")
    clock = Clock()
    fired = []
    watcher = ConfigWatcher(
        str(main), lambda: fired.append(clock.seconds()), clock, use_inotify=False, directory=str(directory)
    )
    watcher.startService()
    try:
        (directory / "notes.txt").write_text("not configuration")
        clock.advance(3)
        assert fired == []
        (directory / "b.yml").write_text("b")  # added
        settle(clock)
        assert len(fired) == 1
        (directory / "a.yaml").write_text("a, longer")  # changed
        settle(clock)
        assert len(fired) == 2
        (directory / "b.yml").unlink()  # removed
        settle(clock)
        assert len(fired) == 3
        main.write_text("main, changed")  # the -c file is still watched
        settle(clock)
        assert len(fired) == 4
    finally:
        watcher.stopService()


@pytest_twisted.inlineCallbacks
def test_inotify_watcher_sees_yaml_files_of_the_directory(tmp_path):
    directory = tmp_path / "conf.d"
    directory.mkdir()
    fired = []
    watcher = ConfigWatcher(None, lambda: fired.append(True), reactor, debounce=0.1, directory=str(directory))
    watcher.startService()
    try:
        assert watcher.mode == "inotify"
        (directory / "notes.txt").write_text("ignored")
        yield sleep(0.3)
        assert fired == []
        (directory / "models.yml").write_text("models: {}")
        yield wait_until(lambda: len(fired) == 1)
        (directory / "models.yml").unlink()
        yield wait_until(lambda: len(fired) == 2)
    finally:
        watcher.stopService()


def test_sighup_schedules_a_reload_in_the_reactor_thread():
    from llamaswap.config.watcher import ReloadOnHangup

    class Calls:
        def __init__(self):
            self.scheduled = []

        def callFromThread(self, function, *args):
            self.scheduled.append(function)

    fired = []
    calls = Calls()
    before = signal.getsignal(signal.SIGHUP)
    service = ReloadOnHangup(lambda: fired.append(True), calls)
    service.startService()
    try:
        os.kill(os.getpid(), signal.SIGHUP)
        assert fired == []  # nothing runs inside the signal handler
        assert len(calls.scheduled) == 1
        calls.scheduled[0]()
        assert fired == [True]
    finally:
        service.stopService()
    assert signal.getsignal(signal.SIGHUP) == before
