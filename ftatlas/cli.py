"""The one CLI (`ftatlas`): builds Settings once and hands it to the rooms; domain errors become one-line messages."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import click

from .settings import Settings, SettingsError, load_settings

# Offline by default: nothing here may reach a model hub, a telemetry host or an analytics endpoint.
for _k, _v in {
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False",
    "GRADIO_ANALYTICS_ENABLED": "False", "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_k, _v)


def friendly(fn):
    """Turn the rooms' domain errors into a click error with the message, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from ingest.errors import IngestError

        from evals.errors import EvalError
        from finetune.errors import FinetuneError

        errors: tuple = (IngestError, SettingsError, EvalError, FinetuneError)
        try:
            from serve.errors import ServeError

            errors += (ServeError,)
        except ImportError:
            pass
        try:
            return fn(*args, **kwargs)
        except errors as e:
            raise click.ClickException(str(e)) from e

    return wrapper


@click.group()
@click.option("--profile", default=None, help="Settings profile: merges settings-<profile>.yaml over settings.yaml.")
@click.pass_context
def cli(ctx: click.Context, profile: str | None) -> None:
    """ftatlas: answers questions about adapting LLMs, from the Fine-Tuning Atlas and its papers."""
    try:
        ctx.obj = load_settings(profile)
    except SettingsError as e:
        raise click.ClickException(str(e)) from e


pass_settings = click.make_pass_decorator(Settings)


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--log-batches", is_flag=True, help="Print a line after each committed batch.")
@pass_settings
@friendly
def ingest(settings: Settings, paths: tuple[Path, ...], quiet: bool, log_batches: bool) -> None:
    """Ingest the manifest (no PATHS), or add files/folders of Markdown, text, PDF or HTML as user documents."""
    from ingest import ingest as run_ingest

    def on_batch(n: int, size: int) -> None:
        click.echo(f"committed batch {n} ({size} chunks)")
        sys.stdout.flush()

    summary = run_ingest(settings, list(paths) or None, progress=not quiet, on_batch=on_batch if log_batches else None)
    click.echo(summary.text())
    if paths and summary.failed and not (summary.added or summary.updated or summary.skipped):
        sys.exit(1)


@cli.group()
def documents() -> None:
    """List or delete ingested documents."""


@documents.command("list")
@pass_settings
@friendly
def documents_list(settings: Settings) -> None:
    """One line per document: id, kind, chunks, title."""
    from ingest import list_documents

    docs = list_documents(settings)
    if not docs:
        click.echo("no documents: run `ftatlas ingest`")
    for key, d in docs.items():
        click.echo(f"{key}\t{d['kind']}\t{d['chunks']}\t{d['title']}")


@documents.command("delete")
@click.argument("doc_id")
@pass_settings
@friendly
def documents_delete(settings: Settings, doc_id: str) -> None:
    """Remove one document from Chroma, the keyword index and the state."""
    from ingest import delete_document

    keys = delete_document(settings, doc_id)
    click.echo(f"deleted {', '.join(keys)}")


@cli.group()
def corpus() -> None:
    """Corpus maintenance."""


@corpus.command("fetch")
@pass_settings
@friendly
def corpus_fetch(settings: Settings) -> None:
    """Download the papers' PDFs into the cache (needs a network); the next ingest includes them."""
    from ingest import fetch_papers

    report = fetch_papers(settings)
    click.echo(report.text())


@cli.command(name="eval")
@click.option("--endpoint", default=None, help="Evaluate an OpenAI-compatible server (http://host:port or …/v1) instead of the in-process engine.")
@click.option("--api-key", default=None, help="Bearer key for --endpoint.")
@click.option("--configs", default=None, help="Comma-separated: atlas-base, atlas-rag-dense, atlas-rag-bm25, atlas-rag, atlas-rag-rerank, atlas-rag-lora, llamaindex-stock (default: all available).")
@click.option("--judge-endpoint", default=None, help="OpenAI-compatible judge: adds faithfulness and answer correctness.")
@click.option("--judge-model", default=None, help="Judge model id (default: the first the judge endpoint lists).")
@click.option("--judge-api-key", default=None, help="Bearer key for --judge-endpoint.")
@click.option("--set", "gold_set", type=click.Choice(["dev", "heldout", "all"]), default="dev", show_default=True,
              help="Question set: dev (tuned on), heldout (never tuned on) or all, reported side by side.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N questions of each set (reports/latest is left alone).")
