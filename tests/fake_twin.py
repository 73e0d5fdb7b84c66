"""Test doubles for the front ends: a FakeTwin with scripted replies, a fake streaming function with the same
signature and events as talkalike.decode.stream.stream_reply, and a live uvicorn server on a free loopback port."""

import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from talkalike.decode.config import GenerationConfig
from talkalike.decode.stream import Usage
from talkalike.errors import TalkalikeError

TUNED = ["ok", "sure", "שלום! נתראה ב-8 בדיזנגוף"]
BASE = ["Hello! How can I help you today?"]


@dataclass
class FakeTwin:
    """What the front ends read from a Twin, with the replies scripted: tuned (adapter on) and base (off)."""

    name: str = "noa"
    persona: str = "Noa"
    has_adapter: bool = True
    run_dir: Path | None = None
    defaults: GenerationConfig = field(default_factory=lambda: GenerationConfig(repetition_penalty=1.1))
    contacts: list[str] | None = field(default_factory=lambda: ["Daniel", "Mom"])
    tuned: list[str] = field(default_factory=lambda: list(TUNED))
    base: list[str] = field(default_factory=lambda: list(BASE))
    chunk: int = 3  # characters per streamed chunk
    delay: float = 0.0  # seconds before each chunk, to make the streaming (and the queue) observable
    calls: list = field(default_factory=list)  # (history, config, use_adapter) per reply
    active: int = 0
    most_active: int = 0  # the most replies ever generated at the same time
    completed: list = field(default_factory=list)  # per reply: True if it ran to the end, False if it was closed


def fake_stream(twin: FakeTwin, history: list[dict], config: GenerationConfig, use_adapter: bool = True,
                usage: Usage | None = None):
    """stream_reply's events for the scripted messages, a few characters at a time. Each chunk counts as a token
    and each word of the history as a prompt token; `config.max_new_tokens` chunks cut the reply ("length")."""
    twin.calls.append(([dict(m) for m in history], config, use_adapter))
    if history and history[-1]["content"] == "too long":
        raise TalkalikeError("the last message alone is 9999 tokens; send a shorter message")
    usage = usage or Usage()
    usage.prompt_tokens = sum(len(m["content"].split()) for m in history)
    twin.active += 1
    twin.most_active = max(twin.most_active, twin.active)
    done = False
    try:
        for message in twin.tuned if use_adapter else twin.base:
            for start in range(0, len(message), twin.chunk):
                if usage.completion_tokens == config.max_new_tokens:
                    usage.finish_reason = "length"
                    done = True
                    if start:  # the message being written ends here; one already ended has sent its end
                        yield ("end_message",)
                    return
                time.sleep(twin.delay)
                usage.completion_tokens += 1
                yield ("text", message[start: start + twin.chunk])
            yield ("end_message",)
        done = True
    finally:
        twin.completed.append(done)
        twin.active -= 1


@contextmanager
def live_server(app, port: int = 0):
    """Serve `app` with uvicorn on 127.0.0.1 and a free port (or `port`, to bring a stopped server back) in a
    thread; yields the base URL; always shuts down."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the port of a server that just stopped
    sock.bind(("127.0.0.1", port))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
