"""Concurrent requests through the real app and the real decoder (a tiny model): every front door (the page, the
OpenAI API, the Ollama API) streams its own complete reply from one continuous batch, the same text it gets alone,
with its own settings; a client that hangs up frees its row; a bad request among them is still one clear 400."""

import functools
import json
import threading
import time

import httpx
import pytest
from fake_twin import live_server

from talkalike.frontends.serve import ServeSettings, create_app

WORDS = ["hey", "what's up at the beach", "שלום מה קורה", "ok see you at eight", "lol pita the cat", "Hello there",
         "I think we should meet", "haha ok"]


@pytest.fixture(scope="module")
def app(tiny_tokenizer):
    import torch
    from conftest import build_tiny_model

    from talkalike.decode.twin import Twin

    torch.set_num_threads(1)
    twin = Twin.of(build_tiny_model(len(tiny_tokenizer)).eval(), tiny_tokenizer, name="noa", persona="Noa")
    return create_app(twin, ServeSettings())


def sse(lines) -> list[dict]:
    return [json.loads(line[6:]) for line in lines if line.startswith("data: {")]


def chat(url: str, words: str, **fields) -> dict:
    """An OpenAI chat request, streamed: its text, finish reason and usage."""
    body = {"model": "noa", "messages": [{"role": "user", "content": words}], "stream": True,
            "stream_options": {"include_usage": True}, "temperature": 0, "max_tokens": 40} | fields
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as response:
        assert response.status_code == 200, response.read()
        chunks = sse(response.iter_lines())
    choices = [c["choices"][0] for c in chunks if c["choices"]]
    return {"text": "".join(c["delta"].get("content") or "" for c in choices),
            "finish": choices[-1]["finish_reason"], "usage": chunks[-1]["usage"]}


def completion(url: str, words: str) -> dict:
    body = {"model": "noa", "prompt": words, "stream": True, "temperature": 0, "max_tokens": 40}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=120) as response:
        return {"text": "".join(c["choices"][0]["text"] for c in sse(response.iter_lines()) if c["choices"])}


def page(url: str, words: str) -> dict:
    body = {"model": "noa", "messages": [{"role": "user", "content": words}], "temperature": 0, "max_tokens": 40}
    with httpx.stream("POST", f"{url}/page/chat", json=body, timeout=120) as response:
        events = sse(response.iter_lines())
    messages, current = [], ""
    for event in events:
        if "text" in event:
            current += event["text"]
        elif event.get("end_message"):
            messages.append(current)
            current = ""
    assert events[-1] == {"done": True}
    return {"messages": messages + ([current] if current else [])}


def ollama(url: str, words: str) -> dict:
    body = {"model": "noa", "messages": [{"role": "user", "content": words}],
            "options": {"temperature": 0, "num_predict": 40}}
    with httpx.stream("POST", f"{url}/api/chat", json=body, timeout=120) as response:
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert lines[-1]["done"] is True
    return {"text": "".join(line["message"]["content"] for line in lines), "count": lines[-1]["eval_count"]}


def at_once(calls) -> list:
    """Run the (function, args...) calls in threads released together; their results in order."""
    results = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def run(i, fn, *args):
        start.wait()
        results[i] = fn(*args)

    threads = [threading.Thread(target=run, args=(i, *call)) for i, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    return results


def wait_idle(live) -> None:
    deadline = time.monotonic() + 30
    while not live.idle():
        assert time.monotonic() < deadline, "the batch never emptied"
        time.sleep(0.01)


def test_concurrent_streams_through_every_front_door_each_get_the_reply_they_get_alone(app):
    doors = [chat, completion, page, ollama] * 2
    calls = [(door, None, words) for door, words in zip(doors, WORDS, strict=True)]
    with live_server(app) as url:
        together = at_once([(fn, url, words) for fn, _, words in calls])
        wait_idle(app.state.live)
        assert app.state.live.widest >= 2  # some of them were decoded in one batch
        alone = [fn(url, words) for fn, _, words in calls]
    assert together == alone
    assert all(result.get("text") or result.get("messages") for result in together)


def test_each_concurrent_request_keeps_its_own_sampling_settings(app):
    settings = [{"max_tokens": 5}, {"temperature": 1.0, "seed": 7}, {"temperature": 0.8, "top_p": 0.7, "seed": 3},
                {"repetition_penalty": 1.8}, {"temperature": 1.0, "seed": 8}, {}]
    with live_server(app) as url:
        together = at_once([(functools.partial(chat, **fields), url, "hey") for fields in settings])
        wait_idle(app.state.live)
        alone = [chat(url, "hey", **fields) for fields in settings]
    assert together == alone
    assert together[0]["finish"] == "length" and together[0]["usage"]["completion_tokens"] == 5
    assert together[1]["text"] != together[4]["text"]  # the seed is the request's own
    assert together[3]["text"] != together[5]["text"]  # and so is the penalty


def test_a_client_that_hangs_up_mid_stream_frees_its_row_while_the_others_finish(app):
    live = app.state.live
    with live_server(app) as url:
        body = {"model": "noa", "messages": [{"role": "user", "content": "hey"}], "stream": True, "max_tokens": 90,
                "temperature": 0}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as leaving:
            next(leaving.iter_lines())
            others = at_once([(chat, url, words) for words in WORDS[1:4]])
        deadline = time.monotonic() + 30
        while live.running():
            assert time.monotonic() < deadline, "a row outlived its client"
            time.sleep(0.01)
        wait_idle(live)
        assert others == [chat(url, words) for words in WORDS[1:4]]
    assert not live.held and not live.lanes and live.solo is None


def test_a_bad_request_among_concurrent_ones_is_one_clear_400_and_the_others_stream(app):
    too_long = " ".join(["word"] * 3000)  # more tokens than the context window holds

    def bad(url):
        body = {"model": "noa", "messages": [{"role": "user", "content": too_long}], "stream": True}
        response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
        return response.status_code, response.json()["error"]["message"]

    with live_server(app) as url:
        results = at_once([(bad, url)] + [(chat, url, words) for words in WORDS[:3]])
        wait_idle(app.state.live)
        status, message = results[0]
        assert status == 400 and "token" in message
        assert results[1:] == [chat(url, words) for words in WORDS[:3]]


def test_a_stop_string_ends_a_batched_reply_where_it_ends_alone(app):
    with live_server(app) as url:
        whole = chat(url, "hey")["text"]
        stop = whole[len(whole) // 2: len(whole) // 2 + 2]
        calls = [(functools.partial(chat, stop=stop), url, "hey")] + [(chat, url, words) for words in WORDS[1:4]]
        together = at_once(calls)
        wait_idle(app.state.live)
        assert together[0] == chat(url, "hey", stop=stop)
        assert together[0]["text"] == whole[: whole.index(stop)] and together[0]["finish"] == "stop"
        assert together[1:] == [chat(url, words) for words in WORDS[1:4]]
