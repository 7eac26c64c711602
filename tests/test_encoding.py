"""Encoding: UTF-8 read through Mac Roman, cp1252 or latin-1 is repaired exactly; clean text is left alone; bad bytes are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.encoding import decode_document, undo_mojibake
from ingest.errors import DocumentError
from ingest.loaders import load_file

from conftest import FIXTURES, REPO

RU_EN = (
    "# Ёмкость модели и LoRA\n"
    "Полная адаптация обучает все веса; LoRA — только низкоранговые матрицы.\n"
    "Работа с данными: Ёлка, Эхо, Наука, Ответ.\n"
    "Full fine-tuning updates every weight – LoRA trains a small delta (√d params).\n"
)

# Bytes that cp1252 leaves undefined; a "sloppy" decoder passes them through as U+00xx (as ftfy's codecs do).
CP1252_UNDEFINED = {0x81, 0x8D, 0x8F, 0x90, 0x9D}


def sloppy_cp1252(data: bytes) -> str:
    """What a sloppy cp1252 reader shows. Example: 'Ё'.encode() == b'\\xd0\\x81' -> 'Ð\\x81'."""
    out = []
    for b in data:
        try:
            out.append(bytes([b]).decode("cp1252"))
        except UnicodeDecodeError:
            out.append(chr(b))
    return "".join(out)


def damage(text: str, codec: str) -> str:
    raw = text.encode("utf-8")
    return sloppy_cp1252(raw) if codec == "cp1252" else raw.decode(codec)


def test_shipped_seed_decodes_to_the_atlas():
    raw = (FIXTURES / "atlas_seed_mojibake.txt").read_bytes()
    atlas = (REPO / "corpus" / "atlas.md").read_text(encoding="utf-8")
    assert raw.decode("utf-8") != atlas  # the seed really is damaged
    assert decode_document(raw, "atlas_seed_mojibake.txt") == atlas


@pytest.mark.parametrize("codec", ["mac_roman", "cp1252", "latin-1"])
def test_damaged_russian_and_english_is_repaired_exactly(codec):
    broken = damage(RU_EN, codec)
    assert broken != RU_EN
    assert "Полная" not in broken
    if codec == "cp1252":
        # 'Ё' (D0 81), 'Н' (D0 9D), 'А'-range bytes hit cp1252's holes: the repair must cope with them.
        assert any(ord(ch) in CP1252_UNDEFINED for ch in broken)

    fixed, used = undo_mojibake(broken)
    assert fixed == RU_EN
    assert used == codec
    assert decode_document(broken.encode("utf-8"), "notes.md") == RU_EN


def test_clean_utf8_with_dashes_roots_and_accents_is_unchanged():
    clean = "Café – résumé: the cost grows as √n, not n² — «ёж» and naïve tokens.\n"
    assert undo_mojibake(clean) == (clean, None)
    assert decode_document(clean.encode("utf-8"), "clean.md") == clean


def test_only_some_lines_damaged_are_repaired_line_by_line():
    lines = [
        "Обычная строка на русском, без повреждений.\n",
        "Полная карта методов адаптации\n",
        "Plain English with an en dash – and √2.\n",
        "Ёмкость и Наука важны для Адаптации.\n",
    ]
    mixed = [lines[0], damage(lines[1], "mac_roman"), lines[2], damage(lines[3], "cp1252")]
    assert mixed[1] != lines[1] and mixed[3] != lines[3]

    text = decode_document("".join(mixed).encode("utf-8"), "mixed.md")
    assert text == "".join(lines)


def test_text_damaged_twice_is_repaired_fully():
    twice = damage(damage("Полная адаптация модели", "mac_roman"), "mac_roman")
    assert undo_mojibake(twice)[0] == "Полная адаптация модели"


def test_cp1251_bytes_are_rejected_naming_the_file_and_reason():
    data = "Привет, это не UTF-8, а cp1251.".encode("cp1251")
    with pytest.raises(DocumentError) as err:
        decode_document(data, "legacy/notes.txt")
    assert err.value.name == "legacy/notes.txt"
    assert "not UTF-8" in err.value.reason
    assert "legacy/notes.txt" in str(err.value)


@pytest.mark.parametrize("data", [b"", b"  \n\t\n"])
def test_empty_file_is_rejected(data):
    with pytest.raises(DocumentError, match="empty file") as err:
        decode_document(data, "empty.md")
    assert err.value.name == "empty.md"


def test_binary_with_md_extension_is_rejected(tmp_path: Path):
    fake = tmp_path / "image.md"
    fake.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00" + bytes(range(256)))
    with pytest.raises(DocumentError) as err:
        load_file(fake)
    assert err.value.name == str(fake)
    assert "binary" in err.value.reason


def test_utf16_with_bom_is_decoded():
    text = "Полная адаптация – LoRA\n"
    assert decode_document(text.encode("utf-16"), "wide.txt") == text


def test_crlf_line_ends_become_newlines():
    assert decode_document("a\r\nб\rc\n".encode("utf-8"), "dos.txt") == "a\nб\nc\n"
