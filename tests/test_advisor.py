"""The atlas's decision chart as an advisor: parsed at ingest, walked by every door, explained from the corpus."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from ftatlas.settings import load_settings
from ingest.decision import ChartError, find_maps, load_map
from serve.advisor import Advisor, read_english

from conftest import REPO

pytestmark = pytest.mark.timeout(600)

ATLAS = (REPO / "corpus" / "atlas.md").read_text(encoding="utf-8")
ENGLISH = REPO / "corpus" / "atlas.en.yaml"
# Expected documents per leaf: the chart and table from the atlas, each named method's card, and the cards behind
# the why-not sentences of the branches not taken (found by the retriever; pinned here).
PEFT_WHY_NOT = {"lora", "adapters", "prefix-tuning"}  # the PEFT leaf's cards, read for "why not PEFT"
EXPECTED_DOCS = {
    "C": {"atlas"},  # Full Fine-Tuning has no card: its table row speaks for it
    "E": {"atlas", "ulmfit"},
    "G": {"atlas", "lora", "qlora", "adapters", "prefix-tuning", "ulmfit"},
    "I": {"atlas", "bitfit", "ulmfit"} | PEFT_WHY_NOT,
    "K": {"atlas", "lima", "instructgpt", "ulmfit", "bitfit"} | PEFT_WHY_NOT,
    "M": {"atlas", "rag", "ulmfit", "bitfit", "lima", "instructgpt", "gpt3-icl"} | PEFT_WHY_NOT,
    "N": {"atlas", "gpt3-icl", "ulmfit", "bitfit", "lima", "instructgpt", "rag"} | PEFT_WHY_NOT,
}


def the_map(markdown: str = ATLAS):
    maps, errors = find_maps(markdown, "atlas", {})
    assert not errors, errors
    assert len(maps) == 1
    return maps[0]


def paths(chart):
    """Every full answer sequence from the first question, with the leaf it reaches."""
    out, todo = [], [([], chart.start)]
    while todo:
        answers, node = todo.pop()
        if node not in chart.answers:
            out.append((answers, node))
            continue
        for key in ("yes", "no"):
            todo.append((answers + [key], chart.answers[node][key]))
    return out


def make_root(root: Path, atlas: str, english: dict | None = None) -> object:
    """A project root with the repo's settings, a manifest of just the (edited) atlas, and its English file."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("settings.yaml", "settings-test.yaml"):
        shutil.copy(REPO / name, root / name)
    (root / "corpus").mkdir(exist_ok=True)
    (root / "corpus" / "atlas.md").write_text(atlas, encoding="utf-8")
    en = english if english is not None else yaml.safe_load(ENGLISH.read_text(encoding="utf-8"))
    (root / "corpus" / "atlas.en.yaml").write_text(yaml.safe_dump(en, allow_unicode=True), encoding="utf-8")
    manifest = {"documents": [{"id": "atlas", "title": "Atlas", "path": "corpus/atlas.md", "language": "ru", "kind": "atlas"}]}
    (root / "corpus" / "manifest.yaml").write_text(yaml.safe_dump(manifest), encoding="utf-8")
    return load_settings("test", root=root)


def write_chart(settings):
    from ingest.pipeline import decision_charts
    from ingest.sources import manifest_sources

    return decision_charts(settings, manifest_sources(settings))


# ---------------------------------------------------------------- the chart


def test_chart_is_found_by_structure_and_every_path_ends_at_a_leaf():
    chart = the_map()
    assert chart.start == "B" and chart.nodes["B"]["text"] == "Есть мощная GPU и достаточно данных?"
    walked = paths(chart)
    assert len(walked) == 7 and {leaf for _, leaf in walked} == {"C", "E", "G", "I", "K", "M", "N"}
    assert all(chart.nodes[leaf]["kind"] == "leaf" for _, leaf in walked)
    # The hybrid leaf is one the method leaves join, not one a question reaches.
    assert {leaf for leaf, nxt in chart.next_steps.items() if nxt == ["O"]} == {"G", "K", "M"}
    assert [(m.row, m.names) for m in chart.methods["G"]] == [
        ("LoRA / QLoRA", ["LoRA", "QLoRA"]), ("Adapter Tuning", ["Adapters"]), ("Prefix / Prompt / P-Tuning", ["Prefix"])]
    # Another heading, the evolution chart before it: the decision chart is still the one found.
    moved = ATLAS.replace("## 🧭 4.1. Интеллект-карта выбора метода", "## Something else entirely")
    assert the_map(moved).answers == chart.answers


