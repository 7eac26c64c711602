"""The BM25 keyword index (bm25s + Snowball stemming for Russian and English), kept in step with Chroma."""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from functools import lru_cache
from pathlib import Path

_WORD = re.compile(r"\d+(?:[.,]\d+)*|[^\W\d_]+(?:[-'][^\W\d_]+)*", re.U)
_CYRILLIC = re.compile(r"[а-яё]")
STOPWORDS = set(
    """a an and are as at be but by can do does for from has have how i if in into is it its of on or so than that the
    their then there these this to was were what when where which who why will with would you your me my we our
    и в во не что он на я с со как а то все она так его но да ты к у же вы за бы по только ее мне было вот от меня
    еще нет о из ему теперь когда даже ну вдруг ли если уже или ни быть был него до вас нибудь опять уж вам ведь там
    потом себя ничего ей может они тут где есть надо ней для мы тебя их чем была сам чтоб без будто чего раз тоже
    себе под будет ж тогда кто этот того потому этого какой совсем ним здесь этом один почти мой тем чтобы нее
    сейчас были куда зачем всех никогда можно при наконец два об другой хоть после над больше тот через эти нас про
    всего них какая много разве три эту моя впрочем хорошо свою этой перед иногда лучше чуть том нельзя такой им
    более всегда конечно всю между это как какие каких""".split()
)


@lru_cache(maxsize=2)
def _stemmer(lang: str):
    import Stemmer

    return Stemmer.Stemmer(lang)


def tokenize(text: str) -> list[str]:
    """Lower-cased, stemmed word tokens; Cyrillic words get the Russian stemmer, others the English one.

    Example: 'LoRA сокращает 10,000 параметров' -> ['lora', 'сокраща', '10000', 'параметр'].
    """
    out = []
    for w in _WORD.findall(text.lower().replace("ё", "е")):
        if w[0].isdigit():
            out.append(re.sub(r"(?<=\d),(?=\d{3}\b)", "", w))
            continue
        if w in STOPWORDS or len(w) < 2:
            continue
        out.append(_stemmer("russian" if _CYRILLIC.search(w) else "english").stemWord(w))
    return out


def same_word(a: str, b: str) -> bool:
    """Two Russian stems of one word: the stemmer cuts 'память' to 'памя' but 'памятью' to 'памят', and 'обучать' to
    'обуча' but 'обучение' to 'обучен'. Example: ('памя', 'памят') -> True; ('модел', 'модул') -> False."""
    if a == b:
        return True
    if len(a) < 4 or len(b) < 4 or not _CYRILLIC.match(a) or not _CYRILLIC.match(b):
        return False
    common = len(os.path.commonprefix([a, b]))
    return common >= 4 and common >= min(len(a), len(b)) - 1


def shared_words(asked: set[str], tokens: set[str]) -> frozenset[str]:
    """The `asked` stems that `tokens` holds, Russian ones by same_word. Example: ({'памят', 'rag'}, {'памя'}) ->
    {'памят'}."""
    exact = asked & tokens
    return frozenset(exact | {q for q in asked - exact if _CYRILLIC.match(q) and any(same_word(q, w) for w in tokens)})


class KeywordIndex:
    """bm25s over chunk texts, saved with its chunk ids and the collection fingerprint it was built from.

    Shared by request threads: `load()` is cheap when nothing changed (one stat of meta.json), swaps the index
    only when its fingerprint changed, and does so under a lock, so a search never sees one index's model with
    another's ids. A damaged meta.json reads as "no index", so the next ingest rebuilds it.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.ids: list[str] = []
        self.fingerprint: str | None = None
        self._bm25 = None
        self._stamp: tuple | None = None  # meta.json's (inode, size, mtime) when last read
        self._lock = threading.RLock()

    @property
    def meta_path(self) -> Path:
        return self.folder / "meta.json"

    def _stat(self) -> tuple | None:
        try:
            st = self.meta_path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _read_meta(self) -> tuple[list[str], str | None]:
        """(ids, fingerprint); ([], None) when meta.json is missing or damaged (then the fingerprint never matches)."""
        try:
            meta = json.loads(self.meta_path.read_text(encoding="utf-8"))
            ids, fingerprint = meta["ids"], meta["fingerprint"]
            if isinstance(ids, list) and all(isinstance(i, str) for i in ids) and isinstance(fingerprint, str):
                return ids, fingerprint
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return [], None

    def load(self) -> "KeywordIndex":
        with self._lock:
            stamp = self._stat()
            if stamp is not None and stamp == self._stamp:
                return self
            ids, fingerprint = self._read_meta()
            if fingerprint != self.fingerprint or ids != self.ids:
                self.ids, self.fingerprint, self._bm25 = ids, fingerprint, None
            self._stamp = stamp
        return self

    def build(self, ids: list[str], texts: list[str], fingerprint: str) -> None:
        """Rebuild from scratch and save atomically (a half-written index is never read)."""
        import bm25s

        tmp = self.folder.with_name(self.folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        bm25 = None
        if ids:
            bm25 = bm25s.BM25()
            bm25.index([tokenize(t) or ["_"] for t in texts], show_progress=False)
            bm25.save(str(tmp / "bm25"))
        (tmp / "meta.json").write_text(json.dumps({"ids": ids, "fingerprint": fingerprint}))
        old = self.folder.with_name(self.folder.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        with self._lock:
            if self.folder.exists():
                self.folder.rename(old)
            tmp.rename(self.folder)
            self.ids, self.fingerprint, self._bm25, self._stamp = ids, fingerprint, bm25, self._stat()
        shutil.rmtree(old, ignore_errors=True)

    def _model(self):
        """The bm25s model for `self.ids`, loaded once per fingerprint. Caller holds the lock."""
        if self._bm25 is None and self.ids:
            import bm25s

            for attempt in range(5):
                try:
                    model = bm25s.BM25.load(str(self.folder / "bm25"))
                except (OSError, ValueError):
                    model = None  # another process is swapping the folder in: read it again in a moment
                stamp = self._stat()
                if model is not None and stamp == self._stamp:
                    self._bm25 = model
                    break
                time.sleep(0.05 * (attempt + 1))
                self._stamp = None
                self.load()  # the index changed under us: take the new ids with the new model
                if not self.ids:
                    break
        return self._bm25

    def search(self, query: str, k: int, allowed: set[str] | None = None) -> list[tuple[str, float]]:
        """(chunk id, score) best first; `allowed` keeps only those ids (filters)."""
        tokens = tokenize(query)
        if not tokens:
            return []
        with self._lock:
            model, ids = self._model(), self.ids
        if model is None:
            return []
        import numpy as np

        scores = model.get_scores(tokens)
        order = np.argsort(-scores)
        out = []
        for i in order:
            if scores[i] <= 0 or len(out) >= k:
                break
            cid = ids[int(i)]
            if allowed is None or cid in allowed:
                out.append((cid, float(scores[i])))
        return out
