"""`talkalike serve RUN`: a web chat page and an OpenAI-compatible API in one FastAPI app, on 127.0.0.1 by default.

- `/` is a messaging-style chat page (static files, no build step); it streams the persona's messages as separate
  bubbles from `/api/chat` and has a base-vs-tuned switch.
- `/v1/models` and `/v1/chat/completions` (streaming SSE or not) follow OpenAI's API, so any OpenAI client works.
  Model ids: the run's name (tuned) and "<run>:base" (adapter off). A reply of several messages is one `content`
  with the messages joined by "\\n"; the separate messages are also in `message.talkalike_messages`.
  `system` messages are ignored: the twin was trained on conversations without one.
- Safe by default: loopback only; any other address needs an API key (bearer). Request size, history length and
  max_tokens are capped. One reply is generated at a time; others queue, and one that waits too long gets a 503.

    talkalike serve dana                               # http://127.0.0.1:8000
    TALKALIKE_API_KEY=secret talkalike serve dana --host 0.0.0.0
"""

import asyncio
import hmac
import ipaddress
import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from talkalike.decode.config import GenerationConfig, with_overrides
from talkalike.decode.stream import stream_reply
from talkalike.decode.turns import collect_messages
from talkalike.decode.twin import Twin, load_twin, talk_as
from talkalike.errors import TalkalikeError
from talkalike.files import say
from talkalike.home import resolve_home

STATIC = Path(__file__).parent / "static"
PROTECTED = ("/v1/", "/api/")  # what the API key guards; the page's own files are public and hold no data


@dataclass(frozen=True)
class ServeSettings:
    """Server limits; the defaults suit one person chatting with their twin."""

    host: str = "127.0.0.1"  # loopback: nothing outside this machine can reach the twin
    port: int = 8000
    api_key: str | None = None  # required (bearer) whenever host is not loopback
    max_body_bytes: int = 256 * 1024  # a long chat history is tens of KB; more is a mistake or abuse
    max_messages: int = 400  # history length; the model reads only its context window anyway
    max_tokens: int = 1024  # per reply; a WhatsApp turn is far shorter
    queue_timeout_s: float = 120.0  # a request waiting longer than this for the model gets a 503
    max_waiting: int = 16  # requests queued beyond this are refused at once (429)


def is_loopback(host: str) -> bool:
    """Whether `host` only listens on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_settings(settings: ServeSettings) -> None:
    """Refuse to serve beyond loopback without an API key."""
    if not is_loopback(settings.host) and not settings.api_key:
        raise TalkalikeError(
            f"binding to {settings.host} exposes your twin to the network; set an API key with --api-key or "
            "$TALKALIKE_API_KEY, or keep the default --host 127.0.0.1"
        )


class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def model_ids(twin: Twin) -> dict[str, bool]:
    """Served model ids -> whether the adapter is on."""
    if twin.has_adapter:
        return {twin.name: True, f"{twin.name}:base": False}
    return {twin.name: False}


def _content(message: dict) -> str:
    """A message's text: a string, or OpenAI's list of parts (text parts are joined)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        return "".join(p.get("text", "") for p in content if p.get("type") == "text")
    raise ApiError(400, "each message needs a 'content' string (or a list of text parts)", param="messages")


def parse_history(messages, settings: ServeSettings) -> list[dict]:
    """OpenAI messages -> the generator's history (system messages dropped), within the limits."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {role, content} objects", param="messages")
    if len(messages) > settings.max_messages:
        raise ApiError(400, f"at most {settings.max_messages} messages per request (got {len(messages)}); "
                            "send only the recent history", param="messages", code="too_many_messages")
    history = []
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ("system", "developer", "user", "assistant"):
            raise ApiError(400, "each message needs a role of 'user', 'assistant' or 'system'", param="messages")
        if message["role"] in ("user", "assistant"):
            history.append({"role": message["role"], "content": _content(message)})
    if not history or history[-1]["role"] != "user":
        raise ApiError(400, "the last message must be the user's: the twin answers it", param="messages")
    return history


def request_config(body: dict, defaults: GenerationConfig, settings: ServeSettings) -> GenerationConfig:
    """Sampling settings from an OpenAI request body over the twin's defaults."""
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (not isinstance(max_tokens, int) or not 0 < max_tokens <= settings.max_tokens):
        raise ApiError(400, f"max_tokens must be an integer from 1 to {settings.max_tokens}", param="max_tokens")
    if body.get("n", 1) != 1:
        raise ApiError(400, "only n=1 is supported", param="n")
    numbers = {"temperature": (0.0, 2.0), "top_p": (0.0, 1.0), "repetition_penalty": (0.5, 2.0)}
    for name, (low, high) in numbers.items():
        value = body.get(name)
        if value is not None and (not isinstance(value, (int, float)) or not low <= value <= high):
            raise ApiError(400, f"{name} must be a number from {low} to {high}", param=name)
    seed = body.get("seed")
    if seed is not None and not isinstance(seed, int):
        raise ApiError(400, "seed must be an integer", param="seed")
    return with_overrides(defaults, temperature=body.get("temperature"), top_p=body.get("top_p"),
                          repetition_penalty=body.get("repetition_penalty"), max_new_tokens=max_tokens, seed=seed)


