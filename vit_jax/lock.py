"""A workdir lock: one training run per workdir at a time; a lock left behind by a crashed run is taken over.

    with lock.WorkdirLock(workdir, stale_after=300):
        ...   # train

The lock is `<workdir>/.lock`, a JSON file {host, pid, started, heartbeat} created atomically (O_EXCL). While the
run lives, a background thread rewrites `heartbeat` every `stale_after / 4` seconds. A second run on the same
workdir refuses with an error naming the holder. A lock is stale, and is taken over with a warning, when its
process is not alive on this host (same host name, pid gone) or when its heartbeat is older than `stale_after`
seconds (a run on another host of a shared file system that was killed, or whose machine died).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from typing import Optional

log = logging.getLogger(__name__)

LOCK_NAME = '.lock'
_HELD: set[str] = set()  # Lock files held by this process (a second run in the same process is refused too).


class WorkdirBusyError(RuntimeError):
    """Another live run holds the workdir."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # Exists, owned by another user.
        return True
    return True


def read(path: str) -> Optional[dict]:
    """The lock record at `path`, or None if absent; {} if unreadable (being written, or damaged)."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def stale_reason(info: dict, stale_after: float, now: Optional[float] = None) -> Optional[str]:
    """Why the lock `info` is stale (a sentence), or None when its holder may still be running."""
    now = time.time() if now is None else now
    age = now - float(info.get('heartbeat', 0) or 0)
    if info.get('host') == socket.gethostname() and isinstance(info.get('pid'), int):
        pid = info['pid']
        if pid == os.getpid():
            return None  # This process: refused if held (see WorkdirLock.acquire).
        if not _pid_alive(pid):
            return f'its process {pid} is not running on this host'
    if age > stale_after:
        return f'its last heartbeat is {age:.0f} s old (more than {stale_after:.0f} s)'
    return None


class WorkdirLock:
    """Holds `<workdir>/.lock` between `acquire()` and `release()` (or as a context manager)."""

    def __init__(self, workdir: str, stale_after: float = 300.0):
        self.path = os.path.join(os.path.abspath(workdir), LOCK_NAME)
        self.stale_after = float(stale_after)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._record: dict = {}

    def _write(self, exclusive: bool) -> None:
        self._record['heartbeat'] = time.time()
        data = json.dumps(self._record)
        if exclusive:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(fd, 'w') as f:
                f.write(data)
        else:  # Heartbeat: replace atomically so that a reader never sees a half-written record.
            tmp = f'{self.path}.{os.getpid()}.tmp'
            with open(tmp, 'w') as f:
                f.write(data)
            os.replace(tmp, self.path)

    def acquire(self) -> 'WorkdirLock':
        if self.path in _HELD:
            raise WorkdirBusyError(f'{os.path.dirname(self.path)} is in use by another run in this process; use '
                                   'another --workdir.')
        self._record = {'host': socket.gethostname(), 'pid': os.getpid(), 'started': time.time()}
        for _ in range(3):
            try:
                self._write(exclusive=True)
                break
            except FileExistsError:
                info = read(self.path)
                if info is None:
                    continue  # Released meanwhile: try again.
                if info == {}:  # Being written right now, or damaged: judge it by the file's age.
                    info = {'heartbeat': os.path.getmtime(self.path)}
                reason = stale_reason(info, self.stale_after)
                if reason is None:
                    raise WorkdirBusyError(
                        f'{os.path.dirname(self.path)} is in use by another run (host {info.get("host")}, pid '
                        f'{info.get("pid")}, heartbeat {time.time() - float(info.get("heartbeat", 0)):.0f} s ago). '
                        'Use another --workdir, or stop that run. If it is dead (e.g. on another machine), delete '
                        f'{self.path} or wait {self.stale_after:.0f} s for its heartbeat to go stale.') from None
                log.warning('Taking over the stale lock %s (%s; held by host %s, pid %s).', self.path, reason,
                            info.get('host'), info.get('pid'))
                try:
                    os.remove(self.path)
                except FileNotFoundError:
                    pass
        else:
            raise WorkdirBusyError(f'Could not take the lock {self.path}: other runs keep taking it.')
        _HELD.add(self.path)
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name='workdir-lock-heartbeat', daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        period = max(self.stale_after / 4, 0.05)
        while not self._stop.wait(period):
            try:
                info = read(self.path)
                if info and info.get('pid') != os.getpid():
                    log.error('The workdir lock %s was taken over by pid %s on %s: another run now writes to this '
                              'workdir.', self.path, info.get('pid'), info.get('host'))
                    return
                self._write(exclusive=False)
            except OSError as e:  # A full or flaky file system must not kill the run over its heartbeat.
                log.warning('Could not refresh the workdir lock %s: %s', self.path, e)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self.path in _HELD:
            _HELD.discard(self.path)
            info = read(self.path)
            if info and info.get('pid') == os.getpid():
                try:
                    os.remove(self.path)
                except FileNotFoundError:
                    pass

    def __enter__(self) -> 'WorkdirLock':
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
