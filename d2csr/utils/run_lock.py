"""One run per folder: an advisory lock held while a run writes into its folder.

:func:`acquire` takes ``fcntl.flock`` on a small lock file (next to the folder it guards, never inside it, so
BasicSR's ``mkdir_and_rename`` of the folder does not touch it) and writes the holder's pid, host, start time and
command into it for the message of a run that is refused. The operating system drops the lock when its process
ends, however it ends (``kill -9``, a crash, a power loss): a lock file left behind never blocks the next run,
only a running holder does. The file is left in place (removing it could let two runs lock two different files).

Locks are per process (they are released by :func:`release` or at exit); where ``fcntl`` is missing (Windows) or
the filesystem refuses locks, :func:`acquire` returns ``None`` and nothing is locked.
"""
import json
import os
import socket
import sys
import time

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

_HELD = {}  # absolute lock path -> open file holding the lock


class RunInUseError(RuntimeError):
    """The folder is in use by a running process; ``holder`` is what that process wrote (pid, host, ...)."""

    def __init__(self, message, holder=None):
        super().__init__(message)
        self.holder = holder or {}


def holder_of(path):
    """What the holder of the lock file ``path`` wrote (``{}`` when nothing readable)."""
    try:
        with open(path, encoding='utf-8') as f:
            return json.loads(f.read() or '{}')
    except (OSError, ValueError):
        return {}


def describe(holder):
    """``'pid 123 on host h (started ...: command)'`` from :func:`holder_of`'s dict."""
    if not holder:
        return 'a process that has not written its pid yet'
    text = f'pid {holder.get("pid", "?")} on host {holder.get("host", "?")}'
    details = [holder.get('started'), holder.get('command')]
    return text + (f' (started {": ".join(str(d) for d in details if d)})' if any(details) else '')


def acquire(path, what='this folder'):
    """Lock ``path`` (made with its folder if needed) for this process; returns the path, or ``None`` when locks
    are not available here. Raises :class:`RunInUseError` naming the holder when another process holds it."""
    path = os.path.abspath(path)
    if path in _HELD:
        return path
    if fcntl is None:
        return None
    os.makedirs(os.path.dirname(path), exist_ok=True)
    f = open(path, 'a+', encoding='utf-8')
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        holder = holder_of(path)
        raise RunInUseError(f'{what} is in use by a running process: {describe(holder)}.', holder) from None
    except OSError:  # a filesystem without locks
        f.close()
        return None
    f.seek(0)
    f.truncate()
    json.dump({'pid': os.getpid(), 'host': socket.gethostname(), 'started': time.strftime('%Y-%m-%d %H:%M:%S'),
               'command': ' '.join(sys.argv)}, f)
    f.flush()
    _HELD[path] = f
    return path


def release(path=None):
    """Release the lock on ``path`` (every lock of this process when ``None``)."""
    paths = list(_HELD) if path is None else [os.path.abspath(path)]
    for p in paths:
        f = _HELD.pop(p, None)
        if f is not None:
            f.close()  # closing the file drops the flock