class Queue:
    """One generation at a time, first come first served; a bounded wait, then a clear error."""

    def __init__(self, settings: ServeSettings):
        self.lock = asyncio.Lock()
        self.waiting = 0
        self.settings = settings

    async def acquire(self) -> None:
        """Wait for the model, or raise ApiError 429/503."""
        if self.waiting >= self.settings.max_waiting:
            raise ApiError(429, f"{self.waiting} requests are already waiting for the twin; try again shortly",
                           type="rate_limit_error", code="queue_full")
        self.waiting += 1
        try:
            await asyncio.wait_for(self.lock.acquire(), self.settings.queue_timeout_s)
        except TimeoutError:
            raise ApiError(503, f"the twin is busy with other replies; waited {self.settings.queue_timeout_s:g} s. "
                                "Try again shortly.", type="server_error", code="busy") from None
        finally:
            self.waiting -= 1

    def release(self) -> None:
        """Let the next request generate."""
        self.lock.release()


async def _events(stream: Callable, twin: Twin, history: list[dict], config: GenerationConfig, use_adapter: bool,
                  queue: Queue):
    """The events of one reply as an async generator that already holds the queue and has made the first event,
    so a bad history is an HTTP error rather than a broken stream."""
    events = _generate(stream, twin, history, config, use_adapter, queue)
    await events.__anext__()  # up to "ready"; once started, the generator's `finally` runs however it ends
    return events


async def _generate(stream: Callable, twin: Twin, history: list[dict], config: GenerationConfig, use_adapter: bool,
                    queue: Queue):
    from starlette.concurrency import run_in_threadpool

    await queue.acquire()
    done = object()
    iterator = iter(stream(twin, history, config, use_adapter=use_adapter))
    try:
        try:
            event = await run_in_threadpool(next, iterator, done)
        except TalkalikeError as error:
            raise ApiError(400, str(error), param="messages") from None
        yield "ready"
        while event is not done:
            yield event
            # The model runs in a worker thread. If the client goes away, the current step still finishes (anyio
            # does not abandon threads), so closing the generator below never races with it.
            event = await run_in_threadpool(next, iterator, done)
    finally:
        iterator.close()
        queue.release()


def create_app(twin: Twin, settings: ServeSettings | None = None, stream: Callable = stream_reply):
    """The FastAPI app: the chat page, its /api, and the OpenAI-compatible /v1 endpoints."""
    from fastapi import FastAPI, Request
    from fastapi.responses import FileResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles
    from starlette.exceptions import HTTPException

    settings = settings or ServeSettings()
    check_settings(settings)
    app = FastAPI(title="talkalike", docs_url=None, redoc_url=None, openapi_url=None)
    queue = Queue(settings)
    models = model_ids(twin)
    app.state.twin, app.state.settings, app.state.stream, app.state.queue = twin, settings, stream, queue

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError):
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        return JSONResponse(ApiError(error.status_code, str(error.detail), type=kind).body(),
                            status_code=error.status_code)

    app.add_middleware(_Guard, settings=settings)

    async def read_json(request: Request) -> dict:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > settings.max_body_bytes:
                raise _too_large(settings)
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ApiError(400, f"the request body is not valid JSON: {error}") from None
        if not isinstance(data, dict):
            raise ApiError(400, "the request body must be a JSON object")
        return data

    def pick_model(name) -> bool:
        if name not in models:
            raise ApiError(404, f"the model {name!r} does not exist; this server has {', '.join(models)}",
                           param="model", code="model_not_found")
        return models[name]

    @app.get("/v1/models")
    async def list_models():
        created = int(time.time())
        return {"object": "list", "data": [{"id": name, "object": "model", "created": created,
                                            "owned_by": "talkalike"} for name in models]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await read_json(request)
        use_adapter = pick_model(body.get("model"))
        history = parse_history(body.get("messages"), settings)
        config = request_config(body, twin.defaults, settings)
        events = await _events(stream, twin, history, config, use_adapter, queue)
        base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": body["model"]}
        if body.get("stream"):
            return _stream(_openai_chunks(events, base))
        messages = collect_messages([event async for event in events])
        return base | {
            "object": "chat.completion",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {
                "role": "assistant", "content": "\n".join(messages), "talkalike_messages": messages}}],
        }

    @app.get("/api/info")
    async def info():
        return {"persona": twin.persona, "name": twin.name, "models": list(models), "has_adapter": twin.has_adapter,
                "needs_key": bool(settings.api_key)}

    @app.post("/api/chat")
    async def page_chat(request: Request):
        """The page's stream: one SSE event per chunk, {"text": ...} or {"end_message": true}, then {"done": true}."""
        body = await read_json(request)
        use_adapter = pick_model(body.get("model"))
        history = parse_history(body.get("messages"), settings)
        events = await _events(stream, twin, history, twin.defaults, use_adapter, queue)
        return _stream(_page_events(events))

    @app.get("/")
    async def page():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _include_abtest(app, twin)
    return app


