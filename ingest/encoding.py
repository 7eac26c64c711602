"""Bytes -> clean text: decode UTF-8 and undo mojibake (UTF-8 read as Mac Roman, cp1252 or latin-1)."""

from __future__ import annotations

import codecs

from .errors import DocumentError


def _sloppy_table(codec: str) -> dict[str, int]:
    """char -> byte for a single-byte codec, undefined bytes mapped through as U+00xx (ftfy's "sloppy" codecs)."""
    table = {}
    for b in range(256):
        try:
            ch = bytes([b]).decode(codec)
        except UnicodeDecodeError:
            ch = chr(b)
        table[ch] = b
    return table


# Tried in this order; only the codec that really caused the damage turns the text back into valid UTF-8.
_CODECS = {name: _sloppy_table(name) for name in ("mac_roman", "cp1252", "latin-1")}


def _reencode(text: str, table: dict[str, int]) -> bytes | None:
    try:
        return bytes(table[ch] for ch in text)
    except KeyError:
        return None


def undo_mojibake(text: str) -> tuple[str, str | None]:
    """Repair text whose UTF-8 bytes were decoded with a single-byte codec; returns (text, codec or None).

    Example: '–ü–æ–ª–Ω–∞—è' -> ('Полная', 'mac_roman'); 'café – √2' -> ('café – √2', None).
    Works on the whole text, and line by line where only some lines are damaged.
    """
    if text.isascii():
        return text, None
    for name, table in _CODECS.items():
        raw = _reencode(text, table)
        if raw is not None:
            try:
                fixed = raw.decode("utf-8")
            except UnicodeDecodeError:
                continue
            if fixed != text:
                again, _ = undo_mojibake(fixed)  # damage applied twice
                return again, name
    # Mixed documents: repair each damaged line on its own.
    lines = text.splitlines(keepends=True)
    if len(lines) > 1:
        out, used = [], None
        for line in lines:
            fixed, codec = undo_mojibake(line)
            out.append(fixed)
            used = used or codec
        if used:
            return "".join(out), used
    return text, None


def decode_document(data: bytes, name: str) -> str:
    """Decode a text file's bytes to clean text, or raise DocumentError naming the file and why.

    Example: 'Полная'.encode().decode('mac_roman').encode() -> 'Полная'.
    """
    if not data.strip():
        raise DocumentError(name, "empty file")
    if b"\x00" in data[:8192] and not data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise DocumentError(name, "binary content (NUL bytes), not text")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            text = data.decode("utf-16")
        except UnicodeDecodeError as e:
            raise DocumentError(name, f"broken UTF-16: {e.reason} at byte {e.start}") from e
    else:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise DocumentError(
                name, f"not UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}) and not a repairable mojibake"
            ) from e
    text, _ = undo_mojibake(text)
    return text.replace("\r\n", "\n").replace("\r", "\n")
