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


class AdapterError(ServeError):
    """A LoRA adapter folder is missing, malformed, or does not fit the base model it is paired with. Serving and
    training both check adapters (serve/adapter.py), so the error lives here, where training can reach it too."""

    status, code, type = 503, "adapter_invalid", "server_error"


class NotReady(ServeError):
    status, code, type = 503, "not_ready", "server_error"


class TooLarge(ServeError):
    status, code, type = 413, "request_too_large", "invalid_request_error"


class UpstreamRejected(ServeError):
    """A remote engine refused the request itself (a 4xx, e.g. context too long): the caller's request is at fault,
    so the API answers with the same 4xx instead of blaming the engine with a 503."""

    type = "invalid_request_error"

    def __init__(self, message: str, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.status = status if 400 <= status < 500 else 400
        self.code = code or "upstream_rejected"


class QueueFull(ServeError):
    """serve.max_queue requests already wait for the engine; `retry_after_s` is the expected wait."""

    status, code, type = 429, "queue_full", "rate_limit_error"

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Busy(ServeError):
    """The index is locked by another ingest or delete for longer than ingest.lock_timeout_s: a deliberate 503."""

    status, code, type = 503, "index_busy", "server_error"

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ClientGone(ServeError):
    """The caller disconnected before its turn: nothing is generated for it."""

    status, code, type = 499, "client_closed_request", "invalid_request_error"


class Unsupported(BadRequest):
    """A request field this server does not implement (n > 1, tools, logprobs...); `param` names it."""

    code = "unsupported_parameter"

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param
