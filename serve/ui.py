"""The Gradio UI, mounted on the FastAPI app at /: chat with sources, documents, the atlas, the latest evals."""

from __future__ import annotations

import html
import os
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


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


def mount_ui(app, state):
    import gradio as gr

    settings = state.settings

    def rag():
        if state.rag is None:
            raise gr.Error(state.error or "still loading the index and the model; try again in a moment")
        return state.rag

    def respond(message, history, model, top_k, temperature):
        if not message or not message.strip():
            yield history, "", gr.update()
            return
        engine = rag()
        msgs = [{"role": m["role"], "content": m["content"]} for m in history if isinstance(m.get("content"), str)]
        msgs.append({"role": "user", "content": message})
        history = history + [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]
        try:
            chunks = engine.stream_chunks(model, msgs, max_tokens=settings.llm.max_tokens, temperature=temperature,
                                          retrieval={"top_k": int(top_k)})
            sources = next(chunks).get("sources", [])
            panel = sources_html(sources)
            yield history, "", panel
            for chunk in chunks:
                delta = chunk["choices"][0]["delta"].get("content")
                if delta:
                    history[-1]["content"] += delta
                    yield history, "", panel
        except Exception as e:  # shown in the chat, never a dead UI
            history[-1]["content"] = f"⚠️ {e}"
            yield history, "", gr.update()

    def docs_table():
        from ingest import list_documents

        return [[k, d["kind"], d["chunks"], d["title"]] for k, d in list_documents(settings).items()]

    def upload(file):
        if file is None:
            return docs_table(), "choose a file first"
        from ingest import ingest

        with state.ingest_lock:
            summary = ingest(settings, [Path(file)], embedder=rag().embedder, progress=False)
        return docs_table(), summary.text()

    def delete(doc_id):
        from ingest import IngestError, delete_document

        try:
            with state.ingest_lock:
                keys = delete_document(settings, (doc_id or "").strip())
            return docs_table(), f"deleted {', '.join(keys)}"
        except IngestError as e:
            return docs_table(), str(e)

    atlas = settings.path("corpus/atlas.md")
    report = settings.path(settings.evals.reports_dir) / "latest" / "report.md"
    models = ["atlas-rag", "atlas-base"] + (["atlas-rag-lora"] if settings.llm.adapter else [])

    with gr.Blocks(title="ftatlas") as ui:
        gr.Markdown("# ftatlas — ask the Fine-Tuning Atlas\nAnswers cite their sources as [n]; the sources are listed under the chat.")
        with gr.Tab("Chat"):
            with gr.Row():
                mode = gr.Dropdown(models, value="atlas-rag", label="Mode", elem_id="mode")
                top_k = gr.Slider(1, 10, value=settings.retrieval.top_k, step=1, label="Top-k passages", elem_id="top-k")
                temperature = gr.Slider(0, 1.5, value=settings.llm.temperature, step=0.05, label="Temperature")
            chat = gr.Chatbot(label="Answer", elem_id="chat", height=360)
            box = gr.Textbox(placeholder="e.g. How much memory does QLoRA need for a 65B model?", label="Question", elem_id="question")
            send = gr.Button("Ask", variant="primary", elem_id="ask")
            gr.Markdown("### Sources")
            panel = gr.HTML(elem_id="sources")
            for trigger in (box.submit, send.click):
                trigger(respond, [box, chat, mode, top_k, temperature], [chat, box, panel])
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

    return gr.mount_gradio_app(app, ui, path="/")
