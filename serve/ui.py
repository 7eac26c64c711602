"""The Gradio UI, mounted on the FastAPI app at /: chat with sources, documents, the atlas, the latest evals."""

# No `from __future__ import annotations`: Gradio reads the handlers' annotations (gr.LikeData, gr.Request) as objects,
# and `gr` is imported inside mount_ui, where string annotations would not resolve.
import html
import os
import threading
from pathlib import Path

from .answer_log import MAX_CORRECTION_CHARS, Feedback, rater_of_key
from .auth import COOKIE, session_key
from .errors import ServeError
from .models import configured, offered

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

QUEUED = "⏳ Waiting for the model: position {position} in the queue."


def sources_html(sources: list[dict]) -> str:
    """Each source as a card: [n], title, section, score, and the passage the model read."""
    if not sources:
        return "<p class='no-sources'>No sources (closed-book mode or nothing retrieved).</p>"
    cards = []
    for s in sorted(sources, key=lambda s: s["index"]):
        cards.append(
            f"<div class='source' data-index='{s['index']}'><b>[{s['index']}] {html.escape(s['title'])}</b>"
            f"<br><i>{html.escape(s['section'])}</i> · score {s['score']:.3f} · <code>{html.escape(s['doc_id'])}</code>"
            f"<pre class='passage' style='white-space:pre-wrap'>{html.escape(s['text'])}</pre></div>"
        )
    return "\n".join(cards)


EVIDENCE = "\n\n<details class='evidence'>"  # where the evidence starts in a chat message


def evidence_html(evidence: list[dict]) -> str:
    """The model's verified quotes, folded under the answer (empty when there are none).

    Example: [{'index': 2, 'text': 'LoRA freezes W.'}] -> "\\n\\n<details class='evidence'><summary>Evidence (1 quote)"
    "</summary><blockquote>[2] LoRA freezes W.</blockquote></details>".
    """
    if not evidence:
        return ""
    quotes = "".join(f"<blockquote>[{e['index']}] {html.escape(e['text'])}</blockquote>" for e in evidence)
    count = f"{len(evidence)} quote{'s' if len(evidence) > 1 else ''}"
    return f"{EVIDENCE}<summary>Evidence ({count})</summary>{quotes}</details>"


def answer_only(content: str) -> str:
    """A chat message without its evidence, as the next turn's history. Example: 'A [1].' + evidence_html(...) -> 'A [1].'."""
    return content.split(EVIDENCE)[0]


def answer_ids(ids: list, length: int) -> list:
    """The completion ids aligned with a chat history of `length` messages (None where unknown), for its new answer.

    Example: ([None, 'a'], 4) -> [None, 'a', None, None].
    """
    ids = list(ids or [])[:length]
    return ids + [None] * (length - len(ids))


