"""`talkalike serve RUN`: a web chat page, an OpenAI-compatible and an Ollama-compatible API in one FastAPI app, on
127.0.0.1 by default.

- `/` is a messaging-style chat page (static files, no build step); it streams the persona's messages as separate
  bubbles from its own `/page/chat` and has a base-vs-tuned switch. Its conversations are saved under the run's
  chats/ through `/page/conversations` (conversations.py).
- `/v1/...` follows OpenAI's API (openai_api.py) and `/api/tags`, `/api/chat`, `/api/generate`... follow Ollama's
  (ollama.py), so OpenAI and Ollama clients both work. Model ids: the run's name (tuned) and "<run>:base" (adapter
  off). A reply of several messages is one text with the messages joined by "\\n". `system` messages are ignored:
  the twin was trained on conversations without one. This module holds what both APIs share: the request checks,
  the queue, and one reply's events (`Job`, `run_job`).
- Safe by default: loopback only; any other address needs an API key (bearer), and raters of the blind test get a
  share token instead (/ab?t=TOKEN). Every request passes guard.py first: the Host and Origin checks (no DNS
  rebinding, no cross-site requests), JSON bodies only, the key, the body-size and nesting limits, the pages'
  security headers. Bodies are validated strictly (pydantic) into 400s in OpenAI's shape. History length and
  max_tokens are capped.
- Concurrent requests are decoded together (decode/live.py: continuous batching, each reply with its own sampling
  settings), up to `batch_rows` at once; more queue, and one that waits too long gets a 503. A client that hangs up
  stops its reply and frees its place, streaming or not.

    talkalike serve dana                               # http://127.0.0.1:8000
    TALKALIKE_API_KEY=secret talkalike serve dana --host 0.0.0.0
    talkalike serve dana --host 0.0.0.0 --api-key-file ~/.config/talkalike/key
"""

import asyncio
import errno
import functools
import ipaddress
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from talkalike.decode.config import GenerationConfig, with_overrides
from talkalike.decode.stream import Usage, stream_reply
from talkalike.decode.turns import BUBBLE_MARK, Splitter, collect_messages
from talkalike.decode.twin import Twin, load_twin, talk_as
from talkalike.errors import TalkalikeError
from talkalike.files import say
from talkalike.frontends.guard import Guard
from talkalike.home import resolve_home

STATIC = Path(__file__).parent / "static"
KEY_ENV = "TALKALIKE_API_KEY"


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
    # Replies decoded together: a few friends on the A/B page at once. A step over 8 rows costs little more than
    # over one on a GPU (it reads the weights once); 1 generates one reply at a time, the others queue.
    batch_rows: int = 8


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
            f"binding to {settings.host} exposes your twin to the network; set an API key with --api-key-file, "
            f"${KEY_ENV} or --api-key, or keep the default --host 127.0.0.1"
        )


def api_key(args) -> str | None:
    """The API key from --api-key-file, --api-key or $TALKALIKE_API_KEY (a file or the environment keep it out of
    `ps`)."""
    if args.api_key_file:
        path = Path(args.api_key_file).expanduser()
        try:
            with open(path, encoding="utf-8") as f:
                key = f.readline(4096).strip()  # a key is one short line; never read a whole device or large file
        except (OSError, UnicodeDecodeError) as error:
            raise TalkalikeError(f"cannot read the API key from {path}: {getattr(error, 'strerror', None) or error}"
                                 ) from None
        if not key:
            raise TalkalikeError(f"{path} has no API key on its first line")
        return key
    return args.api_key or os.environ.get(KEY_ENV) or None