@pytest.mark.parametrize("edit, node, words", [
    (("    H -- Нет --> J{", "    J{"), "H", "no Нет edge"),
    (("    D -- Да --> E[", "    D -- Может быть --> E["), "D", "labelled 'Может быть'"),
    (("L -- Нет --> N[💬 In-Context Learning / Prompt Engineering<br/>адаптация без fine-tuning]", "L -- Нет --> Z"), "Z", "never defined"),
    (("    G --> O\n", "    G --> O\n    O --> B\n"), "B", "cycle"),
])
def test_a_malformed_chart_names_the_node(edit, node, words):
    assert edit[0] in ATLAS
    maps, errors = find_maps(ATLAS.replace(*edit), "atlas", {})
    assert not maps and len(errors) == 1
    assert isinstance(errors[0], ChartError) and errors[0].node == node and words in str(errors[0])


def test_a_malformed_chart_fails_at_ingest_and_ingest_goes_on(tmp_path, embedder):
    from ingest import ingest

    good = make_root(tmp_path / "good", ATLAS)
    assert write_chart(good) == [] and load_map(good) is not None
    settings = make_root(tmp_path / "bad", ATLAS.replace("    H -- Нет --> J{", "    J{"))
    summary = ingest(settings, embedder=embedder, progress=False)
    assert summary.added == ["atlas"], "the atlas itself is still indexed"
    assert len(summary.failed) == 1 and "node H" in summary.failed[0][1] and "Нет" in summary.failed[0][1]
    assert load_map(settings) is None
    again = ingest(settings, embedder=embedder, progress=False)  # the no-op path names it too
    assert again.skipped == ["atlas"] and "node H" in again.failed[0][1]


# ---------------------------------------------------------------- English from data


def test_every_node_has_reviewed_english_for_the_atlas_text():
    chart = the_map()
    english = read_english(ENGLISH)
    assert set(english) == set(chart.nodes), "one English entry per chart node, no strays"
    for nid, node in chart.nodes.items():
        assert english[nid].get("en"), f"node {nid} lacks English"
        assert english[nid]["ru"] == node["text"], f"node {nid}: the atlas's Russian changed; review its English"
    assert Advisor(chart, english).stale_english() == []


def test_every_method_table_cell_has_reviewed_english_for_the_atlas_text():
    import re

    from serve.advisor import read_cells

    rows = [[c.strip(" *") for c in line.strip().strip("|").split("|")] for line in ATLAS.splitlines()
            if line.startswith("| **")]
    russian = {c for row in rows for c in row[1:] if re.search(r"[а-яё]", c, re.I)}
    cells = read_cells(ENGLISH)
    assert len(rows) >= 10 and set(cells) == russian, ("cells the atlas lacks (stale)", set(cells) - russian,
                                                       "cells without English", russian - set(cells))
    assert all(cells.values()) and not any(re.search(r"[а-яё]", v, re.I) for v in cells.values())
    advisor = Advisor(the_map(), read_english(ENGLISH), cells)
    assert advisor.cell("Мультизадачные системы", "en") == "Multi-task systems"
    assert advisor.cell("Мультизадачные системы", "ru") == "Мультизадачные системы" and advisor.cell("PEFT", "en") == "PEFT"


def test_stale_english_is_detected_and_falls_back_to_the_atlas():
    edited = ATLAS.replace("Есть мощная GPU<br/>и достаточно данных?", "Есть кластер GPU и много данных?")
    advisor = Advisor(the_map(edited), read_english(ENGLISH))
    assert advisor.stale_english() == ["B"]
    assert advisor.text("B", "en") == "Есть кластер GPU и много данных?"