@click.option("--retrieval-only", is_flag=True, help="Retrieval metrics only: no LLM.")
@click.option("--gate", is_flag=True, help="CI gate: retrieval on the dev and heldout sets vs evals/thresholds.json; exit 1 on a regression.")
@click.option("--write-thresholds", is_flag=True, help="Measure the configured retrieval on both sets and write evals/thresholds.json (measured - 0.02).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@pass_settings
@friendly
def eval_(settings: Settings, **options) -> None:
    """Score the gold questions per configuration into reports/<run-id>/ (JSON, Markdown, PNG charts)."""
    import evals

    sys.exit(evals.cli_main(settings, echo=click.echo, **options))


@cli.group()
def finetune() -> None:
    """Build RAFT training data, train a LoRA adapter, convert it for llama.cpp."""


@finetune.command("data")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=None, help="Output folder (default: <data_dir>/finetune).")
@click.option("--generator-endpoint", default=None, help="OpenAI-compatible base URL (…/v1) of a model that writes extra questions from the indexed chunks.")
@click.option("--generator-model", default=None, help="Model name at the endpoint (default: the first it lists).")
@click.option("--generator-api-key", default="not-needed", show_default=True)
@click.option("--generator-per-chunk", default=2, show_default=True, type=click.IntRange(1, 10))
@click.option("--generator-max-chunks", default=None, type=click.IntRange(1), help="Sample at most this many chunks.")
@click.option("--generator-timeout", default=60.0, show_default=True, type=float, help="Seconds per generator call.")
@click.option("--quiet", is_flag=True)
@pass_settings
@friendly
def finetune_data(settings: Settings, out, generator_endpoint, generator_model, generator_api_key, generator_per_chunk,
                  generator_max_chunks, generator_timeout, quiet) -> None:
    """Write train/validation JSONL (RAFT: oracle + retrieved distractors, P without oracle) and a data card."""
    from finetune import GeneratorOptions, build_data

    gen = GeneratorOptions(generator_endpoint, generator_model, generator_api_key, generator_per_chunk,
                           generator_max_chunks, generator_timeout) if generator_endpoint else None
    click.echo(build_data(settings, out, generator=gen, progress=not quiet).text())


@finetune.command("train")
@click.option("--data", type=click.Path(path_type=Path, file_okay=False), default=None, help="Folder from `finetune data`.")
@click.option("--max-minutes", type=click.FloatRange(min=0, min_open=True), default=None, help="Stop cleanly after this much training; the adapter is still saved.")
@click.option("--max-steps", type=click.IntRange(1), default=None, help="Optimizer steps (default: finetune.max_steps).")
@click.option("--run-id", default=None, help="runs/<run-id>/ (default: a timestamp).")
@click.option("--resume", is_flag=True, help="Continue the last checkpoint of --run-id, or of the latest run.")
@click.option("--base", "base_model", default=None, help="smollm2 (= bundled), gemma3, or an HF folder or id (default: finetune.base_model).")
@click.option("--languages", default=None, help="Comma-separated question languages to train on (default: finetune.train_languages).")
@click.option("--quiet", is_flag=True)
@pass_settings
@friendly
def finetune_train(settings: Settings, data, max_minutes, max_steps, run_id, resume, base_model, languages, quiet) -> None:
    """Train a LoRA adapter with TRL's SFTTrainer; writes runs/<run-id>/adapter/ (peft + lora.gguf)."""
    from finetune import train

    if languages:
        settings.finetune.train_languages = [x.strip() for x in languages.split(",") if x.strip()]

    click.echo(train(settings, data, run_id=run_id, max_minutes=max_minutes, max_steps=max_steps, resume=resume,
                     base_model=base_model, progress=not quiet, echo=click.echo).text())