class _Guard:
    """The API key and the body-size limit, checked before any route runs. A plain ASGI middleware: Starlette's
    BaseHTTPMiddleware would hide a client's hang-up from a streaming reply, which then ran on for nobody."""

    def __init__(self, app, settings: ServeSettings):
        self.app, self.settings = app, settings

    async def __call__(self, scope, receive, send) -> None:
        from fastapi.responses import JSONResponse

        if scope["type"] == "http":
            headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
            error = None
            if scope["path"].startswith(PROTECTED) and self.settings.api_key:
                expected = f"Bearer {self.settings.api_key}"
                if not hmac.compare_digest(headers.get("authorization", "").encode(), expected.encode()):
                    error = ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                                     type="authentication_error", code="invalid_api_key")
            length = headers.get("content-length", "")
            if error is None and length.isdigit() and int(length) > self.settings.max_body_bytes:
                error = _too_large(self.settings)
            if error is not None:
                await JSONResponse(error.body(), status_code=error.status)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _include_abtest(app, twin: Twin) -> None:
    """The blind A/B test at /ab (evaluate/abtest.py), once `talkalike eval` made its pairs."""
    from talkalike.evaluate import abtest

    if twin.run_dir is not None and (abtest.ab_dir(twin.run_dir) / abtest.PAIRS).is_file():
        app.include_router(abtest.make_router(twin.run_dir))


def _too_large(settings: ServeSettings) -> ApiError:
    return ApiError(413, f"the request is larger than {settings.max_body_bytes} bytes; send a shorter history",
                    code="request_too_large")


def _sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


def _stream(body):
    """An SSE response whose body is closed however the response ends, so the reply's generator releases the model
    even if the client hangs up while a chunk is being sent."""
    from fastapi.responses import StreamingResponse
    from starlette.background import BackgroundTask

    return StreamingResponse(body, media_type="text/event-stream", headers={"Cache-Control": "no-cache"},
                             background=BackgroundTask(body.aclose))


async def _openai_chunks(events, base: dict):
    """OpenAI's streaming shape: a role delta, content deltas (messages joined by "\\n"), a stop chunk, [DONE]."""
    def chunk(delta: dict, finish: str | None = None) -> str:
        return _sse(base | {"object": "chat.completion.chunk",
                            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    try:
        yield chunk({"role": "assistant", "content": ""})
        index, between = 0, False
        async for event in events:
            if event[0] == "text":
                text = ("\n" if between else "") + event[1]
                between = False
                yield chunk({"content": text, "talkalike_message_index": index})
            elif event[0] == "end_message":
                index, between = index + 1, True
        yield chunk({}, "stop")
        yield _sse("[DONE]")
    finally:
        await events.aclose()


async def _page_events(events):
    try:
        async for event in events:
            yield _sse({"text": event[1]} if event[0] == "text" else {"end_message": True})
        yield _sse({"done": True})
    finally:
        await events.aclose()


def cmd_serve(args) -> int:
    """Serve the chat page and the OpenAI-compatible API for a run (or a base model)."""
    import uvicorn

    settings = ServeSettings(host=args.host, port=args.port, api_key=args.api_key or os.environ.get("TALKALIKE_API_KEY"))
    check_settings(settings)  # before loading the model: refusing should be instant
    home = resolve_home(args.home)
    twin = load_twin(args.run, args.base, home)
    talk_as(twin, args.as_name, args.memories)
    app = create_app(twin, settings)
    say(f"serving {twin.persona} ({', '.join(model_ids(twin))}) at http://{settings.host}:{settings.port}/ "
        "and an OpenAI-compatible API at /v1")
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")
    return 0
