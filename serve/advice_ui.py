"""The UI's "Choose a method" tab: one question at a time, the path so far, the chart with the path lit, a memory panel."""

from __future__ import annotations

import json

LABELS = {
    "en": {"yes": "Yes", "no": "No", "path": "Path so far", "empty": "(no answers yet)", "inferred": "inferred from"},
    "ru": {"yes": "Да", "no": "Нет", "path": "Путь", "empty": "(ответов пока нет)", "inferred": "выведено из"},
}


def advisor_tab(gr, state, blocks) -> None:
    """Build the tab inside the caller's gr.Blocks (`blocks`); `state` is the app's AppState (settings, rag)."""
    from .advice_api import advise
    from .advisor import Advisor
    from .errors import NotReady, ServeError
    from .memory import BYTES, METHODS, PRESETS, estimate, model_from
    from .ui import sources_html

    settings = state.settings

    def retriever():
        if state.rag is None:
            raise NotReady(state.error or "still loading the index; try again in a moment")
        return state.rag.retriever

    def show(answers, language, situation):
        """(answers as JSON, question, path, chart, result, sources) for the walk so far."""
        shown = _show(answers, language, situation)
        return (json.dumps(shown[0]), *shown[1:])

    def _show(answers, language, situation):
        try:
            advisor = Advisor.load(settings)
            out = advise(advisor, retriever, answers, language, situation or None)
        except ServeError as e:
            return answers, f"⚠️ {e}", "", "", "", ""
        words = LABELS[language]
        path = [f"{i}. {s['question']} — **{words[s['answer']]}**"
                + (f" ({words['inferred']} «{s['inferred_from']}»)" if s.get("inferred_from") else "")
                for i, s in enumerate(out["path"], 1)]
        walk = advisor.walk([s["answer"] for s in out["path"]], language)
        chart = f"```mermaid\n{advisor.mermaid(walk, language)}\n```"
        answers = [s["answer"] for s in out["path"]]  # inferred answers count as given once shown
        path_md = f"**{words['path']}:**\n\n" + ("\n".join(path) if path else words["empty"])
        if not out["done"]:
            return answers, f"### {out['question']['text']}", path_md, chart, "", ""
        result = f"## {out['leaf']['text']}\n\n{out['answer']}"
        return answers, f"### ✅ {out['leaf']['text']}", path_md, chart, result, sources_html(out["sources"])

    def answer(key):
        def go(answers, language, situation):
            given = json.loads(answers or "[]")
            return show(given + [key], language, None if given else situation)
        return go

    def back(answers, language, situation):
        return show(json.loads(answers or "[]")[:-1], language, None)

    def restart(language, situation):
        return show([], language, situation)

    def memory(preset, method, precision, batch, seq, rank):
        try:
            est = estimate(model_from(preset), method, precision, int(batch), int(seq), int(rank))
        except ServeError as e:
            return f"⚠️ {e}"
        rows = "\n".join(f"| {k} | {p.bytes / 1e9:.1f} | {p.formula} |" for k, p in est.parts.items())
        notes = " ".join(est.assumptions)
        return (f"**{est.total_gb:.1f} GB** for {method} of {preset} ({est.params / 1e9:.1f}B parameters)\n\n"
                f"| part | GB | formula |\n|---|---|---|\n{rows}\n\n_{notes}_")

    with gr.Tab("Choose a method"):
        # The answers so far, as JSON in a hidden box: a gr.State would hold a heartbeat connection open.
        answers = gr.Textbox("[]", visible=False, elem_id="advisor-answers")
        with gr.Row():
            language = gr.Radio(["en", "ru"], value="en", label="Language", elem_id="advisor-language")
            situation = gr.Textbox(label="Describe your situation (optional)", elem_id="advisor-situation",
                                   placeholder="e.g. two 80 GB GPUs, a 70B model, 200k dialogue examples")
            start = gr.Button("Start", elem_id="advisor-start")
        question = gr.Markdown(elem_id="advisor-question")
        with gr.Row():
            yes = gr.Button("Yes", variant="primary", elem_id="advisor-yes")
            no = gr.Button("No", variant="primary", elem_id="advisor-no")
            prev = gr.Button("Back", elem_id="advisor-back")
        path = gr.Markdown(elem_id="advisor-path")
        result = gr.Markdown(elem_id="advisor-result")
        sources = gr.HTML(elem_id="advisor-sources")
        chart = gr.Markdown(elem_id="advisor-chart")
        outputs = [answers, question, path, chart, result, sources]
        start.click(restart, [language, situation], outputs)
        language.change(lambda a, lang: show(json.loads(a or "[]"), lang, None), [answers, language], outputs)
        yes.click(answer("yes"), [answers, language, situation], outputs)
        no.click(answer("no"), [answers, language, situation], outputs)
        prev.click(back, [answers, language, situation], outputs)
        with gr.Accordion("GPU memory calculator", open=False, elem_id="memory-panel"):
            with gr.Row():
                preset = gr.Dropdown(list(PRESETS), value="7b", label="Model", elem_id="memory-model")
                method = gr.Dropdown(list(METHODS), value="qlora", label="Method", elem_id="memory-method")
                precision = gr.Dropdown(list(BYTES), value="bf16", label="Precision (base weights)")
            with gr.Row():
                batch = gr.Number(1, label="Batch size", precision=0)
                seq = gr.Number(512, label="Sequence length", precision=0)
                rank = gr.Number(16, label="LoRA rank", precision=0)
            estimate_btn = gr.Button("Estimate", elem_id="memory-estimate")
            estimate_out = gr.Markdown(elem_id="memory-result")
            estimate_btn.click(memory, [preset, method, precision, batch, seq, rank], estimate_out)
    blocks.load(restart, [language, situation], outputs)
