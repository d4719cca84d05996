"""Request guards for a page with no login that can promote models: same-origin writes only.

A web page on another site can make the browser send requests to ``127.0.0.1:5050``; it must not
be able to upload, convert or promote through it. Three layers:

- **Host check** (Starlette's ``TrustedHostMiddleware``, set up in the app): a request whose
  ``Host`` is not this page's own name is refused, which defeats DNS rebinding (a hostile name
  resolving to 127.0.0.1 still sends its own name as ``Host``).
- **Token** on every state-changing request: ``POST``/``PUT``/``PATCH``/``DELETE`` must carry the
  header ``X-SafeFlavor-CSRF`` with this process's random token. The page reads it from its own
  HTML; another origin cannot read that HTML, and cannot add a custom header to a cross-origin
  request without a CORS preflight, which this app never grants.
- **Origin / Fetch Metadata**: when the browser says where a write comes from (``Origin``,
  ``Sec-Fetch-Site``), it must be this page.

Every response also gets a strict Content-Security-Policy (scripts and styles only from this
app, no inline script, no framing) and ``nosniff``, so text from a hostile pickle — import names
are the attacker's strings — can only ever be shown as text.
"""

from __future__ import annotations

import hmac
import json
import secrets
from typing import Any

CSRF_HEADER = "x-safeflavor-csrf"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
     b"object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]


def new_token() -> str:
    """A fresh per-process CSRF token."""
    return secrets.token_urlsafe(32)


class GuardMiddleware:
    """Pure ASGI middleware: refuse cross-site writes, add security headers to every answer."""

    def __init__(self, app: Any, *, token: str) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is not None:
            await self._deny(send, refusal)
            return

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0].lower() not in {k for k, _ in SECURITY_HEADERS}]
                message = {**message, "headers": headers + SECURITY_HEADERS}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _refusal(self, scope: dict) -> str | None:
        if scope["method"] in SAFE_METHODS:
            return None
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        site = headers.get("sec-fetch-site")
        if site is not None and site not in ("same-origin", "none"):
            return f"a {site} request cannot change anything here (Sec-Fetch-Site: {site})."
        origin = headers.get("origin")
        if origin is not None:
            own = f"{scope.get('scheme', 'http')}://{headers.get('host', '')}"
            if origin != own:
                return f"requests from {origin[:100]} cannot change anything here; use this page itself ({own})."
        sent = headers.get(CSRF_HEADER, "")
        if not sent or not hmac.compare_digest(sent.encode(), self.token.encode()):
            return (f"missing or wrong {CSRF_HEADER} header. Changes are accepted only from this page's "
                    "own forms (scripts can read the token from GET /api/csrf on the same origin).")
        return None

    async def _deny(self, send: Any, message: str) -> None:
        body = json.dumps({"error_code": "PERMISSION_DENIED", "message": message}).encode()
        await send({"type": "http.response.start", "status": 403,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close"), *SECURITY_HEADERS]})
        await send({"type": "http.response.body", "body": body})
