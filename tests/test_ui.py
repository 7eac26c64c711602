"""The Gradio UI in a real headless Chromium: ask, watch the streamed answer, check the source panel."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture(scope="module")
def page(live_server):
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Debian's chromium is installed by `make install`"
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
                  "--no-first-run", "--disable-component-update", "--disable-sync"],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 1600})
        # not "networkidle": a page with per-session state keeps Gradio's heartbeat stream open for as long as it lives
        page.goto(live_server.url + "/", wait_until="load", timeout=90_000)
        page.locator("#question textarea").wait_for(timeout=90_000)
        yield page
        browser.close()


QLORA_Q = "How much GPU memory did QLoRA need to fine-tune a 65B model?"


def test_chat_streams_an_answer_with_its_sources(page, live_server):
    import httpx

    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#question textarea").fill(QLORA_Q)
    page.locator("#ask").click()
    panel = page.locator("#sources")
    panel.locator(".source").first.wait_for(timeout=120_000)
    bot = page.locator("#chat .message.bot, #chat [data-testid='bot']").last
    bot.wait_for(timeout=120_000)
    page.wait_for_function(
        "() => { const m = document.querySelectorAll('#chat [data-testid=\"bot\"], #chat .message.bot');"
        " return m.length && m[m.length - 1].innerText.trim().length > 10; }",
        timeout=120_000,
    )
    page.wait_for_timeout(1500)
    text = panel.inner_text()
    assert "QLoRA" in text and "48" in text, "the source panel shows the passage that holds the 48 GB figure"
    # the panel shows each source passage's own text, as the API returns it for the same question
    body = {"model": "atlas-rag", "max_tokens": 1, "messages": [{"role": "user", "content": QLORA_Q}]}
    sources = httpx.post(live_server.url + "/v1/chat/completions", json=body, timeout=120).json()["sources"]
    holding = next(s for s in sources if s["doc_id"] == "qlora" and "48" in s["text"])
    passages = [p.inner_text() for p in panel.locator(".source .passage").all()]
    assert any(holding["text"].strip() == p.strip() for p in passages), "the passage holding 48 GB, word for word"
    page.screenshot(path=str(ARTIFACTS / "ui-chat.png"), full_page=True)


def test_an_answer_is_rated_and_corrected_in_the_ui_and_its_row_found(page, corpus_index):
    from serve.answer_log import AnswerLog

    question = "What does BitFit train?"
    log = AnswerLog.of(corpus_index)  # shared by the session: other tests may have asked the same question
    asked = {a["id"] for a in log.recent(50)}
    page.locator("#question textarea").fill(question)
    page.locator("#ask").click()
    page.wait_for_function(
        "q => [...document.querySelectorAll('#chat [data-testid=\"user\"], #chat .message.user')].some(m => m.innerText.includes(q))",
        arg=question, timeout=120_000)
    like = page.locator("#chat button[aria-label='Like']").last
    like.wait_for(timeout=120_000)
    for _ in range(240):  # the answer is logged when it has finished streaming
        fresh = [a for a in log.recent(50) if a["question"] == question and a["id"] not in asked]
        if fresh:
            break
        page.wait_for_timeout(500)
    assert fresh, "the UI's answer reached the answer log"
    cid = fresh[0]["id"]
    like.click()
    status = page.locator("#feedback-status")
    status.get_by_text("Saved 👍").wait_for(timeout=30_000)
    assert [(f["rating"], f["rater"][:3]) for f in log.answer(cid)["feedback"]] == [(1, "ui:")]
    page.get_by_text("Suggest a better answer").click()
    page.locator("#correction textarea").fill("BitFit trains only the bias terms of the model [1].")
    page.locator("#send-correction").click()
    status.get_by_text("and your correction").wait_for(timeout=30_000)
    row = log.answer(cid)["feedback"]
    assert [(f["rating"], f["correction"]) for f in row] == [(1, "BitFit trains only the bias terms of the model [1].")]
    page.screenshot(path=str(ARTIFACTS / "ui-feedback.png"), full_page=True)


def test_documents_and_atlas_tabs(page):
    page.get_by_role("tab", name="Documents").click()
    page.locator("#documents").get_by_text("qlora", exact=True).first.wait_for(timeout=30_000)
    page.get_by_role("tab", name="Atlas").click()
    # rendered, not just the <div class="mermaid"> placeholder: an svg whose nodes carry the diagram's labels
    nodes = page.locator("#atlas svg .node")
    nodes.first.wait_for(timeout=30_000)
    assert nodes.count() >= 5
    labels = " ".join(t or "" for t in page.locator("#atlas svg:has(.node)").all_text_contents())
    assert "Gradio / Streamlit" in labels and "vLLM / TGI" in labels  # the tools diagram, as rendered
    page.screenshot(path=str(ARTIFACTS / "ui-atlas.png"), full_page=True)


def test_choose_a_method_walks_one_path_to_a_method(page):
    page.get_by_role("tab", name="Choose a method").click()
    question = page.locator("#advisor-question")
    question.get_by_text("Do you have powerful GPUs and enough data?").wait_for(timeout=30_000)
    page.locator("#advisor-no").click()
    question.get_by_text("Do you want to fine-tune only part of the model?").wait_for(timeout=30_000)
    page.locator("#advisor-yes").click()
    question.get_by_text("Partial Fine-Tuning").wait_for(timeout=60_000)
    page.locator("#advisor-back").click()  # change the last answer
    question.get_by_text("Do you want to fine-tune only part of the model?").wait_for(timeout=30_000)
    page.locator("#advisor-no").click()
    question.get_by_text("limited resources").wait_for(timeout=30_000)
    page.locator("#advisor-yes").click()
    result = page.locator("#advisor-result")
    result.get_by_text("PEFT approaches (LoRA, QLoRA, Adapters, Prefix)").first.wait_for(timeout=60_000)
    path = page.locator("#advisor-path").inner_text()
    assert path.count("No") == 2 and "Yes" in path
    assert "Partial Fine-Tuning (train the top layers / the classifier): you answered no" in result.inner_text()
    assert "[1]" in result.inner_text() and page.locator("#advisor-sources .source").count() >= 5
    lit = page.locator("#advisor-chart svg [style*='ffe08a']")
    lit.first.wait_for(timeout=30_000)
    assert lit.count() >= 5, "the start, three questions and the leaf are highlighted in the rendered chart"
    page.get_by_role("button", name="GPU memory calculator").click()
    page.locator("#memory-estimate").click()
    page.locator("#memory-result").get_by_text("GB for qlora of 7b").wait_for(timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "ui-advisor.png"), full_page=True)
