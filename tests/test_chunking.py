"""Chunking follows the document: heading paths, whole tables and diagrams, token-sized text with overlap."""

from __future__ import annotations

import re

import pytest

from ingest.chunking import chunk_markdown
from ingest.loaders import load_file
from ingest.mermaid import render_edges

from conftest import REPO


@pytest.fixture(scope="module")
def count(embedder):
    return embedder.count_tokens


def test_section_is_the_heading_path(count):
    md = "# Atlas\nIntro.\n## LoRA\nLow rank.\n### Rank\nr is small.\n## RAG\nRetrieval.\n# Other\nElse.\n"
    got = {c.text: c.section for c in chunk_markdown(md, count)}
    assert got == {
        "Intro.": "Atlas",
        "Low rank.": "Atlas > LoRA",
        "r is small.": "Atlas > LoRA > Rank",
        "Retrieval.": "Atlas > RAG",
        "Else.": "Other",
    }


def test_heading_inside_a_code_fence_is_not_a_section(count):
    md = "# Doc\n```bash\n# not a heading\necho hi\n```\n"
    [chunk] = chunk_markdown(md, count)
    assert chunk.section == "Doc" and chunk.unit == "code"
    assert "# not a heading" in chunk.text


def table(rows: int) -> str:
    head = "| Method | Trained parameters | When to use |\n|---|---|---|\n"
    body = "".join(f"| Method {i} | about {i} percent of the weights | case number {i} of many |\n" for i in range(rows))
    return head + body


def test_small_table_stays_whole_with_its_header(count):
    md = "# Methods\nSome text before.\n\n" + table(3) + "\nSome text after.\n"
    chunks = chunk_markdown(md, count, chunk_tokens=200, overlap=32)
    tables = [c for c in chunks if c.unit == "table"]
    assert len(tables) == 1
    assert tables[0].text == table(3).rstrip("\n")
    assert tables[0].section == "Methods"
    assert [c.text for c in chunks if c.unit == "text"] == ["Some text before.", "Some text after."]


def test_large_table_is_split_by_rows_under_a_repeated_header(count):
    md = "# Methods\n" + table(40)
    limit = 80
    tables = [c for c in chunk_markdown(md, count, chunk_tokens=limit, overlap=16) if c.unit == "table"]
    assert len(tables) > 3
    header = ["| Method | Trained parameters | When to use |", "|---|---|---|"]
    seen = []
    for c in tables:
        rows = c.text.splitlines()
        assert rows[:2] == header
        assert len(rows) > 2
        assert count(c.text) <= limit
        seen += rows[2:]
    # every row exactly once, in order, none cut in half
    assert seen == table(40).splitlines()[2:]


DIAGRAM = """```mermaid
flowchart TD
    A[🚀 Start] --> B{Have a GPU<br/>and data?}
    B -- Yes --> C[🔧 Full Fine-Tuning<br/>all weights]
    B -- No --> D[LoRA]
```"""


def test_mermaid_diagram_is_one_chunk_with_edge_sentences(count):
    md = f"# Map\nPick a method.\n\n{DIAGRAM}\n\nAfter the map.\n"
    chunks = chunk_markdown(md, count)
    diagrams = [c for c in chunks if c.unit == "diagram"]
    assert len(diagrams) == 1
    d = diagrams[0]
    assert d.text.startswith(DIAGRAM)
    assert "Have a GPU and data? — Yes → Full Fine-Tuning (all weights)" in d.text
    assert "Have a GPU and data? — No → LoRA" in d.text
    assert "Start → Have a GPU and data?" in d.text
    assert d.embed_texts and all("→" in t for t in d.embed_texts)
    assert not any("flowchart" in c.text for c in chunks if c.unit != "diagram")


def test_atlas_decision_map_yields_its_first_branch(count):
    text = load_file(REPO / "corpus" / "atlas.md").text
    diagrams = [c for c in chunk_markdown(text, count) if c.unit == "diagram"]
    sentence = "Есть мощная GPU и достаточно данных? — Да → Full Fine-Tuning"
    hits = [d for d in diagrams if sentence in d.text]
    assert len(hits) == 1
    assert "Интеллект-карта выбора метода" in hits[0].section
    assert any(sentence in t for t in hits[0].embed_texts)


def test_render_edges_handles_labels_on_arrows_and_subgraphs():
    src = "graph LR\nsubgraph S [Stack]\n  X[Chroma]\n  Y[BM25]\nend\nX -->|feeds| Y\nY -.-> Z((Answer))"
    assert render_edges(src) == ["Chroma — feeds → BM25", "BM25 → Answer", "Stack: Chroma, BM25."]


def long_section(sentences: int) -> str:
    body = " ".join(f"Sentence number {i} explains one more detail of low-rank adaptation." for i in range(sentences))
    return f"# LoRA\n## How it works\n{body}\n"


def test_text_chunks_respect_the_token_limit(count):
    chunks = chunk_markdown(long_section(60), count, chunk_tokens=120, overlap=24)
    assert len(chunks) > 4
    assert all(c.unit == "text" and c.section == "LoRA > How it works" for c in chunks)
    assert max(count(c.text) for c in chunks) <= 120
    # nothing lost: every sentence is in some chunk
    joined = " ".join(c.text for c in chunks)
    assert all(f"Sentence number {i} explains" in joined for i in range(60))


