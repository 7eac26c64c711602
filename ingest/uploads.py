"""Uploaded documents, from the API and the UI alike: a checked name under <data_dir>/uploads, swapped in only if it ingests."""

from __future__ import annotations

import os
import uuid
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import BinaryIO

from .errors import UploadError, UploadTooLarge
from .loaders import SUFFIXES
from .lock import index_lock
from .pipeline import Summary, ingest

MAX_NAME_BYTES = 200  # file systems allow 255; the rest is left for the temporary names beside it
MIB = 2**20


def upload_name(name: str) -> str:
    """The file name an upload is stored under; UploadError when `name` cannot be one.

    Example: 'C:\\Users\\a\\notes.md' -> 'notes.md'; '..' -> UploadError; 'x' * 300 + '.md' -> UploadError.
    """
    base = PureWindowsPath(PurePosixPath(name or "").name).name.strip()
    if base in ("", ".", "..") or base.startswith("."):
        raise UploadError(f"{name!r} is not a usable file name")
    if any(ord(c) < 32 or c == "\x7f" for c in base):
        raise UploadError(f"{name!r}: control characters in the file name")
    if len(base.encode()) > MAX_NAME_BYTES:
        raise UploadError(f"file name too long: {len(base.encode())} bytes (at most {MAX_NAME_BYTES})")
    if Path(base).suffix.lower() not in SUFFIXES:
        raise UploadError(f"{base}: unsupported type; upload one of {', '.join(sorted(SUFFIXES))}")
    return base


def upload_folder(settings) -> Path:
    return settings.data_dir / "uploads"


def add_upload(settings, name: str, data: BinaryIO, max_mb: float, embedder=None) -> Summary:
    """Store an upload as <data_dir>/uploads/<name> and ingest it; a re-upload replaces the earlier version.

    The bytes go to a unique temporary file first; the earlier version is kept as a hard link until the new one
    has ingested, and put back when it fails, so a bad re-upload leaves the earlier document whole and served.
    """
    base = upload_name(name)
    folder = upload_folder(settings)
    folder.mkdir(parents=True, exist_ok=True)
    target, tag = folder / base, uuid.uuid4().hex[:12]
    tmp, backup = folder / f".{tag}.part", folder / f".{tag}.old"
    try:
        _save(data, tmp, int(max_mb * MIB), base, max_mb)
        with index_lock(settings):  # the swap and its ingest are one step for other writers
            had = target.is_file()
            if had:
                os.link(target, backup)
            os.replace(tmp, target)
            try:
                summary = ingest(settings, [target], embedder=embedder, progress=False)
            except BaseException:
                _put_back(target, backup, had)
                raise
            if summary.failed:
                _put_back(target, backup, had)
                raise UploadError("; ".join(f"{base}: {reason}" for _, reason in summary.failed))
            return summary
    finally:
        tmp.unlink(missing_ok=True)
        backup.unlink(missing_ok=True)


def _save(data: BinaryIO, tmp: Path, max_bytes: int, base: str, max_mb: float) -> None:
    size = 0
    with open(tmp, "wb") as out:
        while block := data.read(MIB):
            size += len(block)
            if size > max_bytes:
                raise UploadTooLarge(f"{base}: over the upload limit of {max_mb:g} MiB (serve.max_upload_mb)")
            out.write(block)
        out.flush()
        os.fsync(out.fileno())


def _put_back(target: Path, backup: Path, had: bool) -> None:
    if had:
        os.replace(backup, target)
    else:
        target.unlink(missing_ok=True)

