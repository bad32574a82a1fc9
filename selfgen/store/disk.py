"""A full disk, told apart from a broken store.

SQLite reports a disk that filled up in two ways: "database or disk is full" (SQLITE_FULL) when
a write to the database or its WAL fails with ENOSPC, and a bare "disk I/O error"
(SQLITE_IOERR) when it cannot even make the shared-memory index of a WAL database, which is what
opening a store on a full disk does. Shown as they are, both read like a corrupt store. The
errno is not passed through Python's sqlite3 module, so an I/O error counts as a full disk when
the file system of the run folder has (almost) no space left at that moment.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import tempfile
from pathlib import Path

from selfgen.store.schema import StoreError

_SQLITE_IOERR = 10
_SQLITE_FULL = 13
# Below this much free space an I/O error is taken for a full disk: SQLite grows the WAL index
# in 32 KiB steps and the WAL a page (4 KiB) at a time, so a disk with this little left is the
# disk that just failed a write.
LOW_SPACE_BYTES = 1 << 20


class DiskFullError(StoreError):
    """A write of the run store failed for want of disk space. Nothing of the write is kept
    (a round is written whole or not at all); `folder` is the run folder."""

    def __init__(self, folder: Path, free_bytes: int | None) -> None:
        self.folder = folder
        self.free_bytes = free_bytes
        self.mount = mount_point(folder)
        if free_bytes is None or free_bytes < LOW_SPACE_BYTES:
            where = f"the disk of {folder} is full (no space left on {self.mount})"
        else:
            # SQLITE_FULL with room on the run's disk: SQLite's temporary files (big sorts)
            # go to another directory, which may be the full one.
            where = (
                f"the disk is full: SQLite could not write {folder} ({self.mount} has"
                f" {_size(free_bytes)} free; its temporary directory {tempfile.gettempdir()}"
                " may be the full one)"
            )
        super().__init__(where)


def free_bytes(folder: Path) -> int | None:
    """Bytes an unprivileged process may still write on `folder`'s file system (None if the
    folder cannot be examined)."""
    try:
        stat = os.statvfs(_existing(folder))
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


def is_disk_full(exc: BaseException, folder: Path) -> bool:
    """Whether `exc`, raised by a write under `folder`, means that the disk is full."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(exc, sqlite3.Error):
        code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
        if code == _SQLITE_FULL:
            return True
        if code == _SQLITE_IOERR:
            free = free_bytes(folder)
            return free is not None and free < LOW_SPACE_BYTES
    return False


def disk_full(folder: Path) -> DiskFullError:
    """The error to raise once :func:`is_disk_full` said yes."""
    return DiskFullError(folder, free_bytes(folder))


def mount_point(path: Path) -> Path:
    """The mount point of the file system that holds `path` (to say which disk is full)."""
    current = _existing(path).resolve()
    while not os.path.ismount(current) and current != current.parent:
        current = current.parent
    return current


def _existing(path: Path) -> Path:
    """`path` or its nearest existing parent."""
    current = Path(path).absolute()
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def _size(n: int) -> str:
    size, unit = float(n), "bytes"
    for bigger in ("KiB", "MiB", "GiB", "TiB"):
        if size < 1024:
            break
        size, unit = size / 1024, bigger
    return f"{n} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