def sentence_numbers(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"Sentence number (\d+) explains", text)]


def test_consecutive_text_chunks_overlap(count):
    chunks = [c.text for c in chunk_markdown(long_section(60), count, chunk_tokens=120, overlap=24)]
    assert len(chunks) > 4
    for prev, nxt in zip(chunks, chunks[1:]):
        a, b = sentence_numbers(prev), sentence_numbers(nxt)
        shared = [n for n in b if n in a]
        # the next chunk opens with the previous chunk's tail, about `overlap` tokens of it, then moves on
        assert shared and b[: len(shared)] == shared == a[-len(shared):], (prev, nxt)
        assert len(b) > len(shared)
        tail = " ".join(s for s in re.findall(r"Sentence number \d+ [^.]*\.", nxt) if int(re.search(r"\d+", s).group()) in shared)
        assert count(tail) <= 24


def test_no_overlap_when_asked_for_none(count):
    chunks = [c.text for c in chunk_markdown(long_section(60), count, chunk_tokens=120, overlap=0)]
    numbers = [n for c in chunks for n in sentence_numbers(c)]
    assert numbers == list(range(60))


# ---------------------------------------------------------------- the atlas as people ask about it


@pytest.fixture(scope="module")
def atlas_chunks(count):
    return chunk_markdown(load_file(REPO / "corpus" / "atlas.md").text, count)


def test_each_table_row_is_a_chunk_labelled_cell_by_cell_beside_the_whole_table(atlas_chunks):
    rows = [c for c in atlas_chunks if c.unit == "table-row"]
    tables = [c for c in atlas_chunks if c.unit == "table"]
    assert len(rows) == 10 and tables
    row = next(c for c in rows if "Adapter Tuning" in c.text)
    assert row.text == ("Категория: Adapter Tuning; Суть: Вставка небольших обучаемых блоков между слоями; "
                        "Область применения: Мультизадачные системы; Пример инструмента: PEFT, AdapterHub.")
    assert row.section == tables[0].section  # one section: the row and its table
    assert any("AdapterHub" in t.text for t in tables)


def test_tree_lines_carry_their_group_and_no_glyphs(atlas_chunks):
    [tree] = [c for c in atlas_chunks if "Эволюция подходов" in c.section and c.section.endswith("подходов")]
    lines = tree.text.splitlines()
    assert "Parameter-Efficient Fine-Tuning (PEFT): LoRA / QLoRA, Adapters, Prefix / Prompt / P-Tuning, BitFit." in lines
    assert "High-Level Tuning: SFT (Supervised Fine-Tuning), RLHF (Reinforcement Learning from Human Feedback)." in lines
    assert lines[0].startswith("Full Fine-Tuning → Partial / Head-only Tuning → Parameter-Efficient")
    assert not any(g in c.text for c in atlas_chunks for g in ("├─", "└─"))


def test_the_conclusions_quote_is_read_as_sentences_without_its_markers(atlas_chunks):
    """The conclusion is a blockquote in verse: its chunk kept every '>' and a quote ran on past its sentence
    ('RAG — это память. > > А их объединение…'). Its lines join as Markdown reads them, and each sentence ends."""
    from serve.prompt import split_sentences

    text = " ".join(c.text for c in atlas_chunks if "Заключение" in c.section)
    assert ">" not in text
    sentences = {s for c in atlas_chunks if "Заключение" in c.section for s in split_sentences(c.text)}
    assert {"RAG — это память.", "Ты не просто обучаешь модели — ты учишь их учиться.",
            "🧠 LLM about LLM — это не документация."} <= sentences


def test_diagram_groups_are_chunks_with_titles_in_both_languages(atlas_chunks):
    groups = [c.text for c in atlas_chunks if c.unit == "group"]
    assert ("Инференс и деплой (Inference): vLLM / TGI (Fast Inference Engines), Gradio / Streamlit (UI Frontends), "
            "Optuna / Weights&Biases (Tracking, Tuning).") in groups
    # a node branching into four others in the evolution diagram is a group too
    assert any(g.startswith("Parameter-Efficient Fine-Tuning (PEFT): LoRA / QLoRA (Low-Rank адаптация), Adapters") for g in groups)
    # the whole diagrams stay, with every edge sentence
    assert sum(c.unit == "diagram" and "```mermaid" in c.text for c in atlas_chunks) == 3


def test_rows_and_groups_come_after_the_other_chunks_so_their_ids_keep_their_places(atlas_chunks):
    units = [c.unit for c in atlas_chunks]
    first_part = min(i for i, u in enumerate(units) if u in ("table-row", "group"))
    assert all(u in ("table-row", "group") for u in units[first_part:])
    assert all(u not in ("table-row", "group") for u in units[:first_part])


def test_a_flowchart_with_labelled_branches_gets_no_group_line():
    src = "flowchart TD\nB{GPU?} -- Да --> C[Full]\nB -- Нет --> D[LoRA]\nB -- Может --> E[BitFit]"
    assert render_edges(src) == ["GPU? — Да → Full", "GPU? — Нет → LoRA", "GPU? — Может → BitFit"]