def test_editing_the_atlas_mermaid_changes_the_advisor(tmp_path):
    """Nothing about questions or methods lives in code: a new question and swapped leaves come from the Mermaid."""
    edited = ATLAS.replace(
        "    B -- Да --> C[🔧 Full Fine-Tuning<br/>Обучаем все параметры]",
        "    B -- Да --> Q{Бюджет больше миллиона?}\n    Q -- Да --> C[🔧 Full Fine-Tuning<br/>Обучаем все параметры]\n"
        "    Q -- Нет --> I2[🪶 BitFit<br/>дёшево]",
    )
    english = yaml.safe_load(ENGLISH.read_text(encoding="utf-8"))
    english["nodes"]["Q"] = {"ru": "Бюджет больше миллиона?", "en": "Is the budget over a million?"}
    settings = make_root(tmp_path, edited, english)
    assert write_chart(settings) == []
    advisor = Advisor.load(settings)
    step = advisor.walk(["yes"], "en")
    assert not step.done and step.node == "Q" and advisor.text("Q", "en") == "Is the budget over a million?"
    leaf = advisor.walk(["yes", "no"], "ru")
    assert leaf.done and leaf.node == "I2" and [m.row for m in advisor.chart.methods["I2"]] == ["BitFit"]
    original = Advisor(the_map(), read_english(ENGLISH))
    assert original.walk(["yes"], "en").node == "C", "the shipped atlas still ends at Full Fine-Tuning there"


# ---------------------------------------------------------------- the walk


def test_walk_validates_answers():
    from serve.errors import BadRequest

    advisor = Advisor(the_map(), read_english(ENGLISH))
    assert advisor.walk(["Нет", "НЕТ", "да"], "ru").node == "G"
    with pytest.raises(BadRequest, match="answer 2 is 'maybe'"):
        advisor.walk(["no", "maybe"], "en")
    with pytest.raises(BadRequest, match="ends after 1"):
        advisor.walk(["yes", "no"], "en")
    with pytest.raises(BadRequest, match="language"):
        advisor.walk([], "de")


# ---------------------------------------------------------------- the recommendation, at every door


@pytest.fixture(scope="module")
def client(corpus_index, rag, embedder):
    from serve import create_app

    with TestClient(create_app(corpus_index, rag=rag, start=False, embedder=embedder, ui=False)) as c:
        yield c


@pytest.mark.parametrize("leaf", sorted(EXPECTED_DOCS))
def test_each_leaf_explains_itself_from_the_expected_documents(client, leaf):
    import re

    answers = next(a for a, n in paths(the_map()) if n == leaf)
    for language in ("en", "ru"):
        r = client.post("/v1/advise", json={"answers": answers, "language": language})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["done"] and body["leaf"]["id"] == leaf and len(body["path"]) == len(answers)
        assert {s["doc_id"] for s in body["sources"]} == EXPECTED_DOCS[leaf], (leaf, language)
        cited = {int(n) for n in re.findall(r"\[(\d+)\]", body["answer"])}
        assert cited == {s["index"] for s in body["sources"]}, "every source is cited and every [n] is a source"
        assert set(body["sources"][0]) == {"index", "doc_id", "title", "section", "source", "text", "score"}
        if language == "en":  # the table's cells in their reviewed English, never the atlas's Russian
            table = next(line for line in body["answer"].split("\n\n") if line.startswith("The atlas's table"))
            assert not re.search(r"[а-яё]", table, re.I), table
    chart = the_map()
    for m in chart.methods[leaf]:
        assert m.row in body["answer"], f"the table row of {m.row} is quoted"


def test_peft_leaf_shows_every_row_and_card(client):
    body = client.post("/v1/advise", json={"answers": ["no", "no", "yes"], "language": "en"}).json()
    assert [m["name"] for m in body["methods"]] == ["LoRA / QLoRA", "Adapter Tuning", "Prefix / Prompt / P-Tuning"]
    assert [m["cards"] for m in body["methods"]] == [["lora", "qlora"], ["adapters"], ["prefix-tuning"]]
    text = body["answer"]
    assert "Low-rank matrices in the attention layers are trained" in text and "PEFT + bitsandbytes" in text, \
        "the atlas's row, from its passage, in English"
    ru = client.post("/v1/advise", json={"answers": ["нет", "нет", "да"], "language": "ru"}).json()["answer"]
    assert "Обучаются low-rank матрицы в attention-слоях" in ru, "in Russian the atlas's own words"
    assert "Hybrid solutions (RAG + LoRA / RLHF)" in text, "the next step"
    assert "Full Fine-Tuning (train every parameter): you answered no" in text


