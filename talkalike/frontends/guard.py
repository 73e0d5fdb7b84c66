"""The server's front door: an ASGI middleware that checks every request before any route of `serve` runs.

- Host: only the address being served (any loopback spelling for a loopback bind), which stops DNS rebinding:
  a web page whose name is made to point at 127.0.0.1 still sends its own name.
- Origin: a request from a page on another origin is refused (CSRF); clients that send no Origin (curl, SDKs) pass.
  No route answers with CORS headers, so no other page may read a reply either.
- Content-Type: a POST must be application/json; text/plain is what a cross-site form or no-preflight fetch sends.
- Key: with an API key every route but the pages' own files needs `Authorization: Bearer KEY`; the blind test's
  routes (/ab/...) also take the raters' share token.
- Body: counted as it arrives (chunked or not) and refused with a 413 past the limit, and JSON nested deeper than
  MAX_DEPTH is refused before any parser sees it.
- Refusals are in OpenAI's error shape, or Ollama's ({"error": "..."}) on the paths of its API (`ollama_paths`).
- Every response carries a Content-Security-Policy (no inline code, nothing from elsewhere, no framing),
  nosniff, X-Frame-Options DENY and no Referer.

    app.add_middleware(Guard, settings=settings, share_token=token, ollama_paths=ollama.PATHS)
"""

import hmac
import re
from itertools import accumulate
from urllib.parse import urlsplit

PUBLIC = ("/", "/ab", "/favicon.ico")  # the pages themselves hold no data; what they show comes from guarded routes
PUBLIC_PREFIX = "/static/"
SHARED_PREFIX = "/ab/"  # the blind test's data: the API key or the raters' share token
MAX_DEPTH = 32  # an OpenAI request nests about 5 deep; 50,000 brackets only exist to crash a parser
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                 b"connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),  # the raters' link carries its token in the query
]
BODY_METHODS = ("POST", "PUT", "PATCH")
# A JSON string, its closing quote optional: an unterminated one then runs to the end in one match, so the scan stays
# linear (a pattern that needs the quote retries from every later quote).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_NOT_BRACKET = bytes(set(range(256)) - set(b"[]{}"))
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def json_depth(body: bytes) -> int:
    """How deep the brackets of a JSON text nest (strings skipped), without parsing it."""
    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKET)
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def allowed_hosts(host: str, is_loopback: bool) -> tuple[str, ...] | None:
    """The host names a request may name in its Host header; None for a wildcard bind (any name reaches it, and
    the API key it needs is what protects it)."""
    if is_loopback:
        return LOOPBACK_NAMES
    if host in ("0.0.0.0", "::", ""):
        return None
    return (f"[{host}]" if ":" in host else host).lower(),


def _split_host(value: str) -> tuple[str, str | None]:
    """'name:port' -> ('name', 'port'); IPv6 literals keep their brackets."""
    name, sep, port = value.rpartition(":")
    if not sep or name.endswith(":") or (value.startswith("[") and not name.endswith("]")):
        return value.lower(), None  # no port (or a bare IPv6 literal)
    return name.lower(), port


class Refused(Exception):
    """A request stopped at the door: its status, OpenAI-style error type and message."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code = status, message, type, code


class Guard:
    """The checks above, as a plain ASGI middleware: Starlette's BaseHTTPMiddleware would hide a client's hang-up
    from a streaming reply, which then ran on for nobody."""

    def __init__(self, app, settings, share_token: str | None = None, is_loopback: bool = True,
                 ollama_paths: tuple[str, ...] = ()):
        self.app, self.settings, self.share_token, self.ollama_paths = app, settings, share_token, ollama_paths
        self.hosts = allowed_hosts(settings.host, is_loopback)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def secured_send(message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(name, value) for name, value in SECURITY_HEADERS if name not in present]
                message = message | {"headers": [*message.get("headers", []), *extra]}
            await send(message)

        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        try:
            self.check(scope, headers)
            if "content-length" in headers or "transfer-encoding" in headers:
                receive = await self.read_body(receive, headers)
        except Refused as refused:
            await self.refuse(refused, scope, receive, secured_send)
            return
        except _Gone:
            return
        await self.app(scope, receive, secured_send)

    def check(self, scope, headers: dict[str, str]) -> None:
        """Raise Refused unless the request's Host, Origin, Content-Type and key are right."""
        port = str(scope["server"][1]) if scope.get("server") else None
        host = headers.get("host", "")
        name, host_port = _split_host(host)
        if self.hosts is not None and (name not in self.hosts or host_port not in (None, port)):
            raise Refused(421, f"this server answers only to {', '.join(self.hosts)} on port {port}, not {host!r}",
                          code="wrong_host")
        origin = headers.get("origin")
        if origin is not None and _netloc(origin) != host.lower():
            raise Refused(403, f"requests from another site ({origin}) are refused", code="cross_origin")
        if scope["method"] in BODY_METHODS:
            media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if media_type != "application/json":
                raise Refused(415, f"send the body as application/json, not {media_type or 'no content type'}",
                              code="unsupported_media_type")
        path = scope["path"]
        if self.settings.api_key and path not in PUBLIC and not path.startswith(PUBLIC_PREFIX):
            keys = [self.settings.api_key] + ([self.share_token] if self.share_token and
                                              path.startswith(SHARED_PREFIX) else [])
            sent = headers.get("authorization", "").encode()
            if not any(hmac.compare_digest(sent, f"Bearer {key}".encode()) for key in keys):
                raise Refused(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                              type="authentication_error", code="invalid_api_key")

    async def read_body(self, receive, headers: dict[str, str]):
        """The whole body, counted as it arrives and refused past the limit (the declared length is checked first,
        so an honest client learns at once); returns a `receive` that replays it and then passes on the rest."""
        limit = self.settings.max_body_bytes
        length = headers.get("content-length", "")
        if length.strip().isdigit() and int(length) > limit:
            raise Refused(413, too_large(limit), code="request_too_large")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Gone
            size += len(message.get("body", b""))
            if size > limit:
                raise Refused(413, too_large(limit), code="request_too_large")
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if headers.get("content-type", "").split(";", 1)[0].strip().lower() == "application/json" and \
                json_depth(body) > MAX_DEPTH:
            raise Refused(400, f"the JSON body nests deeper than {MAX_DEPTH} levels", code="too_deep")
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: the client's hang-up, which a streaming reply watches for
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return replay

    async def refuse(self, refused: Refused, scope, receive, send) -> None:
        from starlette.responses import JSONResponse

        body = {"error": {"message": refused.message, "type": refused.type, "param": None, "code": refused.code}}
        if scope["path"] in self.ollama_paths:
            body = {"error": refused.message}  # what Ollama's clients read and show
        # Closing the connection: a refused body may still be on its way, and it is not going to be read.
        await JSONResponse(body, status_code=refused.status, headers={"connection": "close"})(scope, receive, send)


class _Gone(Exception):
    """The client hung up while sending its request."""


def too_large(limit: int) -> str:
    return f"the request is larger than {limit} bytes; send a shorter history"


def _netloc(origin: str) -> str | None:
    """An Origin header's host[:port], or None for 'null' and anything that is not an http(s) origin."""
    parts = urlsplit(origin)
    return parts.netloc.lower() if parts.scheme in ("http", "https") and parts.netloc else None