def listen(settings: ServeSettings) -> socket.socket:
    """The server's socket, bound before the model loads: a port already in use is a clear error in a moment."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(settings.host, settings.port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as error:
        raise TalkalikeError(f"cannot listen on {settings.host!r}: {error}; pass an IP address to --host") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a just-closed server's port
    try:
        sock.bind(address)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise TalkalikeError(f"port {settings.port} on {settings.host} is already in use (another server?); "
                                 "stop it or pick another with --port") from None
        raise TalkalikeError(f"cannot listen on {settings.host}:{settings.port}: {error.strerror}") from None
    sock.set_inheritable(True)
    return sock


class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Strict(BaseModel):
    """No coercion: a number is not a string, a string is not a number. Unknown fields (OpenAI has many) are
    ignored."""

    model_config = ConfigDict(strict=True, extra="ignore")


class ContentPart(_Strict):
    type: StrictStr
    text: StrictStr | None = None


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: StrictStr | list[ContentPart]


class ResponseFormat(_Strict):
    type: StrictStr


class StreamOptions(_Strict):
    include_usage: StrictBool = False


class SamplingRequest(_Strict):
    """The fields of an OpenAI request that the twin reads, chat or completion; limits that name settings are
    checked later. Those it cannot honour are read only to refuse them (openai_api.refuse_unsupported)."""

    model: StrictStr = Field(max_length=200)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    max_tokens: StrictInt | None = None
    max_completion_tokens: StrictInt | None = None
    temperature: float | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    seed: StrictInt | None = Field(default=None, ge=-(2**63), le=2**64 - 1)  # what torch's generator takes
    n: StrictInt = 1
    stop: StrictStr | list[StrictStr] | None = Field(default=None)
    logprobs: StrictBool | StrictInt | None = None


class ChatRequest(SamplingRequest):
    """An OpenAI chat request (also what the page sends)."""

    messages: list[ChatMessage]
    tools: list | None = None
    functions: list | None = None
    tool_choice: StrictStr | dict | None = None
    function_call: StrictStr | dict | None = None
    response_format: ResponseFormat | None = None


def parse_request(body: bytes, model: type[BaseModel] = ChatRequest):
    """The request body, validated as `model`; anything malformed is an ApiError 400 that names the field.
    pydantic's JSON reader also refuses lone surrogates, numbers of thousands of digits and deep nesting."""
    try:
        return model.model_validate_json(body)
    except ValidationError as error:
        problem = error.errors(include_url=False)[0]
        where = ".".join(str(part) for part in problem["loc"])
        if problem["type"] == "json_invalid":
            raise ApiError(400, f"the request body is not valid JSON: {problem['msg']}") from None
        raise ApiError(400, f"{where}: {problem['msg']}" if where else problem["msg"],
                       param=str(problem["loc"][0]) if problem["loc"] else None) from None


def stop_strings(stop: str | list[str] | None) -> list[str]:
    """OpenAI's `stop`: one string or up to 4."""
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > 4 or not all(stops):
        raise ApiError(400, "stop must be a non-empty string or a list of at most 4 of them", param="stop")
    return stops


def model_ids(twin: Twin) -> dict[str, bool]:
    """Served model ids -> whether the adapter is on."""
    if twin.has_adapter:
        return {twin.name: True, f"{twin.name}:base": False}
    return {twin.name: False}


def pick_model(twin: Twin, name: str) -> bool:
    """Whether the model id `name` has the adapter on; an unknown id is a 404 that lists the served ones."""
    models = model_ids(twin)
    if name not in models:
        raise ApiError(404, f"the model {name!r} does not exist; this server has {', '.join(models)}",
                       param="model", code="model_not_found")
    return models[name]


def _content(message: ChatMessage) -> str:
    """A message's text: a string, or OpenAI's list of parts (text parts are joined)."""
    if isinstance(message.content, str):
        return message.content
    return "".join(part.text or "" for part in message.content if part.type == "text")


def parse_history(messages: list[ChatMessage], settings: ServeSettings) -> list[dict]:
    """OpenAI messages -> the generator's history (system messages dropped), within the limits."""
    if not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {role, content} objects", param="messages")
    if len(messages) > settings.max_messages:
        raise ApiError(400, f"at most {settings.max_messages} messages per request (got {len(messages)}); "
                            "send only the recent history", param="messages", code="too_many_messages")
    history = [{"role": m.role, "content": _content(m)} for m in messages if m.role in ("user", "assistant")]
    if not history or history[-1]["role"] != "user":
        raise ApiError(400, "the last message must be the user's: the twin answers it", param="messages")
    return history