def test_advise_api_contract_and_errors(client):
    r = client.post("/v1/advise", json={"answers": [], "language": "ru"})
    assert r.json() == {"done": False, "path": [],
                        "question": {"id": "B", "text": "Есть мощная GPU и достаточно данных?"}}
    r = client.post("/v1/advise", json={"answers": ["no"], "language": "en"}).json()
    assert r["question"] == {"id": "D", "text": "Do you want to fine-tune only part of the model?"}
    assert r["path"] == [{"id": "B", "question": "Do you have powerful GPUs and enough data?", "answer": "no", "said": "no"}]
    for body, words in [({"answers": ["perhaps"]}, "answer 1 is 'perhaps'"),
                        ({"answers": ["yes", "yes"]}, "ends after 1"),
                        ({"answers": [], "language": "de"}, "language"),
                        ({"answers": "yes"}, "answers")]:
        r = client.post("/v1/advise", json=body)
        assert r.status_code == 400, body
        err = r.json()["error"]
        assert err["type"] == "invalid_request_error" and words in err["message"], err


def test_advise_and_memory_follow_the_key_rule(corpus_index, rag, embedder):
    from serve import create_app

    keyed = corpus_index.model_copy(update={"serve": corpus_index.serve.model_copy(update={"api_keys": ["k1"]})})
    with TestClient(create_app(keyed, rag=rag, start=False, embedder=embedder, ui=False)) as c:
        assert c.post("/v1/advise", json={"answers": []}).status_code == 401
        assert c.post("/v1/memory", json={"model": "7b", "method": "lora"}).status_code == 401
        ok = c.post("/v1/advise", json={"answers": []}, headers={"Authorization": "Bearer k1"})
        assert ok.status_code == 200 and ok.json()["question"]["id"] == "B"


def test_situation_prefills_what_it_can_and_says_from_what(client):
    r = client.post("/v1/advise", json={"answers": [], "language": "en",
                                         "situation": "one 24 GB GPU, I want a chat assistant for our support team"}).json()
    inferred = {i["id"]: (i["answer"], i["from"]) for i in r["inferred"]}
    assert inferred == {"B": ("no", "24 GB")}, "only B is settled before the walk reaches a question it cannot infer"
    assert r["question"]["id"] == "D" and r["path"][0]["inferred_from"] == "24 GB"
    nothing = client.post("/v1/advise", json={"answers": [], "situation": "hello there"}).json()
    assert nothing["inferred"] == [] and nothing["question"]["id"] == "B"


def test_the_inference_report_scores_what_was_inferred_against_the_labels():
    from evals.situations import score

    rows = [{"id": "s1", "language": "en", "situation": "x", "answers": {"B": "no", "J": "yes"}}]
    report = score(rows, lambda text, lang: {"B": ("no", "cue"), "D": ("yes", "cue")})
    assert (report["en"]["accuracy"], report["en"]["precision"]) == (0.5, 0.5)  # D was not settled by the text
    assert report["en"]["misses"] == [{"id": "s1", "want": {"B": "no", "J": "yes"}, "got": {"B": "no", "D": "yes"}}]


def test_the_rules_prefill_the_labelled_situations_as_measured(corpus_index):
    """evals/situations.jsonl (20 per language, none from an eval set): the cue rules the doors use keep the accuracy
    and precision the README reports (0.833 / 0.926 en, 0.862 / 0.962 ru), within one answer."""
    from evals.situations import load_situations, score
    from serve.situation import infer

    rows = load_situations(REPO / "evals" / "situations.jsonl")
    assert {lang: sum(r["language"] == lang for r in rows) for lang in ("en", "ru")} == {"en": 20, "ru": 20}
    asked = {json.loads(line)["question"] for f in ("questions.jsonl", "heldout.jsonl")
             for line in (REPO / "evals" / f).read_text(encoding="utf-8").splitlines() if line.strip()}
    assert not asked & {r["situation"] for r in rows}
    report = score(rows, lambda text, lang: infer(Advisor.load(corpus_index), text))
    for lang, (accuracy, precision) in {"en": (0.833, 0.926), "ru": (0.862, 0.962)}.items():
        r = report[lang]
        assert r["right"] >= round(accuracy * r["labelled"]) - 1 and r["precision"] >= precision - 0.04, (lang, r)


# ---------------------------------------------------------------- the memory calculator


