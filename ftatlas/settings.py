"""The one Settings object: settings.yaml, a settings-<profile>.yaml on top, then FTATLAS_<SECTION>__<FIELD> env vars."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict


class IngestSettings(BaseModel):
    data_dir: Path = Field(Path("data"), description="Where Chroma, the BM25 index, ingest state and caches live (git-ignored).")
    manifest: Path = Field(Path("corpus/manifest.yaml"), description="The corpus manifest ingested when no paths are given.")
    chroma_host: str | None = Field(None, description="Chroma server host; when set, use HttpClient instead of a local PersistentClient.")
    chroma_port: int = Field(8000, description="Chroma server port (with chroma_host).")
    collection: str = Field("ftatlas", description="Chroma collection name.")
    embed_model: str = Field("bundled", description="sentence-transformers model: 'bundled' (all-MiniLM-L6-v2 from its package), a local folder or a model name.")
    embed_batch_size: int = Field(64, description="Texts per SentenceTransformer.encode batch.")
    batch_size: int = Field(64, description="Chunks written to Chroma per committed batch.")
    chunk_tokens: int = Field(400, description="Target chunk size in embedder tokens.")
    chunk_overlap: int = Field(48, description="Overlap between consecutive text chunks in embedder tokens.")
    fetch_timeout_s: float = Field(20.0, description="Timeout for every network call of `corpus fetch`.")
    device: str = Field("cpu", description="Torch device for the embedder.")
    lock_timeout_s: float = Field(600.0, description="How long an ingest or delete waits for another process's "
                                  "lock on the index before it gives up.")


class RetrievalSettings(BaseModel):
    top_k: int = Field(5, description="Passages given to the model and returned as sources.")
    mode: Literal["hybrid", "dense", "bm25"] = Field("hybrid", description="Retrieval mode.")
    candidates: int = Field(30, description="Candidates each retriever contributes before fusion.")
    rrf_k: int = Field(60, description="Reciprocal rank fusion constant.")
    reranker: str | None = Field(None, description="Local sentence-transformers CrossEncoder folder; None disables reranking.")
    rerank: bool = Field(False, description="Rerank fused candidates with the cross-encoder (needs reranker).")
    glossary: Path = Field(Path("corpus/glossary.yaml"), description="Russian->English terms that expand Russian queries.")
    dense_weight: float = Field(0.15, description="Weight of the dense ranking in fusion for English queries.")
    dense_weight_ru: float = Field(0.5, description="Weight of the dense ranking for Russian queries (the embedder is English-only).")
    route_weight: float = Field(1.0, description="Weight of the ranking within the documents a question names (by title or heading).")
    diversity: Literal["cap", "mmr", "none"] = Field("none", description="How the top-k is spread: at most sections_per_doc "
                                                     "sections of a document not named by the question (cap), MMR, or "
                                                     "not at all (none: on the dev set both cost context fact recall).")
    sections_per_doc: int = Field(2, description="With diversity 'cap': sections of one unnamed document in the top-k.")
    mmr_lambda: float = Field(0.7, description="With diversity 'mmr': relevance against novelty (1 = relevance only).")


class LLMSettings(BaseModel):
    engine: Literal["llamacpp", "openai", "vllm", "transformers"] = Field("llamacpp", description="Which LLM engine answers.")
    model: str = Field("bundled", description="A base name (smollm2 = 'bundled', gemma3) or a GGUF path for llamacpp, model name/path for others.")
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint (…/v1) for the openai engine.")
    api_key: str = Field("not-needed", description="API key for the openai engine.")
    n_ctx: int = Field(8192, description="Context window in tokens (llama.cpp's own default of 512 is far too small).")
    n_threads: int | None = Field(None, description="CPU threads for llama.cpp; None lets it choose.")
    isolate: bool = Field(True, description="Run llama.cpp in a child process: a native crash there leaves the server "
                          "up, and /health names the signal.")
    adapter: Path | None = Field(None, description="The default LoRA adapter folder (peft layout), served as "
                                 "atlas-rag-lora: the same as llm.adapters[<the base of llm.model>].")
    adapters: dict[str, Path] = Field(default_factory=dict, description="Base name (smollm2, gemma3; see "
                                      "serve/bases.py) -> LoRA adapter folder. The entry for llm.model's base is "
                                      "atlas-rag-lora, every other one atlas-rag-lora-<base>.")
    max_tokens: int = Field(320, description="Default answer length in tokens: evidence quotes plus the answer (dev "
                            "set, one quote + answer: p95 155 SmolLM2 en, 167 Gemma ru; two quotes: p95 334, 249).")
    temperature: float = Field(0.0, description="Default sampling temperature (0 = greedy).")
    top_p: float = Field(0.9, description="Default nucleus sampling threshold.")
    repeat_penalty: float = Field(1.15, description="Repetition penalty; small models loop without it.")
    timeout_s: float = Field(120.0, description="Timeout for each call to a remote engine.")
    vllm_port: int = Field(8001, description="Port the vllm child process listens on.")
    vllm_tensor_parallel_size: int = Field(1, description="vLLM --tensor-parallel-size.")
    vllm_max_model_len: int = Field(8192, description="vLLM --max-model-len.")
    vllm_gpu_memory_utilization: float = Field(0.85, description="vLLM --gpu-memory-utilization.")
    vllm_startup_timeout_s: float = Field(600.0, description="How long to wait for vllm's /health.")
    grounding_overlap: float = Field(0.6, description="Min share of a sentence's content tokens found in one cited passage sentence.")
    grounding_similarity: float = Field(0.5, description="Min embedding cosine between a sentence and that passage sentence (both must hold).")
    generate_languages: list[str] | None = Field(None, description="Languages the model writes itself; others are "
                                                 "answered by quoting passages. None: those its base can write "
                                                 "(SmolLM2: en; Gemma 3: en, ru).")
    refuse_below: float = Field(0.35, description="Decline when no passage sentence reaches this relevance to the question.")
    # Tuned on the dev set only (Gemma adapter, 2026-12-02): unanswerable questions that pass refuse_below peak at
    # 0.59 (en) and 0.80 (ru); answerable ones the model declined start at 0.70 (en) and 0.45 (ru). In Russian no bar
    # separates them: 0.45 keeps every answerable one (one of five unanswerable ones is then answered by quoting).
    model_refusal_below: float = Field(0.65, description="The model's own 'no answer' stands only below this best relevance; "
                                       "above it the model is asked once more without that way out, and the passages are quoted if it "
                                       "still cannot answer (unanswerable training questions peak at 0.86).")
    model_refusal_below_ru: float | None = Field(0.45, description="model_refusal_below for Russian questions, whose "
                                                 "relevance reads lower through the English-only embedder (None: the same).")
    grounding_top_sentences: int = Field(6, description="A generated sentence must restate one of this many passage "
                                         "sentences most relevant to the question.")
    extractive_sentences: int = Field(3, description="Passage sentences quoted by an extractive answer.")
    # Tuned on the dev set only (2026-12-02, 78 answerable questions): None -> 0.4 raised quote precision (the share of
    # quoted sentences holding a gold fact) en 0.359 -> 0.466, ru 0.368 -> 0.406, for fact recall en 0.692 -> 0.679,
    # ru 0.628 -> 0.628; 0.35-0.45 give the same fact recall (a plateau), 0.3 loses more.
    extractive_within: float | None = Field(0.4, description="An extractive answer quotes only sentences at most this "
                                            "far below the best one's relevance (None: always extractive_sentences).")
    # Tuned on the dev set only (2026-12-03, its 140 questions, the quotes scored without a model): 1 -> None raised
    # their fact recall en 0.649 -> 0.699, ru 0.608 -> 0.664 and quote precision 0.335 -> 0.354 (2: en 0.699, ru
    # 0.648). The fact a question asks for often sits in the sentence after the best one, in the same passage.
    extractive_per_passage: int | None = Field(None, description="Sentences an extractive answer may quote from one "
                                               "passage (None: as many as extractive_sentences).")
    grounding_min_supported: float = Field(0.5, description="Below this share of supported sentences the answer turns extractive.")


class ServeSettings(BaseModel):
    host: str = Field("127.0.0.1", description="Interface to listen on.")
    port: int = Field(7860, description="Port for the UI (/) and the API (/v1).")
    api_keys: list[str] = Field(default_factory=list, description="When non-empty, every route but /health needs "
                                "'Authorization: Bearer <key>'; the UI asks for any of these keys as its password.")
    allowed_origins: list[str] = Field(default_factory=list, description="Web origins (scheme://host[:port]) besides "
                                       "the server's own that may send writes (POST, PUT, PATCH, DELETE).")
    max_upload_mb: float = Field(20.0, gt=0, description="Largest uploaded document (API and UI), in MiB; a request "
                                 "body over this plus 1 MiB is refused with 413 while it arrives.")
    history_tokens: int = Field(600, description="Token budget for conversation history in the prompt.")
    system_tokens: int = Field(300, description="Token budget for a client's own system message (after the server's rules).")
    max_queue: int = Field(8, ge=0, description="Requests that may wait for the engine; past that the API answers 429 "
                           "with Retry-After.")
    max_active: int = Field(1, ge=1, description="Generations at once (1 for an in-process model; more for a remote "
                            "vLLM that batches).")
    log_answers: bool = Field(True, description="Keep the answer log (<data_dir>/answers.sqlite3): each answer's "
                              "messages, prompt with passages, model, adapter and its hash, passage ids and scores, "
                              "answer and grounding mode, so it can be rated (POST /v1/feedback). Off: nothing is "
                              "stored and feedback gets a 409.")
    answer_log_max_rows: int = Field(100_000, ge=1, description="Answers the log keeps; past that the oldest unrated "
                                     "ones are pruned first.")
    default_model: str = Field("atlas-rag", description="The model the UI and `ftatlas ask` offer first: the best "
                               "measured in reports/latest (a test holds settings.yaml to it); atlas-rag when it is "
                               "not served.")

    @field_validator("api_keys")
    @classmethod
    def _no_blank_keys(cls, keys: list[str]) -> list[str]:
        if any(not k.strip() for k in keys):
            raise ValueError("an empty or whitespace-only API key would let anyone in; remove it or set a real key")
        return keys

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, origins: list[str]) -> list[str]:
        """Example: 'https://Example.org/' -> 'https://example.org'."""
        out = []
        for o in origins:
            o = o.strip().rstrip("/").lower()
            if not re.fullmatch(r"https?://[^/\s]+", o):
                raise ValueError(f"{o!r} is not an origin like https://example.org or http://127.0.0.1:3000")
            out.append(o)
        return out


class FinetuneSettings(BaseModel):
    base_model: str = Field("bundled", description="A base name (smollm2 = 'bundled', gemma3: its shipped GGUF is "
                            "de-quantized once), or an HF folder or id to train on.")
    answer_only_logits: bool = Field(True, description="Run the LM head only where the loss reads (the answer): the "
                                     "same loss, far less compute for large vocabularies.")
    group_by_length: bool = Field(False, description="Batch examples of similar length together (less padding).")
    train_questions: Path = Field(Path("corpus/qa/train.jsonl"), description="Curated training questions.")
    runs_dir: Path = Field(Path("runs"), description="Where training runs are written.")
    oracle_drop_fraction: float = Field(0.2, description="RAFT P: share of examples whose oracle passage is left out.")
    distractors: int = Field(3, description="Distractor passages per example.")
    validation_fraction: float = Field(0.1, description="Share of examples held out for validation.")
    lora_r: int = Field(16, description="LoRA rank.")
    lora_alpha: int = Field(32, description="LoRA alpha.")
    lora_dropout: float = Field(0.05, description="LoRA dropout.")
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], description="Modules LoRA adapts.")
    learning_rate: float = Field(2e-4, description="Learning rate.")
    batch_size: int = Field(4, description="Per-device batch size.")
    grad_accum: int = Field(1, description="Gradient accumulation steps.")
    max_steps: int = Field(150, description="Optimizer steps.")
    max_seq_len: int = Field(768, description="Max tokens per example.")
    train_languages: list[str] = Field(default_factory=lambda: ["en", "ru"], description="Question languages trained "
                                       "on; the server writes only llm.generate_languages itself and quotes the rest.")
    qlora: bool = Field(False, description="Load the base in 4-bit NF4 (CUDA + bitsandbytes only).")
    seed: int = Field(13, description="Random seed for data and training.")


class EvalSettings(BaseModel):
    questions: Path = Field(Path("evals/questions.jsonl"), description="The dev gold question set (tuned on).")
    heldout: Path = Field(Path("evals/heldout.jsonl"), description="The held-out gold question set: never tuned on.")
    reports_dir: Path = Field(Path("reports"), description="Where eval runs are written.")
    thresholds: Path = Field(Path("evals/thresholds.json"), description="Committed retrieval-gate thresholds.")
    max_tokens: int = Field(320, description="Answer length during evals: evidence quotes plus the answer, as "
                            "llm.max_tokens (a generation that fails the grounding check stops at once).")


class Settings(BaseSettings):
    """Everything configurable, built once in the CLI and passed down."""

    model_config = SettingsConfigDict(env_prefix="FTATLAS_", env_nested_delimiter="__", extra="ignore")

    root: Path = Field(Path("."), description="Project root; relative paths below resolve against it.")
    ingest: IngestSettings = Field(default_factory=IngestSettings, description="Ingestion.")
    retrieval: RetrievalSettings = Field(default_factory=RetrievalSettings, description="Retrieval.")
    llm: LLMSettings = Field(default_factory=LLMSettings, description="LLM engine.")
    serve: ServeSettings = Field(default_factory=ServeSettings, description="HTTP server and UI.")
    finetune: FinetuneSettings = Field(default_factory=FinetuneSettings, description="Fine-tuning.")
    evals: EvalSettings = Field(default_factory=EvalSettings, description="Evaluations.")

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
        # env beats YAML (passed as init kwargs); explicit CLI flags are applied afterwards with model_copy.
        return (env_settings, init_settings)

    def path(self, p: Path | str) -> Path:
        """Resolve a configured path against the project root. Example: Path('data') -> <root>/data."""
        p = Path(p)
        return p if p.is_absolute() else (self.root / p).resolve()

    def relative(self, p: Path | str) -> str:
        """A path as records written into the project show it: relative to the project root when under it; a
        relative path or hub id as given. Example: <root>/data/finetune -> 'data/finetune'; /elsewhere/x unchanged."""
        p, root = Path(p), self.root.resolve()
        return str(p.resolve().relative_to(root)) if p.is_absolute() and p.resolve().is_relative_to(root) else str(p)

    @property
    def data_dir(self) -> Path:
        return self.path(self.ingest.data_dir)


def find_root(start: Path | None = None) -> Path:
    """The nearest folder at or above `start` holding settings.yaml, else the repo this package lives in."""
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / "settings.yaml").is_file():
            return d
    return Path(__file__).resolve().parent.parent


def deep_merge(base: dict, over: dict) -> dict:
    """Merge nested dicts, `over` winning; a None in `over` drops the key, so the field's default applies again.

    Example: {'a': {'x': 1, 'y': 2}} + {'a': {'y': 3}} -> {'a': {'x': 1, 'y': 3}}; {'a': {'x': 1}} + {'a': None} -> {}.
    """
    out = dict(base)
    for k, v in (over or {}).items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class SettingsError(Exception):
    """A settings file or profile is missing or malformed."""


def load_settings(profile: str | None = None, root: Path | None = None, **overrides: Any) -> Settings:
    """Build Settings from settings.yaml, settings-<profile>.yaml (profile or FTATLAS_PROFILE) and the environment."""
    root = Path(root).resolve() if root else find_root()
    profile = profile or os.environ.get("FTATLAS_PROFILE") or None
    data: dict = {}
    files = [root / "settings.yaml"] + ([root / f"settings-{profile}.yaml"] if profile else [])
    for f in files:
        if not f.is_file():
            if f.name != "settings.yaml":
                raise SettingsError(f"profile {profile!r}: {f} does not exist")
            continue
        try:
            loaded = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise SettingsError(f"{f}: not valid YAML: {e}") from e
        if not isinstance(loaded, dict):
            raise SettingsError(f"{f}: expected a mapping of sections")
        data = deep_merge(data, loaded)
    data = deep_merge(data, overrides)
    data["root"] = root
    try:
        return Settings(**data)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors())
        raise SettingsError(f"invalid settings: {problems}") from e