def request_config(body: SamplingRequest, defaults: GenerationConfig, settings: ServeSettings) -> GenerationConfig:
    """Sampling settings from an OpenAI request body over the twin's defaults."""
    if body.n != 1:
        raise ApiError(400, "only n=1 is supported", param="n")
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    return sampling_config(defaults, settings, max_tokens=max_tokens, temperature=body.temperature,
                           top_p=body.top_p, repetition_penalty=body.repetition_penalty, seed=body.seed)


def sampling_config(defaults: GenerationConfig, settings: ServeSettings, max_tokens: int | None = None,
                    temperature: float | None = None, top_p: float | None = None,
                    repetition_penalty: float | None = None, seed: int | None = None,
                    names: dict[str, str] | None = None) -> GenerationConfig:
    """The run's defaults with a request's sampling settings over them, checked against the limits; `names` maps
    ours to the API's own (Ollama's num_predict, repeat_penalty) in the errors."""
    names = names or {}
    if max_tokens is not None and not 0 < max_tokens <= settings.max_tokens:
        name = names.get("max_tokens", "max_tokens")
        raise ApiError(400, f"{name} must be an integer from 1 to {settings.max_tokens}", param=name)
    numbers = {"temperature": (temperature, 0.0, 2.0), "top_p": (top_p, 0.0, 1.0),
               "repetition_penalty": (repetition_penalty, 0.5, 2.0)}
    for name, (value, low, high) in numbers.items():
        if value is not None and not low <= value <= high:
            name = names.get(name, name)
            raise ApiError(400, f"{name} must be a number from {low} to {high}", param=name)
    context = None
    if max_tokens is not None:
        # The context window holds prompt and reply together. A longer reply than the run's default widens it by
        # the difference, so the history keeps the room it had: else max_tokens=1024 on a 1024-token window left
        # no room for even one message. The model's own limit (max_positions) still applies.
        context = max(defaults.max_context_tokens, defaults.max_context_tokens - defaults.max_new_tokens + max_tokens)
    return with_overrides(defaults, temperature=temperature, top_p=top_p, repetition_penalty=repetition_penalty,
                          max_new_tokens=max_tokens, seed=seed, max_context_tokens=context)


class Queue:
    """Up to `batch_rows` replies at a time, first come first served; a bounded wait, then a clear error."""

    def __init__(self, settings: ServeSettings):
        self.slots = asyncio.Semaphore(settings.batch_rows)
        self.waiting = 0
        self.settings = settings

    async def acquire(self) -> None:
        """Wait for the model, or raise ApiError 429/503."""
        if self.waiting >= self.settings.max_waiting:
            raise ApiError(429, f"{self.waiting} requests are already waiting for the twin; try again shortly",
                           type="rate_limit_error", code="queue_full")
        self.waiting += 1
        try:
            await asyncio.wait_for(self.slots.acquire(), self.settings.queue_timeout_s)
        except TimeoutError:
            raise ApiError(503, f"the twin is busy with other replies; waited {self.settings.queue_timeout_s:g} s. "
                                "Try again shortly.", type="server_error", code="busy") from None
        finally:
            self.waiting -= 1

    def release(self) -> None:
        """Let the next request generate."""
        self.slots.release()


@dataclass
class Job:
    """One reply to generate, whichever API asked for it: what the twin reads and how it samples; filled in as it
    runs, what it took (tokens, why it ended, when its first text was ready)."""

    history: list[dict]
    config: GenerationConfig
    use_adapter: bool
    stops: list[str] = field(default_factory=list)  # the API's stop strings
    usage: Usage = field(default_factory=Usage)
    started_ns: int = field(default_factory=time.perf_counter_ns)
    first_ns: int = 0  # the queue's wait and the prompt's reading end here

    def usage_counts(self) -> dict:
        """OpenAI's `usage`."""
        prompt, completion = self.usage.prompt_tokens, self.usage.completion_tokens
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def run_job(request, job: Job, streaming: bool):
    """The reply's events (streaming) or its messages (not), holding the model while it generates; None if the client
    hung up first. Waiting in the queue and (without streaming) generating both end when the client hangs up."""
    state = request.app.state

    async def reply():
        events = await _events(state.stream, state.twin, job, state.queue)
        job.first_ns = time.perf_counter_ns()
        events = _stopping_at(events, job.stops) if job.stops else events
        return events if streaming else collect_messages([event async for event in events])

    return await unless_gone(request, reply())


