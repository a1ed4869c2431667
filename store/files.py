"""Files that hold captured data (the store, exports, reports): created readable and writable by their owner only."""

from __future__ import annotations

import os
import stat
from typing import IO, Any, BinaryIO, Literal, TextIO, overload

PRIVATE_MODE = 0o600


def create_private(path: str) -> None:
    """Create `path` empty with mode 0600 unless it exists (an existing file keeps the mode its owner gave it).

    SQLite gives the -wal and -shm files it creates next to a database the database file's mode, so creating the
    database this way first keeps all three private whatever the umask.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_MODE)
    except FileExistsError:
        return
    os.close(fd)


@overload
def open_private(path: str, mode: Literal["w"] = "w", **kwargs: Any) -> TextIO: ...
@overload
def open_private(path: str, mode: Literal["wb"], **kwargs: Any) -> BinaryIO: ...
def open_private(path: str, mode: str = "w", **kwargs: Any) -> IO[Any]:
    """Open a file to write captured data to: created 0600, and a regular file being overwritten is made 0600.

    Devices and pipes (`/dev/stdout`, a FIFO) keep their mode. `mode` is "w" or "wb"; keyword arguments go to open.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"open_private writes files, not {mode!r}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_MODE)
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            os.fchmod(fd, PRIVATE_MODE)
        return open(fd, mode, **kwargs)
    except BaseException:
        os.close(fd)
        raise
