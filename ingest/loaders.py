"""Files -> (title, Markdown-ish text): Markdown, plain text, HTML and PDF, each checked and repaired."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from .encoding import decode_document
from .errors import DocumentError

TEXT_SUFFIXES = {".md", ".markdown", ".txt", ".text", ".rst"}
HTML_SUFFIXES = {".html", ".htm"}
PDF_SUFFIXES = {".pdf"}
SUFFIXES = TEXT_SUFFIXES | HTML_SUFFIXES | PDF_SUFFIXES


@dataclass
class Loaded:
    title: str
    text: str
    meta: dict


def read_bytes(path: Path) -> bytes:
    """The file's bytes, or a DocumentError when it is not a readable regular file."""
    if not path.exists():
        raise DocumentError(str(path), "no such file")
    if not path.is_file():
        raise DocumentError(str(path), "not a regular file (a directory or special file)")
    try:
        return path.read_bytes()
    except OSError as e:
        raise DocumentError(str(path), f"cannot be read: {e.strerror or e}") from e


def split_front_matter(text: str) -> tuple[dict, str]:
    """Split YAML front matter off a Markdown text. Example: '---\\ntitle: X\\n---\\nBody' -> ({'title': 'X'}, 'Body')."""
    m = re.match(r"\A---\n(.*?)\n---\n?", text, re.S)
    if not m:
        return {}, text
    try:
        meta = yaml.safe_load(m.group(1)) or {}
    except yaml.YAMLError:
        return {}, text
    return (meta if isinstance(meta, dict) else {}), text[m.end():]


def _first_heading(text: str) -> str | None:
    m = re.search(r"^#\s+(.+)$", text, re.M)
    return m.group(1).strip() if m else None


def _load_text(path: Path, data: bytes) -> Loaded:
    text = decode_document(data, str(path))
    meta, body = split_front_matter(text)
    if meta.get("authors"):
        # Keep who wrote it and when searchable: front matter itself is not chunked.
        authors = ", ".join(map(str, meta["authors"]))
        ref = f"Authors: {authors} ({meta.get('year', '')})."
        if meta.get("arxiv"):
            ref += f" arXiv:{meta['arxiv']}."
        body = _insert_after_title(body, ref)
    title = str(meta.get("title") or _first_heading(body) or path.stem)
    if not body.strip():
        raise DocumentError(str(path), "no text after the front matter")
    return Loaded(title, body.strip() + "\n", meta)


def _insert_after_title(body: str, line: str) -> str:
    m = re.search(r"^#\s+.+$", body, re.M)
    if not m:
        return line + "\n\n" + body
    return body[: m.end()] + "\n\n" + line + body[m.end():]


def _load_html(path: Path, data: bytes) -> Loaded:
    from bs4 import BeautifulSoup

    text = decode_document(data, str(path))
    soup = BeautifulSoup(text, "html.parser")
    for tag in soup(["script", "style", "nav", "footer", "noscript"]):
        tag.decompose()
    title = (soup.title.string or "").strip() if soup.title and soup.title.string else ""
    for level in range(1, 7):
        for h in soup.find_all(f"h{level}"):
            h.replace_with(f"\n\n{'#' * level} {h.get_text(' ', strip=True)}\n\n")
    for p in soup.find_all(["p", "li", "tr", "br", "div"]):
        p.insert_after("\n")
    body = re.sub(r"\n{3,}", "\n\n", soup.get_text())
    body = "\n".join(line.strip() for line in body.splitlines())
    if not body.strip():
        raise DocumentError(str(path), "HTML without any text")
    return Loaded(title or _first_heading(body) or path.stem, body.strip() + "\n", {})


def _load_pdf(path: Path, data: bytes) -> Loaded:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    if not data.lstrip().startswith(b"%PDF"):
        raise DocumentError(str(path), "not a PDF (no %PDF header)")
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        pages = [(page.extract_text() or "") for page in reader.pages]
        title = (reader.metadata.title if reader.metadata else None) or path.stem
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, OSError) as e:
        raise DocumentError(str(path), f"corrupt PDF: {e}") from e
    body = "\n\n".join(f"## Page {i}\n\n{p.strip()}" for i, p in enumerate(pages, 1) if p.strip())
    if not body:
        raise DocumentError(str(path), "PDF without extractable text (scanned images?)")
    return Loaded(str(title), f"# {title}\n\n{body}\n", {})


def load_file(path: Path) -> Loaded:
    """Load one document, raising DocumentError (with the file's name and the reason) when it cannot be used."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DocumentError(str(path), f"unsupported file type {suffix or '(none)'}; use .md, .txt, .html or .pdf")
    data = read_bytes(path)
    if suffix in PDF_SUFFIXES:
        return _load_pdf(path, data)
    if suffix in HTML_SUFFIXES:
        return _load_html(path, data)
    return _load_text(path, data)
