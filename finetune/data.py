"""Training data: questions -> deduplicated, eval-disjoint RAFT examples -> train/validation JSONL and a data card."""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from serve.evidence import parse_answer
from serve.prompt import NO_ANSWER

from .base import file_sha256, load_tokenizer
from .errors import FinetuneError
from .generate import GeneratorOptions, generate_questions
from .overlap import EvalGuard, dedupe
from .questions import Question, load_questions
from .raft import RaftBuilder

TRAIN, VALIDATION, CARD = "train.jsonl", "validation.jsonl", "data_card.json"


@dataclass
class DataCard:
    folder: str
    train: int
    validation: int
    kinds: dict[str, int]
    languages: dict[str, int]
    sources: dict[str, int]
    oracle_drop_fraction: float
    distractors: int
    max_seq_len: int
    seed: int
    tokenizer: str
    refusal_share: float = 0.0  # share of targets that decline (the unanswerable questions only)
    quoted_share: float = 0.0  # share of targets that quote evidence (the oracle examples)
    target_tokens: dict[str, int] = field(default_factory=dict)  # mean, p95, max: what evals.max_tokens must fit
    dropped: dict[str, int] = field(default_factory=dict)
    dropped_eval_ids: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    data_hash: str = ""

    def text(self) -> str:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.kinds.items()))
        dropped = ", ".join(f"{k} {v}" for k, v in sorted(self.dropped.items())) or "none"
        return (f"examples: {self.train} train, {self.validation} validation ({kinds}); languages {self.languages}\n"
                f"targets: {self.quoted_share:.1%} quote evidence, {self.refusal_share:.1%} refuse; "
                f"tokens {self.target_tokens}\n"
                f"dropped: {dropped}; P = {self.oracle_drop_fraction}; data hash {self.data_hash[:12]}\n"
                f"written to {self.folder}")


def default_folder(settings) -> Path:
    return settings.data_dir / "finetune"


def data_hash(folder: Path) -> str:
    """The digest a run records: train.jsonl then validation.jsonl."""
    return file_sha256([Path(folder) / TRAIN, Path(folder) / VALIDATION])


def read_split(folder: Path, name: str = TRAIN) -> list[dict]:
    path = Path(folder) / name
    if not path.is_file():
        raise FinetuneError(f"no training data at {path}: run `ftatlas finetune data` first")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class _MemoEmbedder:
    """The real embedder, remembering single-query vectors: each question is retrieved twice (oracle, distractors)."""

    def __init__(self, inner):
        self.inner, self.memo = inner, {}

    def encode(self, texts, show_progress: bool = False):
        if len(texts) != 1:
            return self.inner.encode(texts, show_progress)
        if texts[0] not in self.memo:
            self.memo[texts[0]] = self.inner.encode(texts)
        return self.memo[texts[0]]

    def __getattr__(self, name):
        return getattr(self.inner, name)


def eval_guard(settings) -> EvalGuard:
    """Every eval question, of the dev and the held-out set: no training example may duplicate one of them."""
    files = [settings.path(settings.evals.questions), settings.path(settings.evals.heldout)]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise FinetuneError(f"eval questions {missing[0]} not found: training data must be checked against them")
    return EvalGuard.from_file(*files)


