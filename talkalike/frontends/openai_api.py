"""OpenAI's API for `talkalike serve` (serve.py includes this router): /v1/models, /v1/models/{id},
/v1/chat/completions and the legacy /v1/completions, streaming (SSE) or not, so any OpenAI client works.

- A reply of several messages is one text with the messages joined by "\\n"; a chat reply also lists them in
  `message.talkalike_messages` (and each streamed delta says which one it belongs to, `talkalike_message_index`).
- `usage` counts the prompt as fitted to the context window and the reply, in the model's tokens; streaming sends
  it in a last chunk when `stream_options.include_usage` asks for it. `finish_reason` is "length" when max_tokens
  cut the reply, else "stop".
- /v1/completions takes its `prompt` as the other person's message and answers it as the persona does.
- What the twin cannot do is a 400 that says so, never silently ignored: tools and function calls,
  response_format other than text, logprobs, echo, suffix, best_of.

    client = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none")
    client.chat.completions.create(model="dana", messages=[{"role": "user", "content": "hey"}])
"""

import time
import uuid

from pydantic import StrictBool, StrictInt, StrictStr

from talkalike.frontends.serve import (
    ApiError,
    ChatRequest,
    Job,
    SamplingRequest,
    _sse,
    _stream,
    deltas,
    model_ids,
    parse_history,
    parse_request,
    pick_model,
    request_config,
    run_job,
    stop_strings,
)


class CompletionRequest(SamplingRequest):
    """A legacy completion request: one prompt, answered as the persona's next turn."""

    prompt: StrictStr | list[StrictStr]
    echo: StrictBool = False
    suffix: StrictStr | None = None
    best_of: StrictInt | None = None


def refuse_unsupported(body: SamplingRequest) -> None:
    """A 400 for what the twin cannot honour: a client that relies on it would take a chat message for a tool
    call, for JSON, or for something else it did not get."""
    if isinstance(body, ChatRequest):
        if body.tools or body.functions:
            raise ApiError(400, "tools and function calling are not supported: the twin only answers in the "
                                "persona's own words; leave 'tools' out", param="tools" if body.tools else "functions")
        for name in ("tool_choice", "function_call"):
            if getattr(body, name) not in (None, "none"):
                raise ApiError(400, f"{name} is not supported: the twin calls no tools", param=name)
        if body.response_format is not None and body.response_format.type != "text":
            raise ApiError(400, f"response_format {body.response_format.type!r} is not supported: the twin writes "
                                "chat messages, not JSON; leave it out or use {\"type\": \"text\"}",
                           param="response_format")
    if body.logprobs:
        raise ApiError(400, "logprobs are not supported", param="logprobs")
    if isinstance(body, CompletionRequest):
        if body.echo or body.suffix is not None or body.best_of not in (None, 1):
            name = "echo" if body.echo else "suffix" if body.suffix is not None else "best_of"
            raise ApiError(400, f"{name} is not supported: a completion is the persona's reply to the prompt",
                           param=name)


def _prompt(body: CompletionRequest) -> str:
    """The one prompt of a completion request."""
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if len(prompts) != 1 or not prompts[0]:
        raise ApiError(400, "send one non-empty prompt per request", param="prompt")
    return prompts[0]


def make_router():
    """The /v1 routes; they read the twin, settings, stream and queue from the app's state."""
    from fastapi import APIRouter, Request
    from fastapi.responses import Response

    router = APIRouter()

    def model_card(name: str, created: int) -> dict:
        return {"id": name, "object": "model", "created": created, "owned_by": "talkalike"}

    @router.get("/v1/models")
    async def list_models(request: Request):
        created = int(time.time())
        return {"object": "list", "data": [model_card(name, created) for name in model_ids(request.app.state.twin)]}

    @router.get("/v1/models/{name:path}")
    async def get_model(request: Request, name: str):
        pick_model(request.app.state.twin, name)
        return model_card(name, int(time.time()))

    @router.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = parse_request(await request.body())
        job = _job(request, body, parse_history(body.messages, request.app.state.settings))
        result = await run_job(request, job, body.stream)
        if result is None:
            return Response(status_code=499)  # nobody is listening; the status only shows in logs
        base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": body.model}
        if body.stream:
            return _stream(_chat_chunks(result, base, job, _include_usage(body)))
        return base | {
            "object": "chat.completion",
            "choices": [{"index": 0, "finish_reason": job.usage.finish_reason, "message": {
                "role": "assistant", "content": "\n".join(result), "talkalike_messages": result}}],
            "usage": job.usage_counts(),
        }

    @router.post("/v1/completions")
    async def completions(request: Request):
        body = parse_request(await request.body(), CompletionRequest)
        job = _job(request, body, [{"role": "user", "content": _prompt(body)}])
        result = await run_job(request, job, body.stream)
        if result is None:
            return Response(status_code=499)
        base = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": body.model}
        if body.stream:
            return _stream(_completion_chunks(result, base, job, _include_usage(body)))
        return base | {"choices": [{"index": 0, "text": "\n".join(result), "logprobs": None,
                                    "finish_reason": job.usage.finish_reason}],
                       "usage": job.usage_counts()}

    return router


def _job(request, body: SamplingRequest, history: list[dict]) -> Job:
    """The reply a request asks for, every check done before it waits for the model."""
    state = request.app.state
    use_adapter = pick_model(state.twin, body.model)
    refuse_unsupported(body)
    return Job(history, request_config(body, state.twin.defaults, state.settings), use_adapter,
               stop_strings(body.stop))


def _include_usage(body: SamplingRequest) -> bool:
    return body.stream_options is not None and body.stream_options.include_usage


async def _chat_chunks(events, base: dict, job: Job, include_usage: bool):
    """OpenAI's streaming shape: a role delta, content deltas, a chunk with the finish reason, [DONE]."""
    def chunk(delta: dict, finish: str | None = None) -> str:
        return _sse(base | {"object": "chat.completion.chunk",
                            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    try:
        yield chunk({"role": "assistant", "content": ""})
        async for text, index in deltas(events):
            yield chunk({"content": text, "talkalike_message_index": index})
        yield chunk({}, job.usage.finish_reason)
        if include_usage:
            yield _sse(base | {"object": "chat.completion.chunk", "choices": [], "usage": job.usage_counts()})
        yield _sse("[DONE]")
    finally:
        await events.aclose()


async def _completion_chunks(events, base: dict, job: Job, include_usage: bool):
    """The legacy streaming shape: text pieces, one with the finish reason, [DONE]."""
    def chunk(text: str, finish: str | None = None) -> str:
        return _sse(base | {"choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]})

    try:
        async for text, _ in deltas(events):
            yield chunk(text)
        yield chunk("", job.usage.finish_reason)
        if include_usage:
            yield _sse(base | {"choices": [], "usage": job.usage_counts()})
        yield _sse("[DONE]")
    finally:
        await events.aclose()