def mount_ui(app, state):
    import gradio as gr

    settings = state.settings

    def rag():
        if state.rag is None:
            raise gr.Error(state.error or "still loading the index and the model; try again in a moment")
        return state.rag

    def respond(message, history, model, top_k, temperature, ids):
        if not message or not message.strip():
            yield history, "", gr.update(), ids
            return
        engine = rag()
        msgs = [{"role": m["role"], "content": answer_only(m["content"])} for m in history
                if isinstance(m.get("content"), str)]
        msgs.append({"role": "user", "content": message})
        history = history + [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]
        ids = answer_ids(ids, len(history))
        cancel = threading.Event()  # set when Gradio closes this generator (the page went away): stop generating
        try:
            chunks = engine.stream_chunks(model, msgs, max_tokens=settings.llm.max_tokens, temperature=temperature,
                                          retrieval={"top_k": int(top_k)}, cancel=cancel)
            first = next(chunks)
            ids[-1] = first["id"]  # the answer log's key: 👍 / 👎 and corrections name the answer by it
            panel = sources_html(first.get("sources", []))
            yield history, "", panel, ids
            for chunk in chunks:
                if "queue" in chunk:  # waiting for the model behind other questions (UI and API share one queue)
                    history[-1]["content"] = QUEUED.format(position=chunk["queue"]["position"])
                    yield history, "", panel, ids
                    continue
                delta = chunk["choices"][0]["delta"].get("content")
                if delta:
                    if history[-1]["content"].startswith(QUEUED[:2]):
                        history[-1]["content"] = ""
                    history[-1]["content"] += delta
                    yield history, "", panel, ids
                evidence = (chunk.get("grounding") or {}).get("evidence")
                if evidence:
                    history[-1]["content"] += evidence_html(evidence)
                    yield history, "", panel, ids
        except Exception as e:  # shown in the chat, never a dead UI
            history[-1]["content"] = f"⚠️ {e}"
            ids[-1] = None  # nothing was logged: nothing to rate
            yield history, "", gr.update(), ids
        finally:
            cancel.set()

    def rater(request: gr.Request) -> str:
        """The API key behind this browser's login when keys are set, else the UI session."""
        keys = settings.serve.api_keys
        key = session_key(request.cookies.get(COOKIE, "") if request else "", keys) if keys else None
        return rater_of_key(key) if key else f"ui:{getattr(request, 'session_hash', None) or 'unknown'}"

    def rate(ids, like: gr.LikeData, request: gr.Request):
        index = like.index if isinstance(like.index, int) else like.index[0]
        cid = ids[index] if index < len(ids) else None
        if cid is None or like.liked not in (True, False):
            return gr.update()
        return save(Feedback(cid, rater(request), 1 if like.liked else -1, None, None))

    def correct(text, ids, request: gr.Request):
        cid = next((i for i in reversed(ids or []) if i), None)
        if cid is None:
            return gr.update(), "Ask a question first: a correction improves the last answer."
        if not (text or "").strip():
            return gr.update(), "Write the better answer first."
        return "", save(Feedback(cid, rater(request), None, text.strip()[:MAX_CORRECTION_CHARS], None))

    def save(fb: Feedback) -> str:
        try:
            stored = state.answer_log().rate(fb)
        except ServeError as e:
            return f"⚠️ {e}"
        what = {1: "👍", -1: "👎"}.get(stored["rating"], "") + (" and your correction" if stored["correction"] else "")
        return f"Saved {what.strip()} for answer `{fb.answer_id}`: thank you."

    def docs_table():
        from ingest import list_documents

        return [[k, d["kind"], d["chunks"], d["title"]] for k, d in list_documents(settings).items()]

    def upload(file):
        if file is None:
            return docs_table(), "choose a file first"
        from ingest import IngestError, add_upload

        try:  # stored under the data folder, not ingested from Gradio's cache, which is cleaned
            with open(file, "rb") as data:
                summary = add_upload(settings, Path(file).name, data, settings.serve.max_upload_mb, embedder=rag().embedder)
        except IngestError as e:
            return docs_table(), str(e)
        return docs_table(), summary.text()

    def delete(doc_id):
        from ingest import IngestError, delete_document

        try:
            keys = delete_document(settings, (doc_id or "").strip())
            return docs_table(), f"deleted {', '.join(keys)}"
        except IngestError as e:
            return docs_table(), str(e)

    atlas = settings.path("corpus/atlas.md")
    report = settings.path(settings.evals.reports_dir) / "latest" / "report.md"
    models = offered(settings, list(configured(settings)))

    with gr.Blocks(title="ftatlas") as ui:
        gr.Markdown("# ftatlas — ask the Fine-Tuning Atlas\nAnswers cite their sources as [n]; the sources are listed under the chat.")
        with gr.Tab("Chat"):
            with gr.Row():
                mode = gr.Dropdown(models, value=models[0], label="Mode", elem_id="mode")
                top_k = gr.Slider(1, 10, value=settings.retrieval.top_k, step=1, label="Top-k passages", elem_id="top-k")
                temperature = gr.Slider(0, 1.5, value=settings.llm.temperature, step=0.05, label="Temperature")
            chat = gr.Chatbot(label="Answer", elem_id="chat", height=360, feedback_options=("Like", "Dislike"))
            ids = gr.State([])  # the completion id of each chat message (None for questions)
            box = gr.Textbox(placeholder="e.g. How much memory does QLoRA need for a 65B model?", label="Question", elem_id="question")
            send = gr.Button("Ask", variant="primary", elem_id="ask")
            thanks = gr.Markdown(elem_id="feedback-status")
            with gr.Accordion("Suggest a better answer", open=False):
                better = gr.Textbox(label="A better answer to the last question", lines=3, elem_id="correction")
                gr.Button("Send correction", elem_id="send-correction").click(correct, [better, ids], [better, thanks])
            gr.Markdown("### Sources")
            panel = gr.HTML(elem_id="sources")
            for trigger in (box.submit, send.click):
                # Gradio's own queue would hold all but one question out of sight; ours (serve.max_queue, shared with
                # the API) admits up to max_active + max_queue and shows each its position, so Gradio lets them through.
                trigger(respond, [box, chat, mode, top_k, temperature, ids], [chat, box, panel, ids],
                        concurrency_limit=settings.serve.max_active + settings.serve.max_queue)
            chat.like(rate, ids, thanks)
        from .advice_ui import advisor_tab

        advisor_tab(gr, state, ui)
        with gr.Tab("Documents"):
            table = gr.Dataframe(headers=["id", "kind", "chunks", "title"], interactive=False, elem_id="documents")
            with gr.Row():
                file = gr.File(label="Add a document (.md, .txt, .html, .pdf)", type="filepath")
                doc_id = gr.Textbox(label="Document id to delete")
            status = gr.Textbox(label="Status", interactive=False)
            gr.Button("Refresh").click(docs_table, None, table)
            file.upload(upload, file, [table, status])
            gr.Button("Delete", variant="stop").click(delete, doc_id, [table, status])
        with gr.Tab("Atlas"):
            gr.Markdown(atlas.read_text(encoding="utf-8") if atlas.is_file() else "atlas not found", elem_id="atlas")
        with gr.Tab("Evals"):
            gr.Markdown(report.read_text(encoding="utf-8") if report.is_file() else "No eval report yet: run `ftatlas eval`.")
        ui.load(lambda: docs_table() if state.rag else [], None, table)

    import gradio as gr  # noqa: F811

    return gr.mount_gradio_app(app, ui, path="/", max_file_size=int(settings.serve.max_upload_mb * 2**20))
