"""Ollama's API for `talkalike serve` (serve.py includes this router), so Ollama clients (Open WebUI, mobile apps,
editor plugins, the `ollama` Python and JS libraries) can talk to the twin: point them at the server's address,
e.g. OLLAMA_HOST=http://127.0.0.1:8000.

- GET /api/tags lists the models (the run, and "<run>:base" with the adapter off; "<run>:latest" is the run too),
  POST /api/show describes one, GET /api/version says which talkalike answers, HEAD / that the server is up.
- POST /api/chat and /api/generate stream NDJSON by default, one {"model", "created_at", "message" or "response",
  "done": false} line per piece of text and a last line with "done": true, "done_reason" ("stop", or "length"
  when num_predict cut the reply) and the token counts (prompt_eval_count, eval_count) and durations in
  nanoseconds; "stream": false answers with that last object, the whole text in it. A reply of several messages
  is one text with the messages joined by "\\n".
- options: temperature, top_p, num_predict (-1 or -2: the run's own limit), stop, seed, repeat_penalty. The
  runner's options (num_ctx, num_gpu...) and top_k are ignored, as Ollama ignores options a model does not use.
- What the twin cannot do is a 400, never silently ignored: tools, format (JSON), images, think, raw, template,
  suffix, context. `system` is ignored as on /v1: the twin was trained on conversations without one.
- Errors are Ollama's {"error": "..."} (the guard's refusals too), same key as the other routes (Bearer).

    curl http://127.0.0.1:8000/api/chat -H 'Content-Type: application/json' \\
        -d '{"model": "dana", "messages": [{"role": "user", "content": "hey"}]}'
    OLLAMA_HOST=http://127.0.0.1:8000 ollama-client-of-your-choice
"""

import time
from datetime import UTC, datetime
from typing import Literal

from pydantic import Field, StrictBool, StrictInt, StrictStr

from talkalike import __version__
from talkalike.frontends.serve import (
    ApiError,
    Job,
    _stream,
    _Strict,
    deltas,
    model_ids,
    one_line_json,
    parse_history,
    parse_request,
    pick_model,
    run_job,
    sampling_config,
    stop_strings,
)

PATHS = ("/api/tags", "/api/chat", "/api/generate", "/api/show", "/api/version")  # errors here are Ollama's shape
UNLIMITED = (-1, -2)  # num_predict: Ollama's "until the end" and "fill the context"; the twin's turn ends anyway
NAMES = {"max_tokens": "options.num_predict", "temperature": "options.temperature", "top_p": "options.top_p",
         "repetition_penalty": "options.repeat_penalty"}


class Options(_Strict):
    """The options that mean something to the twin; the rest are ignored."""

    num_predict: StrictInt | None = None
    temperature: float | None = None
    top_p: float | None = None
    repeat_penalty: float | None = None
    seed: StrictInt | None = Field(default=None, ge=-(2**63), le=2**64 - 1)
    stop: StrictStr | list[StrictStr] | None = None


class Message(_Strict):
    role: Literal["system", "user", "assistant", "tool"]
    content: StrictStr = ""
    images: list | None = None
    tool_calls: list | None = None


class _Request(_Strict):
    model: StrictStr = Field(max_length=200)
    stream: StrictBool = True  # Ollama streams unless told not to
    options: Options | None = None
    format: StrictStr | dict | None = None
    think: StrictBool | StrictStr | None = None
    images: list | None = None


class ChatBody(_Request):
    messages: list[Message] | None = None
    tools: list | None = None


class GenerateBody(_Request):
    prompt: StrictStr = ""
    system: StrictStr | None = None
    raw: StrictBool = False
    template: StrictStr | None = None
    suffix: StrictStr | None = None
    context: list[StrictInt] | None = None


class ShowBody(_Strict):
    model: StrictStr | None = Field(default=None, max_length=200)
    name: StrictStr | None = Field(default=None, max_length=200)  # what older clients send


def error_body(message: str) -> dict:
    """Ollama's error shape, which its clients show as is."""
    return {"error": message}


def served_name(name: str) -> str:
    """A model name as served: Ollama's clients add ":latest" to a name without a tag."""
    return name.removesuffix(":latest")


def refuse_unsupported(body: _Request) -> None:
    """A 400 for what the twin cannot honour, so that a client never takes a chat message for what it asked for."""
    refusals = {
        "tools": "tools are not supported: the twin only answers in the persona's own words",
        "format": "format is not supported: the twin writes chat messages, not JSON",
        "think": "think is not supported: the twin does not think aloud",
        "images": "images are not supported: the twin reads text only",
        "raw": "raw is not supported: the twin's prompt is always its own chat template",
        "template": "template is not supported: the twin's prompt is always its own chat template",
        "suffix": "suffix is not supported: the twin answers the prompt, it does not fill in text",
        "context": "context is not supported: send the conversation to /api/chat instead",
    }
    for name, message in refusals.items():
        if getattr(body, name, None) not in (None, False, "", []):
            raise ApiError(400, message, param=name)
    for message in getattr(body, "messages", None) or []:
        if message.role == "tool" or message.tool_calls:
            raise ApiError(400, refusals["tools"], param="messages")
        if message.images:
            raise ApiError(400, refusals["images"], param="messages")


