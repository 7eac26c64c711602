"""Domain errors of the serving room; the API maps them to OpenAI-shaped HTTP errors, the CLI to messages."""


class ServeError(Exception):
    """Base class; `status` and `code` are what the HTTP edge answers with."""

    status = 500
    code = "internal_error"
    type = "server_error"


class BadRequest(ServeError):
    status, code, type = 400, "invalid_request", "invalid_request_error"


class ContextOverflow(BadRequest):
    code = "context_length_exceeded"


class UnknownModel(ServeError):
    status, code, type = 404, "model_not_found", "invalid_request_error"


class EngineUnavailable(ServeError):
    """The LLM engine cannot be reached or failed to start."""

    status, code, type = 503, "engine_unavailable", "server_error"


class NotReady(ServeError):
    status, code, type = 503, "not_ready", "server_error"


class TooLarge(ServeError):
    status, code, type = 413, "request_too_large", "invalid_request_error"
