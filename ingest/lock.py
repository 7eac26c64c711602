"""One writer at a time: an fcntl lock file in the data folder around every ingest, upload and delete."""

from __future__ import annotations

import fcntl
import os
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from .errors import IndexBusy

_local = threading.local()  # the lock files this thread holds: nested calls (upload -> ingest) do not wait on themselves


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextmanager
def index_lock(settings, notify=_say, poll_s: float = 0.2):
    """Hold <data_dir>/index.lock; another process (or thread) that holds it makes this wait, saying so, up to
    ingest.lock_timeout_s, then raise IndexBusy. The lock dies with its process, so a killed ingest frees it."""
    path = settings.data_dir / "index.lock"
    held: set = _local.__dict__.setdefault("held", set())
    if str(path) in held:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _acquire(fd, path, settings.ingest.lock_timeout_s, notify, poll_s)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        held.add(str(path))
        try:
            yield
        finally:
            held.discard(str(path))
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _acquire(fd: int, path: Path, timeout_s: float, notify, poll_s: float) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    holder = _holder(path)
    notify(f"ftatlas: another ingest or delete{holder} is writing to {path.parent}; waiting up to {timeout_s:g} s")
    deadline = time.monotonic() + timeout_s
    while True:
        time.sleep(poll_s)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            notify("ftatlas: the index is free again; going on")
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise IndexBusy(f"gave up after {timeout_s:g} s waiting for {path}, held by another ingest or "
                                  f"delete{holder} (ingest.lock_timeout_s)") from None


def _holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        return ""
    return f" (process {pid})" if pid.isdigit() else ""
