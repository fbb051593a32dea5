"""
Start a model server so that it cannot outlive llamaswap.

Run as C{python -I -S launcher.py PARENT_PID -- command args...}: it puts the
command in a session (and process group) of its own, asks Linux to SIGKILL
it when its parent dies -- even if llamaswap itself is killed with SIGKILL --
and then replaces itself with the command, so the server keeps this pid.

It deliberately imports nothing from llamaswap: it runs with the site
packages disabled to start in a few milliseconds.
"""

import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def main(argv: list) -> int:
    if len(argv) < 4 or argv[2] != "--":
        sys.stderr.write("usage: launcher.py PARENT_PID -- command [args...]\n")
        return 2
    parent, command = int(argv[1]), argv[3:]
    try:
        os.setsid()
    except OSError:
        pass
    _die_with_parent()
    if os.getppid() != parent:
        # llamaswap died before the death signal was armed.
        return 1
    try:
        os.execvp(command[0], command)
    except OSError as error:
        sys.stderr.write(f"llamaswap: cannot run {command[0]!r}: {error.strerror}\n")
        return 127
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv))