def build_data(settings, out: Path | None = None, *, questions: list[Question] | None = None,
               generator: GeneratorOptions | None = None, tokenizer=None, embedder=None, progress: bool = True) -> DataCard:
    """Write train.jsonl, validation.jsonl and data_card.json under `out` (default data_dir/finetune)."""
    from serve.retrieval import Retriever

    ft = settings.finetune
    out = Path(out) if out else default_folder(settings)
    qs = list(questions) if questions is not None else load_questions(settings.path(ft.train_questions))
    guard = eval_guard(settings)
    if embedder is None:
        from ingest.embedder import Embedder

        embedder = Embedder(settings.ingest.embed_model, settings.ingest.device, settings.ingest.embed_batch_size)
    retriever = Retriever(settings, _MemoEmbedder(embedder))
    if retriever.chunk_count() == 0:
        raise FinetuneError("the index is empty: run `ftatlas ingest` before `ftatlas finetune data`")
    if generator is not None:
        qs += generate_questions(settings, generator)

    dropped: Counter = Counter()
    kept = [qs[i] for i in dedupe([q.question for q in qs])]
    dropped["duplicate"] = len(qs) - len(kept)
    clean, eval_ids = [], []
    for q in kept:
        hit = guard.match(q.question)
        if hit:
            eval_ids.append(hit)
            dropped["eval overlap"] += 1
        else:
            clean.append(q)

    rng = random.Random(ft.seed)
    answerable = sorted(q.id for q in clean if q.answerable)
    no_oracle = set(rng.sample(answerable, round(ft.oracle_drop_fraction * len(answerable))))
    tok = tokenizer or load_tokenizer(settings)

    def count_tokens(messages: list[dict]) -> int:
        return len(tok(tok.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"])

    builder = RaftBuilder(retriever, count_tokens, distractors=ft.distractors, max_seq_len=ft.max_seq_len,
                          seed=ft.seed, mode=settings.retrieval.mode)
    examples = []
    for q in _progress(clean, progress):
        ex, why = builder.build(q, q.id in no_oracle)
        if ex is None:
            dropped[why] += 1
        else:
            examples.append(ex)
    leaked = [ex.id for ex in examples if guard.match(ex.question)]
    if leaked:  # cannot happen after the filter above; refuse rather than write a leaking set
        raise FinetuneError(f"examples {leaked} duplicate eval questions")

    examples.sort(key=lambda ex: ex.id)
    random.Random(ft.seed + 1).shuffle(examples)
    n_val = round(ft.validation_fraction * len(examples))
    n_val = max(n_val, 1) if ft.validation_fraction > 0 and len(examples) > 1 else n_val
    splits = {VALIDATION: examples[:n_val], TRAIN: examples[n_val:]}
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():  # each file renamed into place once whole: a failure keeps the previous one
        tmp = out / f".{name}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                for ex in rows:
                    f.write(json.dumps(ex.row(), ensure_ascii=False) + "\n")
            os.replace(tmp, out / name)
        finally:
            tmp.unlink(missing_ok=True)
    card = DataCard(
        folder=str(out), train=len(splits[TRAIN]), validation=len(splits[VALIDATION]),
        kinds=dict(Counter(ex.kind for ex in examples)), languages=dict(Counter(ex.language for ex in examples)),
        sources=dict(Counter(ex.source.split(":")[0] for ex in examples)), oracle_drop_fraction=ft.oracle_drop_fraction,
        distractors=ft.distractors, max_seq_len=ft.max_seq_len, seed=ft.seed,
        tokenizer=getattr(tok, "name_or_path", "") or type(tok).__name__,
        refusal_share=round(_share(examples, is_refusal), 4), quoted_share=round(_share(examples, is_quoted), 4),
        target_tokens=_spread([len(tok(ex.messages[-1]["content"], add_special_tokens=False)["input_ids"])
                               for ex in examples]),
        dropped={k: v for k, v in dropped.items() if v}, dropped_eval_ids=sorted(set(eval_ids)),
        files={name: file_sha256([out / name]) for name in (TRAIN, VALIDATION)}, data_hash=data_hash(out),
    )
    (out / f".{CARD}.tmp").write_text(json.dumps(asdict(card), indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(out / f".{CARD}.tmp", out / CARD)
    return card


def is_refusal(ex) -> bool:
    """Whether an example's target declines. Example: a target '<ANSWER>: The passages do not contain ...' -> True."""
    return parse_answer(ex.messages[-1]["content"])[1] in NO_ANSWER.values()


def is_quoted(ex) -> bool:
    return bool(parse_answer(ex.messages[-1]["content"])[0])


def _spread(values: list[int]) -> dict[str, int]:
    """Example: [10, 20, 30] -> {'mean': 20, 'p95': 30, 'max': 30}."""
    if not values:
        return {}
    ranked = sorted(values)
    return {"mean": round(sum(values) / len(values)), "p95": ranked[min(len(ranked) - 1, int(0.95 * len(ranked)))],
            "max": ranked[-1]}


def _share(examples: list, test) -> float:
    return sum(map(test, examples)) / len(examples) if examples else 0.0


def _progress(items: list, on: bool):
    if not on:
        return items
    from tqdm import tqdm

    return tqdm(items, desc="building examples", unit="q")
