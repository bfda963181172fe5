"""One process per run folder: an exclusive ``flock`` on ``<run_dir>/run.lock``.

The kernel drops a ``flock`` when its process dies (SIGKILL, OOM, a lost node's NFS lease
expires), so a lock left by a crash is never stale: the next run takes it over and reads
from the file who held it before (pid, host, start time). Where the file system has no
``flock``, the file's pid is checked instead (a live pid on this host means busy).
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import logging
import os
import socket
from pathlib import Path

from cramming.errors import RunInUseError

log = logging.getLogger(__name__)

LOCK_FILE = "run.lock"


def _holder_text(info: dict) -> str:
    if not info:
        return "another process"
    return (f"pid {info.get('pid', '?')} on {info.get('host', '?')} "
            f"(started {info.get('started', '?')})")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """Exclusive hold of a run folder for this process (see :meth:`acquire`)."""

    def __init__(self, path: Path, fd: int):
        self.path, self._fd = path, fd

    @classmethod
    def acquire(cls, run_dir: Path) -> RunLock:
        """Lock ``run_dir``; raises :class:`RunInUseError` when a live process holds it."""
        path = Path(run_dir) / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                previous = cls._read(fd)
            except BlockingIOError:
                raise RunInUseError(
                    f"Run folder {run_dir} is in use by {_holder_text(cls._read(fd))}: two "
                    f"runs of one name started at once, or resume while it still runs; "
                    f"wait for it, stop it, or start this one with another name=.") from None
            except OSError as error:  # no flock on this file system: trust the pid
                if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                previous = cls._read(fd)
                if (previous.get("host") == socket.gethostname()
                        and previous.get("pid") not in (None, os.getpid())
                        and _pid_alive(int(previous["pid"]))):
                    raise RunInUseError(f"Run folder {run_dir} is in use by "
                                        f"{_holder_text(previous)}; wait for it or stop it."
                                        ) from None
            if previous:
                log.warning("Run folder %s was left locked by %s, which ended without "
                            "releasing it (killed or crashed): taking it over.", run_dir,
                            _holder_text(previous))
            info = {"pid": os.getpid(), "host": socket.gethostname(),
                    "started": datetime.datetime.now().isoformat(timespec="seconds")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        except BaseException:
            os.close(fd)  # closing drops the flock, if taken
            raise
        return cls(path, fd)

    @staticmethod
    def _read(fd: int) -> dict:
        try:
            info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        except (ValueError, OSError):
            return {}
        return info if isinstance(info, dict) else {}

    def release(self) -> None:
        """Empty the lock file (a clean end) and drop the lock; idempotent."""
        if self._fd < 0:
            return
        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            pass
        os.close(self._fd)  # drops the flock
        self._fd = -1

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
