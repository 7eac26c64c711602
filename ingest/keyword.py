"""The BM25 keyword index (bm25s + Snowball stemming for Russian and English), kept in step with Chroma."""

from __future__ import annotations

import json
import re
import shutil
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


class KeywordIndex:
    """bm25s over chunk texts, saved with its chunk ids and the collection fingerprint it was built from."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.ids: list[str] = []
        self.fingerprint: str | None = None
        self._bm25 = None

    @property
    def meta_path(self) -> Path:
        return self.folder / "meta.json"

    def load(self) -> "KeywordIndex":
        if self.meta_path.is_file():
            meta = json.loads(self.meta_path.read_text())
            self.ids, self.fingerprint = meta["ids"], meta["fingerprint"]
            self._bm25 = None
        return self

    def build(self, ids: list[str], texts: list[str], fingerprint: str) -> None:
        """Rebuild from scratch and save atomically (a half-written index is never read)."""
        import bm25s

        tmp = self.folder.with_name(self.folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if ids:
            bm25 = bm25s.BM25()
            bm25.index([tokenize(t) or ["_"] for t in texts], show_progress=False)
            bm25.save(str(tmp / "bm25"))
        (tmp / "meta.json").write_text(json.dumps({"ids": ids, "fingerprint": fingerprint}))
        old = self.folder.with_name(self.folder.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if self.folder.exists():
            self.folder.rename(old)
        tmp.rename(self.folder)
        shutil.rmtree(old, ignore_errors=True)
        self.ids, self.fingerprint, self._bm25 = ids, fingerprint, None

    def _model(self):
        if self._bm25 is None and self.ids:
            import bm25s

            self._bm25 = bm25s.BM25.load(str(self.folder / "bm25"))
        return self._bm25

    def search(self, query: str, k: int, allowed: set[str] | None = None) -> list[tuple[str, float]]:
        """(chunk id, score) best first; `allowed` keeps only those ids (filters)."""
        model = self._model()
        tokens = tokenize(query)
        if model is None or not tokens:
            return []
        import numpy as np

        scores = model.get_scores(tokens)
        order = np.argsort(-scores)
        out = []
        for i in order:
            if scores[i] <= 0 or len(out) >= k:
                break
            cid = self.ids[int(i)]
            if allowed is None or cid in allowed:
                out.append((cid, float(scores[i])))
        return out
