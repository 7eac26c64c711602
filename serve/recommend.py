"""A reached leaf -> a recommendation that explains itself: path, table rows, cards, why-nots, next step, each cited [n]."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ingest.decision import Method

from .advisor import SAY, Advisor, Walk
from .prompt import split_sentences
from .retrieval import Passage, RetrievalOptions, Retriever

# How a card's "when to choose it, and when not" sentence argues against its method (the cards are English):
# an outright "avoid/prefer X/move to" first, then any sentence with a negation that does not recommend.
_AGAINST_STRONG = re.compile(r"^(?:Avoid|Do not|Don't|Prefer|Move to|Be careful when|It is not|It is less)\b|"
                             r"\bis not the right\b|\bless useful\b", re.I)
_AGAINST = re.compile(r"\b(?:not|cannot|can't|avoid|unless|falls? short|overfit\w*)\b", re.I)
_FOR = re.compile(r"^(?:Choose|Use|Be careful not)\b", re.I)
_METHOD_LINE = re.compile(r"\*\*Method:\*\*\s*([^·\n]+)")
WORDS = {
    "en": {"path": "Path", "table": "The atlas's table", "cards": "What each method trains and costs",
           "why_not": "Why not the other branches", "next": "Next step the atlas suggests", "no_card": "no method card in the corpus",
           "cols": ["essence", "area of use", "example tool"], "led": "answering {said} would have led to «{to}»",
           "answered": "you answered {said} to «{q}»", "placed": "the atlas places it at: {area}"},
    "ru": {"path": "Путь", "table": "Таблица атласа", "cards": "Что обучает и сколько стоит каждый метод",
           "why_not": "Почему не другие ветви", "next": "Следующий шаг по атласу", "no_card": "карточки метода в корпусе нет",
           "cols": ["суть", "область применения", "пример инструмента"], "led": "ответ «{said}» привёл бы к вопросу «{to}»",
           "answered": "вы ответили «{said}» на вопрос «{q}»", "placed": "атлас относит его к: {area}"},
}


@dataclass
class Cited:
    """Passages numbered in the order the answer first cites them."""

    passages: list[Passage] = field(default_factory=list)

    def cite(self, p: Passage) -> str:
        for i, q in enumerate(self.passages, 1):
            if q.id == p.id:
                return f"[{i}]"
        self.passages.append(p)
        return f"[{len(self.passages)}]"

    def sources(self) -> list[dict]:
        return [p.as_source(i) for i, p in enumerate(self.passages, 1)]


class Recommender:
    """Finds every part of a recommendation through the retriever, restricted to the documents it belongs to."""

    def __init__(self, advisor: Advisor, retriever: Retriever):
        self.advisor, self.retriever = advisor, retriever
        self.doc = advisor.chart.doc_id

    def _find(self, query: str, doc_ids: list[str], top_k: int = 8) -> list[Passage]:
        return self.retriever.retrieve(query, RetrievalOptions(mode="hybrid", top_k=top_k, doc_ids=doc_ids))

    def chart_passage(self, leaf: str) -> Passage | None:
        text = self.advisor.chart.nodes[leaf]["text"]
        found = self._find(text, [self.doc], 10)
        return next((p for p in found if text in p.text), found[0] if found else None)

    def table_row(self, row: str) -> tuple[Passage, list[str]] | None:
        """The atlas passage holding the method's table row, and the row's cells after the first."""
        for p in self._find(row, [self.doc], 10):
            for line in p.text.splitlines():
                cells = [c.strip(" *") for c in line.strip().strip("|").split("|")]
                if len(cells) > 1 and cells[0] == row:
                    return p, cells[1:]
        return None

    def card(self, name: str, cards: list[str]) -> str | None:
        """Which of a family's cards is about `name`: the one whose "Method:" line names it, else the best passage's.

        Example: 'LoRA' among the LoRA / QLoRA family -> 'lora' ("Method: LoRA (low-rank adaptation)"), not
        'lora-vs-full-ft' ("Method: LoRA vs full fine-tuning"), whatever the ranking.
        """
        found = self._find(f"Method: {name}", cards, 10 * len(cards)) if cards else []
        if not found:
            return None
        want = name.casefold()

        def named(p: Passage) -> int:
            m = _METHOD_LINE.search(p.text)
            if not m:
                return 0
            line = m.group(1).strip().casefold()
            head = line.split(" (")[0].strip()
            words = re.findall(r"[\w-]+", line)
            return 3 if head == want else 2 if head.startswith(want) else 1 if want in words else 0

        return max(found, key=named).doc_id  # max keeps the first of equals: the retriever's order

    def card_part(self, doc_id: str, query: str, section: str) -> Passage | None:
        found = self._find(query, [doc_id], 10)
        return next((p for p in found if section.lower() in p.section.lower()), found[0] if found else None)

    def why_not(self, method: Method) -> tuple[str, Passage] | None:
        name = method.names[0]
        doc = self.card(name, method.cards)
        if doc is None:
            return None
        p = self.card_part(doc, f"when not to choose {name}: limitations and drawbacks", "when not")
        if p is None:
            return None
        sentences = split_sentences(p.text)
        strong = [s for s in sentences if _AGAINST_STRONG.search(s)]
        weak = [s for s in sentences if _AGAINST.search(s) and not _FOR.search(s)]
        return (strong or weak or sentences or [p.text])[0], p

    def recommend(self, walk: Walk, language: str) -> dict:
        w, adv, chart = WORDS[language], self.advisor, self.advisor.chart
        cited, lines = Cited(), []
        leaf = walk.node
        chart_p = self.chart_passage(leaf)
        ref = lambda p: f" {cited.cite(p)}" if p else ""  # noqa: E731
        steps = "; ".join(f"{s.question} — {SAY[language][s.answer]}" for s in walk.path)
        lines.append(f"{w['path']}: {steps} → {adv.text(leaf, language)}{ref(chart_p)}.")

        methods_out, rows = [], []
        for m in chart.methods.get(leaf, []):
            found = self.table_row(m.row)
            if found:
                p, cells = found
                cols = "; ".join(f"{c}: {adv.cell(v, language)}" for c, v in zip(w["cols"], cells))
                rows.append(f"{m.row} — {cols}{ref(p)}.")
            cards = []
            for name in m.names:
                doc = self.card(name, m.cards)
                if doc and doc not in cards:
                    cards.append(doc)
            methods_out.append({"name": m.row, "called": m.names, "cards": cards})
        if rows:
            lines.append(f"{w['table']}: " + " ".join(rows))

        card_lines = []
        for m in methods_out:
            if not m["cards"]:
                card_lines.append(f"{m['name']}: {w['no_card']}.")
            for doc in m["cards"]:
                how = self.card_part(doc, f"{m['name']} how it works: what is trained", "how it works")
                knobs = self.card_part(doc, f"{m['name']} knobs and costs: memory, parameters", "knobs")
                for p, k in ((how, 2), (knobs, 3)):
                    if p is not None:
                        card_lines.append(f"{p.title}: {' '.join(split_sentences(p.text)[:k])}{ref(p)}")
        if card_lines:
            lines.append(f"{w['cards']}:\n" + "\n".join(f"- {c}" for c in card_lines))

        why = []
        for step, other in adv.not_taken(walk):
            said = SAY[language]["no" if step.answer == "yes" else "yes"]
            if not adv.is_leaf(other):
                why.append(f"{w['led'].format(said=said, to=adv.text(other, language))}{ref(chart_p)}.")
                continue
            head = f"{adv.text(other, language)}: {w['answered'].format(said=SAY[language][step.answer], q=step.question)}"
            reasons = []
            for m in chart.methods.get(other, []):
                got = self.why_not(m)
                if got:
                    reasons.append(f"{got[0]}{ref(got[1])}")
                else:
                    row = self.table_row(m.row)
                    if row and len(row[1]) > 1:
                        reasons.append(f"{w['placed'].format(area=adv.cell(row[1][1], language))}{ref(row[0])}")
            why.append(head + ("; " + " ".join(reasons) if reasons else ref(chart_p)))
        if why:
            lines.append(f"{w['why_not']}:\n" + "\n".join(f"- {x}" for x in why))

        nxt = [adv.text(n, language) for n in chart.next_steps.get(leaf, [])]
        if nxt:
            lines.append(f"{w['next']}: {', '.join(nxt)}{ref(chart_p)}.")
        return {"methods": methods_out, "answer": "\n\n".join(lines), "sources": cited.sources()}