def test_calculator_against_published_figures():
    from serve.memory import compare_published, estimate, model_from

    rows = {r["what"]: r for r in compare_published()}
    qlora = rows["QLoRA, LLaMA 65B on one 48 GB GPU"]
    assert qlora["ours_gb"] <= 48 and 0.7 <= qlora["ratio"] <= 1.3
    full = rows["Full 16-bit fine-tuning of LLaMA 65B"]
    assert full["ours_gb"] > 780 * 0.7 and 0.7 <= full["ratio"] <= 1.3
    assert 0.7 <= rows["GPT-3 175B, LoRA r=4 on W_q, W_v"]["ratio"] <= 1.3
    # The 175B full figure is missed with fp32 Adam moments and met with 16-bit ones (the note explains).
    assert rows["GPT-3 175B, full fine-tuning with Adam"]["ratio"] > 1.3
    assert 0.7 <= rows["GPT-3 175B, full, Adam moments in 16-bit"]["ratio"] <= 1.3
    est = estimate(model_from("65b"), "qlora", lora_rank=64)
    assert set(est.parts) == {"weights", "gradients", "optimizer", "adapter", "activations"}
    assert all(p.formula for p in est.parts.values())
    assert 64e9 < est.params < 66e9 and model_from("7b").linear_params() + model_from("7b").embedding_params() < 7e9


def test_memory_api(client):
    r = client.post("/v1/memory", json={"model": "65b", "method": "qlora", "lora_rank": 64})
    assert r.status_code == 200 and r.json()["total_gb"] < 48
    r = client.post("/v1/memory", json={"model": {"layers": 2, "hidden": 64, "vocab": 100}, "method": "full", "precision": "fp32"})
    assert r.status_code == 200 and r.json()["parts"]["weights"]["formula"].endswith("x 4 bytes (fp32)")
    for body in ({"model": "3b", "method": "lora"}, {"model": "7b", "method": "dpo"},
                 {"model": "7b", "method": "lora", "lora_modules": ["mlp"]}):
        r = client.post("/v1/memory", json=body)
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", body


def test_chat_cites_the_calculator_for_a_memory_question(rag):
    prep = rag.prepare("atlas-rag", [{"role": "user", "content": "How much GPU memory does QLoRA need for a 65B model?"}])
    n = next(i for i, p in enumerate(prep.passages, 1) if p.doc_id == "memory-calculator")
    assert "44.9 GB in total" in prep.passages[n - 1].text
    ok, cited, _ = prep.grounder.support("QLoRA of the 65B model needs an estimated 44.9 GB in total.", 0.6, 0.5, 6)
    assert ok and cited == n, "a sentence restating the calculator passes the grounding check, citing it"
    plain = rag.prepare("atlas-rag", [{"role": "user", "content": "What does BitFit train?"}])
    assert all(p.doc_id != "memory-calculator" for p in plain.passages)


# ---------------------------------------------------------------- the CLI


def test_cli_advise_scripted_and_interactive(corpus_index):
    from click.testing import CliRunner

    from ftatlas.cli import cli

    def run(args, input=None):
        env = {"FTATLAS_INGEST__DATA_DIR": str(corpus_index.data_dir)}
        return CliRunner().invoke(cli, ["--profile", "test", "advise", *args], input=input, env=env)

    out = run(["--answers", "no,no,yes"])
    assert out.exit_code == 0, out.output
    assert "PEFT approaches (LoRA, QLoRA, Adapters, Prefix)" in out.output and "[1] " in out.output
    ru = run(["--answers", "да", "--language", "ru"])
    assert ru.exit_code == 0 and "Full Fine-Tuning (Обучаем все параметры)" in ru.output
    bad = run(["--answers", "no,maybe"])
    assert bad.exit_code != 0 and "answer 2 is 'maybe'" in bad.output
    talk = run([], input="no\nback\nno\nno\nyes\n")
    assert talk.exit_code == 0, talk.output
    assert talk.output.count("Do you have powerful GPUs and enough data?") >= 2, "back asks the first question again"
    assert "PEFT approaches" in talk.output


def test_cli_memory():
    from click.testing import CliRunner

    from ftatlas.cli import cli

    out = CliRunner().invoke(cli, ["memory", "--model", "65b", "--method", "qlora", "--lora-rank", "64"])
    assert out.exit_code == 0 and "Weights: 34.5 GB = " in out.output and "Optimizer:" in out.output
    pub = CliRunner().invoke(cli, ["memory", "--published"])
    assert "published 780 GB" in pub.output
    bad = CliRunner().invoke(cli, ["memory", "--model", "3b"])
    assert bad.exit_code != 0 and "unknown model preset" in bad.output
