"""Question -> retrieval -> prompt -> LLM engine -> answer with citations; the HTTP API and the UI."""

from .errors import BadRequest, ContextOverflow, EngineUnavailable, QueueFull, ServeError, UnknownModel
from .rag import RagEngine
from .retrieval import Passage, RetrievalOptions, Retriever


def create_app(settings, **kwargs):
    """The FastAPI app (API + UI); imported lazily so the CLI's other commands stay fast."""
    from .api import create_app as _create

    return _create(settings, **kwargs)


__all__ = ["BadRequest", "ContextOverflow", "EngineUnavailable", "Passage", "QueueFull", "RagEngine", "RetrievalOptions",
           "Retriever", "ServeError", "UnknownModel", "create_app"]
