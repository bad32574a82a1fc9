"""One writer per run store: an exclusive `flock` on `<out>/selfgen.lock`, held while a run
writes.

Two runs on one store would both commit round N, and the second would die on the primary key.
The lock makes the second refuse at once instead. It is the kernel's: `flock` locks belong to
the open file, which the kernel closes when its process ends in any way (exit, crash,
SIGKILL), so a lock never outlives its holder and the run after a crash takes it at once;
after a power loss there is no lock at all (locks are not kept on disk). Nothing has to decide
whether a recorded holder is still alive.

The file stays between runs; each holder writes its pid, host and start time into it, for the
message of a run that is refused. Readers (`export`, `stats`, `inspect`, `score`) never take
this lock: SQLite's WAL lets them read while the run writes, and their own short writes
(curation marks, scores) wait for the run's transaction like any other SQLite writer.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from selfgen.store.disk import disk_full, is_disk_full
from selfgen.store.schema import StoreError, now

LOCK_NAME = "selfgen.lock"
# A holder writes its details right after taking the lock; a run refused in that instant
# reads the file again for up to this long before saying the details are unknown.
_DETAILS_WAIT_S = 1.0


@dataclass(frozen=True)
class LockHolder:
    """Who holds a run's lock, as the holder recorded it (None: not recorded yet)."""

    pid: int | None = None
    host: str | None = None
    started: str | None = None

    def describe(self) -> str:
        if self.pid is None:
            return "another process (it has not recorded its pid yet)"
        return f"pid {self.pid} on {self.host}, started {self.started}"


class StoreLockedError(StoreError):
    """Another live process is writing the run store."""

    def __init__(self, folder: Path, holder: LockHolder) -> None:
        self.folder = folder
        self.holder = holder
        super().__init__(
            f"{folder}: another selfgen run is writing this run store ({holder.describe()});"
            " wait for it to end or stop it, then run again"
        )


class RunLock:
    """The writer's lock of one run folder, held from :meth:`acquire` to :meth:`release`."""

    def __init__(self, fd: int, path: Path) -> None:
        self._fd: int | None = fd
        self.path = path

    @classmethod
    def acquire(cls, folder: Path) -> RunLock:
        """Take the lock of `folder` (which must exist) without waiting, and record this
        process as its holder; :class:`StoreLockedError` if a live process holds it."""
        path = Path(folder) / LOCK_NAME
        try:
            # os.open makes a descriptor that exec'd children (tool sandbox, servers) do not
            # inherit, so none of them can keep the lock after this process dies.
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise _error(folder, path, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise StoreLockedError(Path(folder), holder) from None
        except OSError as exc:  # a file system without locks (some network mounts)
            os.close(fd)
            raise StoreError(
                f"{path}: cannot lock the run store ({exc.strerror}); selfgen needs a file"
                " system with file locks to keep a second run from writing it"
            ) from None
        details = {"pid": os.getpid(), "host": socket.gethostname(), "started": now()}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(details).encode() + b"\n", 0)
        except OSError as exc:
            os.close(fd)
            raise _error(folder, path, exc) from None
        return cls(fd, path)

    def release(self) -> None:
        """Let another run write the store (closing the file drops the lock)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _read_holder(fd: int) -> LockHolder:
    deadline = time.monotonic() + _DETAILS_WAIT_S
    while True:
        try:
            data = json.loads(os.pread(fd, 4096, 0))
            return LockHolder(int(data["pid"]), str(data["host"]), str(data["started"]))
        except (ValueError, KeyError, TypeError, OSError):
            if time.monotonic() >= deadline:
                return LockHolder()
            time.sleep(0.01)


def _error(folder: Path, path: Path, exc: OSError) -> StoreError:
    if is_disk_full(exc, Path(folder)):
        return disk_full(Path(folder))
    return StoreError(f"{path}: cannot write the run's lock file ({exc.strerror})")
