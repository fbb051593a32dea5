"""
The configuration watcher: inotify and polling, editors that replace the
file, Kubernetes' ..data symlink swap, debouncing.
"""

from __future__ import annotations

import os

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