@finetune.command("gguf")
@click.argument("adapter", type=click.Path(path_type=Path, file_okay=False))
@click.option("--base-gguf", type=click.Path(path_type=Path, dir_okay=False), default=None, help="Default: the shipped GGUF of the base the adapter was trained on (smollm2 or gemma3).")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=None, help="Default: ADAPTER/lora.gguf.")
@pass_settings
@friendly
def finetune_gguf(settings: Settings, adapter, base_gguf, out) -> None:
    """Convert a peft LoRA adapter folder into a llama.cpp GGUF LoRA."""
    from finetune import convert_to_gguf
    from finetune.base import adapter_base_gguf

    click.echo(convert_to_gguf(adapter, base_gguf or adapter_base_gguf(adapter), out))


@finetune.command("ship")
@click.argument("run", type=click.Path(path_type=Path, file_okay=False))
@click.option("--to", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Default: adapters/<base> (smollm2 or gemma3), the folder llm.adapters names for that base.")
@pass_settings
@friendly
def finetune_ship(settings: Settings, run, to) -> None:
    """Copy a finished run's adapter and its card into adapters/ (the committed default; size-checked)."""
    from finetune.ship import ship, shipped_folder

    click.echo(ship(run, to or settings.path(shipped_folder(run)), settings.root))


@finetune.command("card")
@click.argument("adapter", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--report", type=click.Path(path_type=Path, file_okay=False, exists=True), required=True,
              help="An eval report folder (reports/<id>) whose rows go on the card.")
@pass_settings
@friendly
def finetune_card(settings: Settings, adapter, report) -> None:
    """Put an eval report's rows on a shipped adapter's card (card.json and README.md)."""
    from finetune.ship import record_eval

    click.echo(record_eval(adapter, report, settings.relative(report)))


@finetune.command("dpo")
@click.option("--pairs", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Preference pairs from `ftatlas feedback export` (default: <data_dir>/feedback/pairs.jsonl).")
@click.option("--base", "base_model", default="gemma3", show_default=True, help="The base whose current adapter is continued.")
@click.option("--adapter", type=click.Path(path_type=Path, file_okay=False, exists=True), default=None,
              help="The SFT adapter to continue (default: the one served for --base, a promoted one first).")
@click.option("--run-id", default=None, help="runs/<run-id>/ (default: a timestamp).")
@click.option("--steps", default=40, show_default=True, type=click.IntRange(1), help="Optimizer steps (one pair each).")
@click.option("--beta", default=0.1, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--learning-rate", default=5e-5, show_default=True, type=float)
@click.option("--max-length", default=2048, show_default=True, type=click.IntRange(64), help="Tokens per prompt + answer.")
@click.option("--quiet", is_flag=True)
@pass_settings
@friendly
def finetune_dpo(settings: Settings, pairs, base_model, adapter, run_id, steps, beta, learning_rate, max_length, quiet) -> None:
    """DPO on preference pairs, continuing the served SFT adapter with itself as the frozen reference."""
    from finetune.dpo import dpo
    from serve.bases import served_adapter
    from serve.promoted import serving_settings

    if adapter is None:
        found = served_adapter(serving_settings(settings).llm, base_model)
        if found is None:
            raise click.ClickException(f"no adapter is served for {base_model}; pass --adapter")
        adapter = settings.path(found[1])
    result = dpo(settings, pairs or settings.data_dir / "feedback" / "pairs.jsonl", adapter, base_name=base_model,
                 run_id=run_id, max_steps=steps, beta=beta, learning_rate=learning_rate, max_length=max_length,
                 progress=not quiet, echo=click.echo)
    click.echo(result.text())


@cli.group()
def feedback() -> None:
    """The answer log's ratings and corrections, and the preference pairs made from them."""


@feedback.command("export")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="JSONL in TRL's preference format (default: <data_dir>/feedback/pairs.jsonl; a card goes beside it).")
@click.option("--base", default="gemma3", show_default=True, help="Whose current adapter samples the self-supplied pairs.")
@click.option("--questions", default=100, show_default=True, type=click.IntRange(0),
              help="Training questions to sample self-supplied pairs for (0: only people's feedback).")
@click.option("--samples", default=4, show_default=True, type=click.IntRange(2), help="Answers sampled per question.")
@pass_settings
@friendly
def feedback_export(settings: Settings, out, base, questions, samples) -> None:
    """Preference pairs: corrections, 👍 against 👎 answers, and the grounding check's own verdicts on sampled answers."""
    import json

    from finetune.pairs import export
    from serve import RagEngine
    from serve.promoted import serving_settings

    rag = None
    if questions:
        settings = serving_settings(settings)
        _probe(settings)
        rag = RagEngine(settings)
        rag.load_adapter()
    try:
        card = export(settings, out or settings.data_dir / "feedback" / "pairs.jsonl", rag, base, questions, samples,
                      echo=click.echo)
    finally:
        if rag is not None:
            rag.close()
    click.echo(json.dumps(card, indent=2, ensure_ascii=False))


@cli.group()
def adapters() -> None:
    """The served adapter: promote a trained run through the eval gate, or roll back."""


@adapters.command("promote")
@click.argument("run", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N questions of each set (a quick, weaker gate).")
@click.option("--report", type=click.Path(path_type=Path, file_okay=False, exists=True), default=None,
              help="Decide from this eval run (both sets, whole) instead of running one; it must have served RUN's "
                   "adapter as --as and the current adapter under its own name.")
@click.option("--as", "rival", default=None, help="With --report: the model id RUN's adapter had there (e.g. atlas-rag-lora-gemma3-dpo).")
@click.option("--quiet", is_flag=True)
@pass_settings
@friendly
def adapters_promote(settings: Settings, run, limit, report, rival, quiet) -> None:
    """Evaluate RUN's adapter against the current one on dev + held-out; promote it only when no gated figure drops."""
    from evals.promote import gate_from_report, gated_eval
    from serve.promoted import promote

    if report is not None:
        if not rival:
            raise click.ClickException("--report needs --as: the model id RUN's adapter was evaluated as")
        decision = gate_from_report(settings, run / "adapter", report, rival, run / "gate")
    else:
        decision = gated_eval(settings, run / "adapter", run / "gate", limit=limit, progress=not quiet, echo=click.echo)
    click.echo((run / "gate" / "gate.md").read_text(encoding="utf-8"))
    if decision["promote"]:
        click.echo(f"promoted: {settings.relative(promote(settings, run / 'adapter', decision))} is now served for "
                   f"{decision['base']} (restart the server); `ftatlas adapters rollback` undoes it")
    else:
        raise click.ClickException(f"not promoted: {', '.join(decision['failed'])} dropped by more than "
                                   f"{decision['tolerance']}")


@adapters.command("rollback")
@pass_settings
@friendly
def adapters_rollback(settings: Settings) -> None:
    """Serve the previously promoted adapter again."""
    from serve.promoted import rollback

    click.echo(f"now served: {settings.relative(rollback(settings))} (restart the server)")


@cli.group()
def bench() -> None:
    """Benchmarks: print figures (never part of `make test`)."""


@bench.command("ingest")
@click.option("--scale", default=1, show_default=True, help="Also ingest a synthetic corpus this many times larger.")
@pass_settings
@friendly
def bench_ingest(settings: Settings, scale: int) -> None:
    """Pipeline chunks/s vs raw SentenceTransformer.encode on the same chunks, and the no-op re-ingest time."""
    from ingest.bench import run_bench

    click.echo(run_bench(settings, scale))


@bench.command("train")
@click.option("--bases", default="smollm2,gemma3", show_default=True, help="Comma-separated base names (or HF folders).")
@click.option("--steps", default=3, show_default=True, type=click.IntRange(2), help="Steps per lever; the first is warm-up.")
@click.option("--data", type=click.Path(path_type=Path, file_okay=False), default=None, help="Folder from `finetune data`.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("reports/bench-train.json"), show_default=True)
@pass_settings
@friendly
def bench_train(settings: Settings, bases, steps, data, out) -> None:
    """Seconds per step, tokens/s and examples/minute per base, before and after each training lever."""
    from finetune.bench import run_bench

    names = [b.strip() for b in bases.split(",") if b.strip()]
    click.echo(run_bench(settings, names, steps, data, settings.path(out), echo=click.echo))


@bench.command("grounding")
@click.option("--limit", default=200, show_default=True, type=click.IntRange(1), help="Training questions to use.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("reports/bench-grounding.json"), show_default=True)
@pass_settings
@friendly
def bench_grounding(settings: Settings, limit, out) -> None:
    """The answer check on training questions: reference answers it passes, wrong answers it stops, per language."""
    from evals.grounding_bench import run_bench

    click.echo(run_bench(settings, limit, settings.path(out)))


@bench.command("serve")
@click.option("--url", default=None, help="A running server; default: start one in-process (also measures llama.cpp direct).")
@click.option("--seconds", default=60.0, show_default=True, help="Duration of the concurrent-clients phase.")
@click.option("--clients", default=8, show_default=True, help="Concurrent streaming clients.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("reports/bench-serve.json"), show_default=True)
@click.option("--scale", default=1, show_default=True,
              help="Also time /v1/retrieve over a near-duplicate index this many times larger, beside 1x.")
@click.option("--retrieval-only", is_flag=True, help="Only the /v1/retrieve timings (no LLM is loaded).")
@pass_settings
@friendly
def bench_serve(settings: Settings, url, seconds, clients, out, scale, retrieval_only) -> None:
    """Retrieval p50/p95 by stage, TTFT and tokens/s through the API vs llama.cpp direct, RSS, N concurrent streams."""
    from serve.bench import run_bench

    click.echo(run_bench(settings, url, seconds, clients, settings.path(out), scale, retrieval_only))


@bench.command("reliability")
@click.option("--clients", default=8, show_default=True, help="Concurrent clients in the load phase.")
@click.option("--seconds", default=300.0, show_default=True, help="Length of the load phase.")
@click.option("--short", is_flag=True, help="The make-test version: 4 clients for 45 s, one kill -9, the sweep.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("reports/reliability.json"), show_default=True)
@pass_settings
@friendly
def bench_reliability(settings: Settings, clients, seconds, short, out) -> None:
    """Load, kill -9 mid-upload, bad input: against a served copy of the index; exit 1 when an aim fails."""
    from serve.bench_reliability import run_reliability

    if short:
        clients, seconds = 4, 45.0
    text, ok = run_reliability(settings, clients, seconds, settings.path(out), echo=click.echo, short=short)
    click.echo(text)
    if not ok:
        sys.exit(1)


def _probe(settings: Settings) -> None:
    """Load the native engine in a child and generate a few tokens; exit with the probe's one line if it dies."""
    from serve.engines.probe import probe_command, run_probe

    result = run_probe(probe_command(settings))
    if not result.ok:
        raise click.ClickException(result.message)


@cli.command()
@click.option("--build-only", is_flag=True, help="Only check the installed llama.cpp build (no AMX); used by `make install`.")
@click.option("--no-probe", is_flag=True, help="Skip the engine probe.")
@pass_settings
def doctor(settings: Settings, build_only: bool, no_probe: bool) -> None:
    """Print what a bug report needs: versions, llama.cpp's build, AMX flags, models, the index, the engine probe."""
    from .doctor import DoctorError, check_build, cpu_amx_flags, report

    if build_only:
        try:
            info = check_build()
        except DoctorError as e:
            raise click.ClickException(str(e)) from e
        click.echo(f"llama.cpp build ok (no AMX; CPU advertises: {' '.join(cpu_amx_flags()) or 'no AMX'}): {info}")
        return
    lines, problems = report(settings, probe=not no_probe)
    click.echo("\n".join(lines))
    if problems:
        raise click.ClickException("; ".join(problems))


@bench.command("decode")
@click.option("--build", "builds", multiple=True, help="NAME=DIR[:no-extra-bufts]: a `pip install --target DIR` copy of "
              "llama-cpp-python (DIR empty = the installed one). Default: the installed build alone.")
@click.option("--tokens", default=128, show_default=True)
@click.option("--rounds", default=3, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("reports/bench-decode.json"), show_default=True)
@pass_settings
def bench_decode(settings: Settings, builds, tokens, rounds, out) -> None:
    """Decode tokens/s of llama.cpp builds on the configured GGUF, interleaved in one run (ratios to the first)."""
    import json

    from serve.bench_decode import compare, parse_build
    from serve.engines.base import resolve_model

    try:
        specs = [parse_build(b) for b in builds] or [("installed", "", True)]
    except ValueError as e:
        raise click.BadParameter(str(e)) from e
    model = str(settings.path(resolve_model(settings.llm.model)[0]))
    result = compare(specs, model, tokens, rounds, settings.llm.n_threads)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": model, "tokens": tokens, "rounds": rounds, "builds": result}, indent=1))
    click.echo(f"{'build':<12} {'tokens/s':>9} {'ratio':>6}  runs")
    for name, r in result.items():
        click.echo(f"{name:<12} {r['tokens_per_s']:>9.1f} {r['ratio']:>6.3f}  {r['runs']}")
    click.echo(f"written: {out}")


def _llm_overrides(settings: Settings, engine: str | None, model: str | None, base_url: str | None) -> Settings:
    update = {k: v for k, v in {"engine": engine, "model": model, "base_url": base_url}.items() if v}
    return settings.model_copy(update={"llm": settings.llm.model_copy(update=update)}) if update else settings


@cli.command()
@click.option("--engine", type=click.Choice(["llamacpp", "openai", "vllm", "transformers"]), default=None, help="Overrides llm.engine.")
@click.option("--model", default=None, help="Overrides llm.model (GGUF path, HF folder/id, or the remote model name).")
@click.option("--base-url", default=None, help="Overrides llm.base_url (openai engine).")
@click.option("--host", default=None, help="Overrides serve.host (127.0.0.1 by default).")
@click.option("--port", type=int, default=None, help="Overrides serve.port.")
@pass_settings
@friendly
def serve(settings: Settings, engine, model, base_url, host, port) -> None:
    """Run the UI (/) and the OpenAI-compatible API (/v1) in one process; ingests first when the index is stale."""
    import uvicorn

    from serve import create_app

    from serve.promoted import serving_settings

    settings = serving_settings(_llm_overrides(settings, engine, model, base_url))  # a promoted adapter wins
    host, port = host or settings.serve.host, port or settings.serve.port
    _probe(settings)  # before uvicorn binds: a native crash becomes one line, not a dead server
    app = create_app(settings)
    click.echo(f"ftatlas: serving on http://{host}:{port}/ (UI) and http://{host}:{port}/v1 (API), engine {settings.llm.engine}")
    uvicorn.run(app, host=host, port=port, log_level="warning")
    rag = app.state.ftatlas.rag if hasattr(app.state, "ftatlas") else None
    if rag is not None:
        rag.close()  # stops a vllm child process too


@cli.command()
@click.argument("question")
@click.option("--mode", default=None,
              help="atlas-rag, atlas-base, atlas-rag-lora or atlas-rag-lora-<base> (llm.adapters); default: "
                   "serve.default_model, or atlas-rag when its adapter does not load.")
@click.option("--engine", type=click.Choice(["llamacpp", "openai", "vllm", "transformers"]), default=None)
@click.option("--max-tokens", type=int, default=None)
@click.option("--history", "history_file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="JSON list of earlier {role, content} turns (user/assistant): QUESTION is then a follow-up.")
@pass_settings
@friendly
def ask(settings: Settings, question: str, mode: str, engine, max_tokens, history_file) -> None:
    """Answer one question, then list the numbered sources (and the model's verified quotes, if any)."""
    from ingest import ingest as run_ingest
    from serve import RagEngine
    from serve.prompt import load_history

    from serve.promoted import serving_settings

    history = load_history(history_file) if history_file else []
    settings = serving_settings(_llm_overrides(settings, engine, None, None))  # a promoted adapter wins
    _probe(settings)
    run_ingest(settings, progress=False)
    rag = RagEngine(settings)
    try:
        chosen = mode or settings.serve.default_model
        if chosen.startswith("atlas-rag-lora"):
            rag.load_adapter()
        if mode is None and chosen not in rag.models():
            why = rag.adapter_errors.get(chosen, "not configured")
            click.echo(f"note: the default model {chosen} is not served ({why}); answering with atlas-rag", err=True)
            chosen = "atlas-rag"
        out = rag.complete(chosen, history + [{"role": "user", "content": question}], max_tokens=max_tokens)
    finally:
        rag.close()
    click.echo(out["choices"][0]["message"]["content"])
    for e in (out.get("grounding") or {}).get("evidence") or []:
        click.echo(f"  evidence [{e['index']}]: {e['text']}")
    if out["sources"]:
        click.echo("\nSources:")
        for s in sorted(out["sources"], key=lambda s: s["index"]):
            where = f" > {s['section'].split(' > ')[-1]}" if s["section"] else ""
            click.echo(f"[{s['index']}] {s['title']}{where} ({s['source']}) score {s['score']:.3f}")
    if out.get("grounding"):
        click.echo(f"(grounding: {out['grounding']['mode']}, supported {out['grounding']['supported']})")


@cli.command()
@click.option("--answers", default=None, help="Comma-separated yes/no (да/нет) answers: print the result and exit, no prompts.")
@click.option("--situation", default=None, help="Describe your case; the answers it implies are pre-filled (with --answers: no prompts).")
@click.option("--language", type=click.Choice(["en", "ru"]), default=None, help="Default: the situation's language, else en.")
@pass_settings
@friendly
def advise(settings: Settings, answers: str | None, situation: str | None, language: str | None) -> None:
    """Walk the atlas's decision chart to a method, with the recommendation cited [n] from the corpus."""
    from ingest import ingest as run_ingest
    from serve.advice_api import advise as step
    from serve.advisor import Advisor
    from serve.retrieval import Retriever, is_russian

    summary = run_ingest(settings, progress=False)
    for name, reason in summary.failed:
        click.echo(f"warning: {name}: {reason}", err=True)
    advisor = Advisor.load(settings)
    language = language or ("ru" if situation and is_russian(situation) else "en")
    retrievers: list[Retriever] = []

    def retriever() -> Retriever:
        if not retrievers:
            retrievers.append(Retriever(settings))
        return retrievers[0]

    given = [a.strip() for a in answers.split(",") if a.strip()] if answers else []
    # --answers is a script; --situation alone still asks what it could not infer, unless nobody is there to ask.
    scripted = answers is not None or (situation is not None and not sys.stdin.isatty())
    while True:
        out = step(advisor, retriever, given, language, situation)
        if out.get("inferred") and not scripted:
            for i in out["inferred"]:
                q = next(s["question"] for s in out["path"] if s["id"] == i["id"])
                click.echo(f"inferred: {q} -> {i['answer']} (from {i['from']!r})")
            if click.confirm("Use these inferred answers?", default=True):
                given = [s["answer"] for s in out["path"]]
            situation = None
            continue
        _echo_advice(out)
        if out["done"] or scripted:
            return
        reply = click.prompt(f"{out['question']['text']} [yes/no/back]", type=click.Choice(
            ["yes", "no", "да", "нет", "y", "n", "back"], case_sensitive=False), show_choices=False)
        given = given[:-1] if reply.lower() == "back" else given + [reply]


def _echo_advice(out: dict) -> None:
    for s in out["path"]:
        mark = f"  (inferred from {s['inferred_from']!r})" if s.get("inferred_from") else ""
        click.echo(f"  {s['question']} -> {s['said']}{mark}")
    if not out["done"]:
        click.echo(f"next question: {out['question']['text']}")
        return
    click.echo(f"\n{out['leaf']['text']}\n")
    click.echo(out["answer"])
    click.echo("\nSources:")
    for src in out["sources"]:
        where = f" > {src['section'].split(' > ')[-1]}" if src["section"] else ""
        click.echo(f"[{src['index']}] {src['title']}{where} ({src['doc_id']})")


@cli.command()
@click.option("--model", "preset", default=None, help="Preset: 7b, 13b, 33b, 65b, 70b (LLaMA-style) or gpt3-175b.")
@click.option("--layers", type=int, default=None, help="Instead of --model: number of layers ...")
@click.option("--hidden", type=int, default=None, help="... hidden size ...")
@click.option("--vocab", type=int, default=None, help="... and vocabulary size (MLP 4 x hidden unless --ffn).")
@click.option("--ffn", type=int, default=None, help="MLP width (with --layers).")
@click.option("--method", type=click.Choice(["full", "lora", "qlora", "inference"]), default="qlora", show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16", "int8", "nf4"]), default="bf16", show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=1, show_default=True)
@click.option("--seq-len", type=click.IntRange(1), default=512, show_default=True)
@click.option("--lora-rank", type=click.IntRange(1), default=16, show_default=True)
@click.option("--lora-modules", default=None, help="Comma-separated of q,k,v,o,gate,up,down (default: all).")
@click.option("--published", is_flag=True, help="Print the calculator beside the papers' published figures.")
@pass_settings
@friendly
def memory(settings: Settings, preset, layers, hidden, vocab, ffn, method, precision, batch_size, seq_len, lora_rank,
           lora_modules, published) -> None:
    """GPU memory for training or serving: weights, gradients, optimizer state, adapter, activations, with formulas."""
    from serve.memory import compare_published, estimate, model_from

    if published:
        for row in compare_published():
            click.echo(f"{row['what']}: published {row['published_gb']:g} GB, ours {row['ours_gb']:g} GB "
                       f"(x{row['ratio']}) - {row['claim']}")
        return
    model = model_from(preset, layers=layers, hidden=hidden, vocab=vocab, ffn=ffn)
    modules = [m.strip() for m in lora_modules.split(",") if m.strip()] if lora_modules else None
    click.echo(estimate(model, method, precision, batch_size, seq_len, lora_rank, modules).text())


@cli.command()
@click.option("--file", "path", type=click.Path(path_type=Path, dir_okay=False), default=Path("evals/situations.jsonl"),
              show_default=True, help="Labelled situations (JSONL).")
@click.option("--model", "with_model", is_flag=True, help="Also ask the configured LLM about the questions the rules leave open.")
@pass_settings
@friendly
def situations(settings: Settings, path: Path, with_model: bool) -> None:
    """Accuracy of pre-filling the advisor's answers from a described situation: rules alone, or rules + model."""
    import json

    from evals.situations import load_situations, score
    from ingest import ingest as run_ingest
    from serve.advisor import Advisor
    from serve.situation import infer, infer_with_model

    run_ingest(settings, progress=False)
    advisor = Advisor.load(settings)
    rows = load_situations(settings.path(path))
    report = {"rules": score(rows, lambda text, lang: infer(advisor, text))}
    if with_model:
        from serve.engines import create_engine

        engine = create_engine(settings)
        try:
            report["rules+model"] = score(rows, lambda text, lang: infer_with_model(advisor, text, engine, lang))
        finally:
            engine.close()
    for how, by_lang in report.items():
        for lang, r in by_lang.items():
            click.echo(f"{how:12} {lang}: accuracy {r['accuracy']:.3f} ({r['right']}/{r['labelled']} labelled answers), "
                       f"precision {r['precision']:.3f} ({r['right']}/{r['inferred']} inferred), {r['situations']} situations")
    out = settings.path(settings.evals.reports_dir) / "situations.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")
    click.echo(f"written {out}")


def main() -> None:
    cli(prog_name="ftatlas")


if __name__ == "__main__":
    main()
