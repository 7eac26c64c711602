"""The server's outer doors (ASGI middleware): writes only from its own origin, request bodies only up to a limit."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

WRITES = {"POST", "PUT", "PATCH", "DELETE"}
MIB = 2**20


def _error(message: str, code: str, status: int) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "code": code}}, status)


def origin_allowed(origin: str, host: str, scheme: str, allowed: list[str], own_host: str) -> bool:
    """Is a browser's Origin this server itself (or a configured origin)?

    The Host header must name the server as an IP address, localhost or serve.host: a DNS-rebinding page at
    http://evil.example:7860 sends a matching Host and Origin, but not one of those names.
    Example: ('http://127.0.0.1:7860', '127.0.0.1:7860', 'http', [], '127.0.0.1') -> True;
    ('http://evil.example', '127.0.0.1:7860', 'http', [], '127.0.0.1') -> False.
    """
    origin = origin.strip().rstrip("/").lower()
    if origin in {a.strip().rstrip("/").lower() for a in allowed}:
        return True
    if not host or origin != f"{scheme}://{host}".lower():
        return False
    name = urlsplit(origin).hostname or ""
    if name in ("localhost", own_host.lower()):
        return True
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


class OriginCheck:
    """Refuses a write (and any websocket) whose Origin header is another site's: an OpenAI-shaped 403.

    Without an Origin header (curl, the openai client, scripts) a request passes: only browsers send one, and a
    browser always does on a cross-site write. This covers every route, including Gradio's and any added later.
    """

    def __init__(self, app, settings):
        self.app, self.settings = app, settings

    async def __call__(self, scope, receive, send):
        kind = scope["type"]
        if kind not in ("http", "websocket") or (kind == "http" and scope["method"] not in WRITES):
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        scheme = {"ws": "http", "wss": "https"}.get(scope.get("scheme", "http"), scope.get("scheme", "http"))
        serve = self.settings.serve
        if origin is None or origin_allowed(origin, headers.get("host", ""), scheme, serve.allowed_origins, serve.host):
            return await self.app(scope, receive, send)
        if kind == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        message = (f"cross-origin write refused: Origin {origin} is not this server; "
                   "add it to serve.allowed_origins to allow it")
        await _error(message, "origin_not_allowed", 403)(scope, receive, send)


class _TooLarge(Exception):
    pass


class BodyLimit:
    """Answers 413 once a request body passes serve.max_upload_mb plus 1 MiB (multipart framing), counting bytes as they arrive.

    FastAPI's UploadFile spools the whole body before a handler runs, so a handler's check comes too late; a
    declared Content-Length over the limit is refused before anything is read.
    """

    def __init__(self, app, settings):
        self.app, self.settings = app, settings

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        upload_mb = self.settings.serve.max_upload_mb
        limit = int((upload_mb + 1) * MIB)
        message = f"request body too large: uploads are limited to {upload_mb:g} MiB (serve.max_upload_mb)"
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return await _error(message, "request_too_large", 413)(scope, receive, send)
        seen = {"bytes": 0, "over": False, "started": False}

        async def counted():
            msg = await receive()
            if msg["type"] == "http.request":
                seen["bytes"] += len(msg.get("body", b""))
                if seen["bytes"] > limit:
                    seen["over"] = True
                    raise _TooLarge()
            return msg

        async def guarded(msg):
            if seen["over"]:
                return  # whatever the app answers to the aborted read, the client gets the 413 below
            seen["started"] = seen["started"] or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, counted, guarded)
        except _TooLarge:
            pass
        except Exception:
            if not seen["over"]:
                raise
        if seen["over"] and not seen["started"]:
            await _error(message, "request_too_large", 413)(scope, receive, send)
