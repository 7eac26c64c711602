"""The answer log: what each answer was made from, by completion id, and the ratings and corrections it received.

SQLite in the data folder, in WAL mode with synchronous=FULL: a committed answer or rating survives a restart, a
`kill -9` and a power cut. Each call opens its own connection, so threads and processes share the file safely.
"""

from __future__ import annotations

import functools
import hashlib
import json
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from .errors import ServeError

FILE = "answers.sqlite3"
SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    model TEXT NOT NULL,
    adapter TEXT,
    adapter_sha256 TEXT,
    question TEXT NOT NULL,
    language TEXT NOT NULL,
    messages TEXT NOT NULL,
    prompt TEXT NOT NULL,
    passages TEXT NOT NULL,
    answer TEXT NOT NULL,
    mode TEXT
);
CREATE INDEX IF NOT EXISTS answers_created ON answers(created);
CREATE TABLE IF NOT EXISTS feedback (
    answer_id TEXT NOT NULL REFERENCES answers(id) ON DELETE CASCADE,
    rater TEXT NOT NULL,
    rating INTEGER CHECK (rating IN (-1, 1)),
    correction TEXT,
    comment TEXT,
    created REAL NOT NULL,
    PRIMARY KEY (answer_id, rater)
);
"""
MAX_CORRECTION_CHARS = 8000
MAX_COMMENT_CHARS = 2000


class LogOff(ServeError):
    """serve.log_answers is off: there is no answer to rate."""

    status, code, type = 409, "answer_log_off", "invalid_request_error"


class UnknownAnswer(ServeError):
    status, code, type = 404, "answer_not_found", "invalid_request_error"


@dataclass
class Feedback:
    answer_id: str
    rater: str
    rating: int | None
    correction: str | None
    comment: str | None


def adapter_sha256(folder: Path | None) -> str | None:
    """The sha256 of an adapter's weights file, read once per file version. Example: None -> None."""
    if folder is None:
        return None
    weights = Path(folder) / "adapter_model.safetensors"
    try:
        return _file_sha256(str(weights), weights.stat().st_mtime_ns)
    except OSError:
        return None


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, mtime_ns: int) -> str:  # mtime_ns: a rewritten file is hashed again
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class AnswerLog:
    """Records answers and feedback; bounded to `max_rows` answers, the oldest unrated ones pruned first."""

    def __init__(self, path: Path, max_rows: int = 100_000):
        self.path = Path(path)
        self.max_rows = max_rows
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db, db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    @classmethod
    def of(cls, settings) -> "AnswerLog | None":
        """The configured log in the data folder, or None when serve.log_answers is off."""
        if not settings.serve.log_answers:
            return None
        return cls(log_path(settings), settings.serve.answer_log_max_rows)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("PRAGMA busy_timeout=30000")
        return db

    def record(self, answer: dict) -> None:
        """Store one answer: id, model, adapter, adapter_sha256, question, language, messages, prompt, passages, answer, mode."""
        row = {**answer, "created": answer.get("created") or time.time()}
        for key in ("messages", "prompt", "passages"):
            row[key] = json.dumps(row[key], ensure_ascii=False)
        with closing(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("INSERT OR REPLACE INTO answers (id, created, model, adapter, adapter_sha256, question, "
                           "language, messages, prompt, passages, answer, mode) VALUES (:id, :created, :model, :adapter, "
                           ":adapter_sha256, :question, :language, :messages, :prompt, :passages, :answer, :mode)", row)
                self._prune(db)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def _prune(self, db: sqlite3.Connection) -> None:
        over = db.execute("SELECT COUNT(*) FROM answers").fetchone()[0] - self.max_rows
        if over <= 0:
            return
        db.execute("DELETE FROM answers WHERE id IN (SELECT id FROM answers WHERE id NOT IN "
                   "(SELECT answer_id FROM feedback) ORDER BY created LIMIT ?)", (over,))
        over = db.execute("SELECT COUNT(*) FROM answers").fetchone()[0] - self.max_rows
        if over > 0:  # every remaining answer is rated: the oldest rated ones go
            db.execute("DELETE FROM answers WHERE id IN (SELECT id FROM answers ORDER BY created LIMIT ?)", (over,))

    def rate(self, fb: Feedback) -> dict:
        """Add or update one rater's feedback on an answer; fields left out (None) keep what that rater gave before.
        Raises UnknownAnswer for an id the log does not hold."""
        with closing(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                if db.execute("SELECT 1 FROM answers WHERE id = ?", (fb.answer_id,)).fetchone() is None:
                    raise UnknownAnswer(f"no answer with id {fb.answer_id!r} in the answer log (pruned, or never logged)")
                db.execute(
                    "INSERT INTO feedback (answer_id, rater, rating, correction, comment, created) VALUES (?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT(answer_id, rater) DO UPDATE SET rating = COALESCE(excluded.rating, rating), "
                    "correction = COALESCE(excluded.correction, correction), comment = COALESCE(excluded.comment, comment), "
                    "created = excluded.created",
                    (fb.answer_id, fb.rater, fb.rating, fb.correction, fb.comment, time.time()))
                stored = db.execute("SELECT rating, correction, comment FROM feedback WHERE answer_id = ? AND rater = ?",
                                    (fb.answer_id, fb.rater)).fetchone()
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return {"id": fb.answer_id, "rating": stored[0], "correction": stored[1], "comment": stored[2]}

    def answer(self, answer_id: str) -> dict | None:
        """One logged answer with its feedback rows, or None."""
        with closing(self._connect()) as db:
            db.row_factory = sqlite3.Row
            row = db.execute("SELECT * FROM answers WHERE id = ?", (answer_id,)).fetchone()
            if row is None:
                return None
            fb = db.execute("SELECT rater, rating, correction, comment FROM feedback WHERE answer_id = ? ORDER BY rater",
                            (answer_id,)).fetchall()
        return {**_decoded(row), "feedback": [dict(f) for f in fb]}

    def recent(self, n: int) -> list[dict]:
        """The `n` newest answers, newest first (without their feedback)."""
        with closing(self._connect()) as db:
            db.row_factory = sqlite3.Row
            rows = db.execute("SELECT * FROM answers ORDER BY created DESC LIMIT ?", (n,)).fetchall()
        return [_decoded(r) for r in rows]

    def rated(self) -> list[dict]:
        """Every answer that received feedback, oldest first, each with its feedback rows."""
        with closing(self._connect()) as db:
            db.row_factory = sqlite3.Row
            rows = db.execute("SELECT * FROM answers WHERE id IN (SELECT answer_id FROM feedback) ORDER BY created").fetchall()
            fb = db.execute("SELECT answer_id, rater, rating, correction, comment FROM feedback ORDER BY rater").fetchall()
        by_id: dict[str, list] = {}
        for f in fb:
            by_id.setdefault(f["answer_id"], []).append({k: f[k] for k in ("rater", "rating", "correction", "comment")})
        return [{**_decoded(r), "feedback": by_id.get(r["id"], [])} for r in rows]

    def counts(self) -> dict:
        with closing(self._connect()) as db:
            answers = db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
            feedback = db.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]
        return {"answers": answers, "feedback": feedback}


def log_path(settings) -> Path:
    """Where the answer log lives: <data_dir>/answers.sqlite3."""
    return settings.data_dir / FILE


def _decoded(row: sqlite3.Row) -> dict:
    out = dict(row)
    for key in ("messages", "prompt", "passages"):
        out[key] = json.loads(out[key])
    return out


def rater_of_key(key: str) -> str:
    """A rater named by the API key it used, without storing the key. Example: 's3cret' -> 'key:…' (12 hex digits)."""
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:12]