async def deltas(events):
    """A reply's text as one string in pieces: (text, message index), the messages joined by "\\n"."""
    index, between = 0, False
    async for event in events:
        if event[0] == "text":
            yield ("\n" if between else "") + event[1], index
            between = False
        elif event[0] == "end_message":
            index, between = index + 1, True


async def _events(stream: Callable, twin: Twin, job: Job, queue: Queue):
    """The events of one reply as an async generator that already holds the queue and has made the first event,
    so a bad history is an HTTP error rather than a broken stream."""
    events = _generate(stream, twin, job, queue)
    await events.__anext__()  # up to "ready"; once started, the generator's `finally` runs however it ends
    return events


async def _generate(stream: Callable, twin: Twin, job: Job, queue: Queue):
    from starlette.concurrency import run_in_threadpool

    await queue.acquire()
    done = object()
    iterator = iter(stream(twin, job.history, job.config, use_adapter=job.use_adapter, usage=job.usage))
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


async def _stopping_at(events, stops: list[str]):
    """The reply's events, ended at the first of OpenAI's `stop` strings (which is not shown). A stop is looked for
    inside each message; the turn's own Splitter holds back a tail that may still become one."""
    splitter = Splitter(stops)
    try:
        async for event in events:
            for out in splitter.feed(event[1] if event[0] == "text" else BUBBLE_MARK):
                yield out
            if splitter.done:
                return
        for out in splitter.finish():
            yield out
    finally:
        await events.aclose()  # stops the generation when a stop string ended the reply early


async def _disconnected(receive) -> None:
    """Returns once the client has hung up (the body has been read already, so nothing else arrives)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def unless_gone(request, work):
    """Await `work`, but cancel it if the client hangs up first, as the streaming response does: a reply nobody
    will read stops generating (after its current step) and frees its place in the queue. None if it was cancelled.
    An anyio cancel scope, not Task.cancel(): it waits for the model's step to finish in its worker thread, so the
    generator is never closed while it runs."""
    import anyio

    with anyio.CancelScope() as scope:
        async def watch() -> None:
            await _disconnected(request.receive)
            scope.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            return await work
        finally:
            watcher.cancel()
    return None


def create_app(twin: Twin, settings: ServeSettings | None = None, stream: Callable | None = None,
               chats: Path | None = None):
    """The FastAPI app: the chat page and its routes, the OpenAI-compatible /v1 and the Ollama-compatible /api.
    `stream` is stream_reply's stand-in (tests); by default the twin's replies, drawn from one continuous batch
    (decode/live.py) of up to `batch_rows` replies, or plain stream_reply for 1: one reply at a time."""
    from fastapi import FastAPI, Request
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
    from starlette.exceptions import HTTPException

    from talkalike.frontends import ollama, openai_api

    settings = settings or ServeSettings()
    check_settings(settings)
    live = None
    if stream is None and settings.batch_rows > 1:
        from talkalike.decode.live import Live

        live = Live(twin, settings.batch_rows)
        stream = functools.partial(stream_reply, draw=live.draw)
    stream = stream or stream_reply
    app = FastAPI(title="talkalike", docs_url=None, redoc_url=None, openapi_url=None)
    queue = Queue(settings)
    models = model_ids(twin)
    app.state.twin, app.state.settings, app.state.stream, app.state.queue = twin, settings, stream, queue
    app.state.live = live

    def error_response(request: Request, error: ApiError):
        if request.url.path in ollama.PATHS:
            return JSONResponse(ollama.error_body(error.message), status_code=error.status)
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError):
        return error_response(request, error)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        return error_response(request, ApiError(error.status_code, str(error.detail), type=kind))

    app.state.share_token = _include_abtest(app, twin)
    _include_conversations(app, twin, chats)
    app.add_middleware(Guard, settings=settings, share_token=app.state.share_token,
                       is_loopback=is_loopback(settings.host), ollama_paths=ollama.PATHS)
    app.include_router(openai_api.make_router())
    app.include_router(ollama.make_router())

    @app.get("/api/info")
    async def info():
        return {"persona": twin.persona, "name": twin.name, "models": list(models), "has_adapter": twin.has_adapter,
                "needs_key": bool(settings.api_key)}

    @app.post("/page/chat")
    async def page_chat(request: Request):
        """The page's stream: one SSE event per chunk, {"text": ...} or {"end_message": true}, then {"done": true}.
        A path of its own: /api/chat is Ollama's."""
        body = parse_request(await request.body())
        job = Job(parse_history(body.messages, settings), request_config(body, twin.defaults, settings),
                  pick_model(twin, body.model), stop_strings(body.stop))  # the page sends no settings; same rules
        events = await run_job(request, job, streaming=True)
        if events is None:
            return Response(status_code=499)
        return _stream(_page_events(events))

    @app.get("/")
    async def page():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _include_abtest(app, twin: Twin) -> str | None:
    """The blind A/B test at /ab (evaluate/abtest.py), once `talkalike eval` made its pairs; returns the raters'
    share token, or None without a test."""
    from talkalike.evaluate import abtest

    if twin.run_dir is None or not (abtest.ab_dir(twin.run_dir) / abtest.PAIRS).is_file():
        return None
    app.include_router(abtest.make_router(twin.run_dir))
    return abtest.share_token(twin.run_dir)


