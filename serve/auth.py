"""Who may come in: with serve.api_keys set, a Bearer key, or (off /v1) the cookie the login page gives for any key."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse

COOKIE = "ftatlas_session"
OPEN_PATHS = {"/health", "/login"}


def key_matches(token: str, keys: list[str]) -> str | None:
    """The configured key equal to `token` (constant-time), else None; an empty token never matches.

    Example: ('s3cret', ['other', 's3cret']) -> 's3cret'; ('', ['']) -> None.
    """
    found = None
    for k in keys:
        if hmac.compare_digest(token.encode(), k.encode()) and token.strip():
            found = k
    return found


def bearer(headers: Headers) -> str:
    """Example: 'Authorization: Bearer abc' -> 'abc'; no header -> ''."""
    auth = headers.get("authorization", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else ""


def _sign(key: str, nonce: str) -> str:
    return hmac.new(key.encode(), b"ftatlas-session:" + nonce.encode(), hashlib.sha256).hexdigest()


def new_session(key: str) -> str:
    """A cookie value signed with the key the user typed: it stays valid across restarts until that key is removed."""
    nonce = secrets.token_urlsafe(18)
    return f"{nonce}.{_sign(key, nonce)}"


def session_key(value: str, keys: list[str]) -> str | None:
    """The key a session cookie was signed with (the one its user typed at /login), else None."""
    nonce, _, sig = (value or "").partition(".")
    if not (nonce and sig):
        return None
    return next((k for k in keys if k.strip() and hmac.compare_digest(sig, _sign(k, nonce))), None)


def session_valid(value: str, keys: list[str]) -> bool:
    return session_key(value, keys) is not None


def _unauthorized(api: bool):
    hint = "Authorization: Bearer <key>" if api else "Authorization: Bearer <key>, or log in at /login"
    body = {"error": {"message": f"missing or invalid API key ({hint})", "type": "invalid_request_error",
                      "code": "invalid_api_key"}}
    return JSONResponse(body, 401, headers={"WWW-Authenticate": "Bearer"})


class KeyGate:
    """ASGI middleware: every path but /health and /login needs a key once serve.api_keys is set.

    The API (/v1) takes only Bearer keys. Everything else (the UI, Gradio's /config, /gradio_api/*, file and
    queue routes, whatever is mounted later) also takes the session cookie set by /login, since a browser cannot
    send a Bearer header. A page load without either is sent to /login; any other request gets a 401.
    """

    def __init__(self, app, settings):
        self.app, self.settings = app, settings

    async def __call__(self, scope, receive, send):
        keys = self.settings.serve.api_keys
        if scope["type"] not in ("http", "websocket") or not keys or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        api = scope["path"] == "/v1" or scope["path"].startswith("/v1/")
        if key_matches(bearer(headers), keys) or (not api and session_valid(_cookie(headers, COOKIE), keys)):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        page = scope["method"] == "GET" and "text/html" in headers.get("accept", "") and not api
        response = RedirectResponse("/login", 303) if page else _unauthorized(api)
        await response(scope, receive, send)


def _cookie(headers: Headers, name: str) -> str:
    for part in headers.get("cookie", "").split(";"):
        k, _, v = part.strip().partition("=")
        if k == name:
            return v
    return ""


LOGIN_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>ftatlas: log in</title>
<style>body{{font-family:sans-serif;max-width:26em;margin:5em auto}}input{{font-size:1.1em;padding:.3em;width:100%}}
button{{margin-top:1em;font-size:1.1em}}.err{{color:#b00}}</style></head><body>
<h1>ftatlas</h1><p>This server needs a key. Enter any of its API keys (<code>serve.api_keys</code>).</p>
<form method="post" action="/login"><input type="password" name="password" id="password" autofocus
placeholder="API key" aria-label="API key"><button type="submit" id="login">Log in</button></form>{error}</body></html>"""


def add_login(app, settings) -> None:
    """GET /login shows the form; POST /login checks the password against serve.api_keys and sets the cookie."""

    @app.get("/login", include_in_schema=False)
    def login_form():
        if not settings.serve.api_keys:
            return RedirectResponse("/", 303)
        return HTMLResponse(LOGIN_PAGE.format(error=""))

    @app.post("/login", include_in_schema=False)
    async def login(request: Request):
        form = await request.form()
        key = key_matches(str(form.get("password") or ""), settings.serve.api_keys)
        if key is None:
            error = "<p class='err' id='login-error'>That is not one of this server's keys.</p>"
            return HTMLResponse(LOGIN_PAGE.format(error=error), 401)
        response = RedirectResponse("/", 303)
        secure = request.url.scheme == "https"
        response.set_cookie(COOKIE, new_session(key), httponly=True, samesite="strict", secure=secure, path="/")
        return response