def _job(state, body: _Request, history: list[dict]) -> Job:
    """The reply a request asks for, every check done before it waits for the model."""
    options = body.options or Options()
    num_predict = None if options.num_predict in UNLIMITED else options.num_predict
    config = sampling_config(state.twin.defaults, state.settings, max_tokens=num_predict,
                             temperature=options.temperature, top_p=options.top_p,
                             repetition_penalty=options.repeat_penalty, seed=options.seed, names=NAMES)
    return Job(history, config, pick_model(state.twin, served_name(body.model)), stop_strings(options.stop))


def _loaded(state, body: _Request, piece) -> dict:
    """Ollama's answer to a request with nothing to reply to, which clients send to load a model: it is loaded (it
    always is here)."""
    pick_model(state.twin, served_name(body.model))
    return {"model": body.model, "created_at": _now(), **piece(""), "done": True, "done_reason": "load"}


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _modified(twin) -> str:
    """When the run last changed (its folder's time), for /api/tags and /api/show."""
    if twin.run_dir is None:
        return _now()
    return datetime.fromtimestamp(twin.run_dir.stat().st_mtime, UTC).isoformat().replace("+00:00", "Z")


def _details() -> dict:
    return {"parent_model": "", "format": "safetensors", "family": "", "families": [], "parameter_size": "",
            "quantization_level": ""}


def _done(job: Job) -> dict:
    """The last line's fields: why the reply ended, its tokens, and where the time went (in nanoseconds)."""
    end = time.perf_counter_ns()
    return {"done": True, "done_reason": job.usage.finish_reason, "total_duration": end - job.started_ns,
            "load_duration": 0,  # the model was loaded when the server started
            "prompt_eval_count": job.usage.prompt_tokens, "prompt_eval_duration": job.first_ns - job.started_ns,
            "eval_count": job.usage.completion_tokens, "eval_duration": end - job.first_ns}


def _chat_piece(text: str) -> dict:
    return {"message": {"role": "assistant", "content": text}}


def _generate_piece(text: str) -> dict:
    return {"response": text}


def make_router():
    """Ollama's routes; they read the twin, settings, stream and queue from the app's state."""
    from fastapi import APIRouter, Request
    from fastapi.responses import Response

    router = APIRouter()

    @router.head("/")
    async def heartbeat():
        """Ollama answers HEAD / to say it is up, and some clients (its own CLI) ask before anything else; GET / is
        still the chat page."""
        return Response()

    async def answer(request: Request, body: _Request, job: Job, piece):
        result = await run_job(request, job, body.stream)
        if result is None:
            return Response(status_code=499)  # the client hung up; the status only shows in logs
        if body.stream:
            return _stream(_lines(result, job, body.model, piece), media_type="application/x-ndjson")
        return {"model": body.model, "created_at": _now(), **piece("\n".join(result)), **_done(job)}

    @router.post("/api/chat")
    async def chat(request: Request):
        body = parse_request(await request.body(), ChatBody)
        refuse_unsupported(body)
        state = request.app.state
        if not body.messages:
            return _loaded(state, body, _chat_piece)
        job = _job(state, body, parse_history(body.messages, state.settings))
        return await answer(request, body, job, _chat_piece)

    @router.post("/api/generate")
    async def generate(request: Request):
        body = parse_request(await request.body(), GenerateBody)
        refuse_unsupported(body)
        state = request.app.state
        if not body.prompt:
            return _loaded(state, body, _generate_piece)
        job = _job(state, body, [{"role": "user", "content": body.prompt}])
        return await answer(request, body, job, _generate_piece)

    @router.get("/api/tags")
    async def tags(request: Request):
        twin = request.app.state.twin
        modified = _modified(twin)
        return {"models": [{"name": name, "model": name, "modified_at": modified, "size": 0, "digest": "",
                            "details": _details()} for name in model_ids(twin)]}

    @router.post("/api/show")
    async def show(request: Request):
        body = parse_request(await request.body(), ShowBody)
        twin = request.app.state.twin
        name = body.model or body.name
        if not name:
            raise ApiError(400, "name the model to show in 'model'", param="model")
        use_adapter = pick_model(twin, served_name(name))
        defaults = twin.defaults
        parameters = (f"temperature {defaults.temperature:g}\ntop_p {defaults.top_p:g}\n"
                      f"repeat_penalty {defaults.repetition_penalty:g}\nnum_predict {defaults.max_new_tokens}")
        return {"modelfile": f"# {twin.persona}'s twin, served by talkalike\nFROM {name}\n"
                             + "".join(f"PARAMETER {line}\n" for line in parameters.splitlines()),
                "parameters": parameters, "template": "", "details": _details(),
                "model_info": {"talkalike.persona": twin.persona, "talkalike.adapter": use_adapter},
                "capabilities": ["completion"], "modified_at": _modified(twin)}

    @router.get("/api/version")
    async def version():
        return {"version": __version__}

    return router


async def _lines(events, job: Job, model: str, piece):
    """Ollama's NDJSON stream: a line per piece of text, then the last line with the counts."""
    def line(fields: dict) -> str:
        return one_line_json({"model": model, "created_at": _now()} | fields) + "\n"

    try:
        async for text, _ in deltas(events):
            yield line(piece(text) | {"done": False})
        yield line(piece("") | _done(job))
    finally:
        await events.aclose()