def _include_conversations(app, twin: Twin, chats: Path | None) -> None:
    """The page's saved conversations (frontends/conversations.py) in `chats`, by default the run's chats/ folder
    beside the terminal's transcripts; without a folder to save in (a base model served with no run) the page keeps
    none."""
    from talkalike.frontends import conversations

    folder = chats or (twin.run_dir / "chats" if twin.run_dir else None)
    if folder is not None:
        app.include_router(conversations.make_router(folder, twin.persona, f"{twin.name} · web page"))


# Characters that str.splitlines() and httpx's aiter_lines() end a line at but JSON leaves unescaped: a reply holding
# one would cut its event or NDJSON line in two for such a client. Escaped, the JSON reads the same.
_LINE_BREAKS = {"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"}


def one_line_json(data: dict) -> str:
    """`data` as JSON on one line for every line splitter: UTF-8 kept, Unicode line breaks escaped."""
    text = json.dumps(data, ensure_ascii=False)
    for char, escaped in _LINE_BREAKS.items():
        if char in text:
            text = text.replace(char, escaped)
    return text


def _sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else one_line_json(data)}\n\n"


def _stream(body, media_type: str = "text/event-stream"):
    """A streaming response (SSE, or Ollama's NDJSON) whose body is closed however the response ends, so the reply's
    generator releases the model even if the client hangs up while a chunk is being sent."""
    from fastapi.responses import StreamingResponse
    from starlette.background import BackgroundTask

    return StreamingResponse(body, media_type=media_type, headers={"Cache-Control": "no-cache"},
                             background=BackgroundTask(body.aclose))


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

    settings = ServeSettings(host=args.host, port=args.port, api_key=api_key(args))
    check_settings(settings)  # before loading the model: refusing should be instant
    sock = listen(settings)  # so is a port that is taken
    try:
        home = resolve_home(args.home)
        twin = load_twin(args.run, args.base, home, batched=True)
        talk_as(twin, args.as_name, args.memories)
        app = create_app(twin, settings, chats=(twin.run_dir or home) / "chats")  # where `chat` saves too
        address = f"[{settings.host}]" if ":" in settings.host else settings.host
        url = f"http://{address}:{sock.getsockname()[1]}"
        say(f"serving {twin.persona} ({', '.join(model_ids(twin))}) at {url}/, an OpenAI-compatible API at {url}/v1 "
            f"and an Ollama-compatible one at {url} (OLLAMA_HOST={url})")
        if app.state.share_token:
            say(f"raters' link for the blind A/B test (it shows them held-out chats; share it only with them): "
                f"{url}/ab?t={app.state.share_token}")
        uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
    finally:
        sock.close()
    return 0
