"""
C{GET /api/hardware}: what the machine is, taken once at start-up -- the
operating system, CPU, memory, whether this is a container or a virtual
machine, and the accelerators C{nvidia-smi} reports -- in the shape of the
newest llama-swap's hardware snapshot, so its UI page reads it.
"""

from __future__ import annotations

import os
import platform
import shutil
from typing import Any, Callable

from twisted.internet.defer import Deferred, succeed

from llamaswap.observe.tool import run_tool

GPU_QUERY = ("index", "name", "memory.total", "driver_version", "power.limit")


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return ""


def operating_system(read: Callable[[str], str] = _read) -> dict[str, Any]:
    release = {}
    for line in read("/etc/os-release").splitlines():
        key, _, value = line.partition("=")
        release[key.strip()] = value.strip().strip('"')
    return {
        "family": platform.system().lower() or "unknown",
        "name": release.get("NAME") or None,
        "version": release.get("VERSION_ID") or None,
        "kernel": platform.release() or None,
    }


def cpu(read: Callable[[str], str] = _read) -> dict[str, Any]:
    model = vendor = None
    sockets, cores = set(), set()
    physical = None
    for block in read("/proc/cpuinfo").split("\n\n"):
        fields = {}
        for line in block.splitlines():
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
        if not fields:
            continue
        model = model or fields.get("model name")
        vendor = vendor or fields.get("vendor_id")
        if "physical id" in fields:
            sockets.add(fields["physical id"])
            cores.add((fields["physical id"], fields.get("core id")))
    if cores:
        physical = len(cores)
    return {
        "model": model,
        "vendor": vendor,
        "socket_count": len(sockets) or None,
        "physical_core_count": physical,
        "logical_thread_count": os.cpu_count(),
    }


def environment(read: Callable[[str], str] = _read, exists: Callable[[str], bool] = os.path.exists) -> dict[str, Any]:
    """
    A container (and which), a virtual machine (and which hypervisor), or
    bare metal -- from the usual traces each leaves.
    """
    if exists("/.dockerenv"):
        return {"kind": "container", "name": "docker", "version": None}
    if exists("/run/.containerenv"):
        return {"kind": "container", "name": "podman", "version": None}
    cgroup = read("/proc/1/cgroup")
    for name in ("kubepods", "docker", "containerd", "lxc"):
        if name in cgroup:
            return {"kind": "container", "name": "kubernetes" if name == "kubepods" else name, "version": None}
    if "hypervisor" in read("/proc/cpuinfo").split("flags", 1)[-1].split("\n", 1)[0]:
        vendor = read("/sys/class/dmi/id/sys_vendor").strip() or None
        return {"kind": "virtual_machine", "name": vendor, "version": None}
    return {"kind": "bare_metal", "name": None, "version": None}


def _number(text: str, kind=float):
    try:
        return kind(float(text))
    except ValueError:
        return None


def accelerators(output: bytes) -> list[dict[str, Any]]:
    found = []
    for line in output.decode("utf-8", "replace").splitlines():
        fields = [field.strip() for field in line.split(",")]
        if len(fields) != len(GPU_QUERY) or _number(fields[0], int) is None:
            continue
        megabytes = _number(fields[2], int)
        found.append(
            {
                "index": int(fields[0]),
                "kind": "gpu",
                "model": fields[1] or None,
                "vendor": "NVIDIA",
                "architecture": None,
                "memory": {"capacity_bytes": megabytes * 1024 * 1024 if megabytes else None, "kind": "dedicated"},
                "driver": {"name": "nvidia", "version": fields[3] or None},
                "power_limit_watts": _number(fields[4]),
            }
        )
    return found


def snapshot(query_gpus: Callable[[], Deferred | None] | None = None) -> Deferred:
    """
    The hardware snapshot (a Deferred: the GPUs are asked a child process).
    """
    import psutil

    document = {
        "operating_system": operating_system(),
        "architecture": {"name": platform.machine() or "unknown"},
        "environment": environment(),
        "memory": {"capacity_bytes": psutil.virtual_memory().total},
        "cpu": cpu(),
        "accelerators": [],
    }
    query = (query_gpus or _nvidia_smi)()
    if query is None:
        return succeed(document)

    def add(output: bytes) -> dict:
        document["accelerators"] = accelerators(output)
        return document

    return query.addCallback(add).addErrback(lambda failure: document)


def _nvidia_smi() -> Deferred | None:
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return None
    return run_tool(tool, [f"--query-gpu={','.join(GPU_QUERY)}", "--format=csv,noheader,nounits"])
