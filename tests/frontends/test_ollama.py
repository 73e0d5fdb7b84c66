"""The Ollama-compatible API, driven by the official `ollama` client against a live uvicorn server on loopback: the
model list, chat and generate (streaming NDJSON by default, or one object), options, counts, errors in Ollama's
shape, the key, hang-ups. A FakeTwin answers; each of its streamed chunks counts as a token."""

import json
import time
from datetime import datetime

import httpx
import ollama
import pytest
from fake_twin import BASE, TUNED, FakeTwin, fake_stream, live_server

from talkalike import __version__
from talkalike.frontends.serve import ServeSettings, create_app

HEY = [{"role": "user", "content": "hey"}]
REPLY = "\n".join(TUNED)
CHUNKS = 11  # TUNED in 3-character chunks: "ok" 1, "sure" 2, the Hebrew message 8


def serve(twin=None, **settings):
    twin = twin or FakeTwin()
    return twin, live_server(create_app(twin, ServeSettings(**settings), stream=fake_stream))


def client(url, key=None):
    return ollama.Client(host=url, timeout=30, headers={"Authorization": f"Bearer {key}"} if key else None)


def test_tags_lists_the_tuned_twin_and_its_base_with_ollamas_fields(tmp_path):
    _, server = serve(FakeTwin(run_dir=tmp_path))
    with server as url:
        listed = client(url).list()
        raw = httpx.get(f"{url}/api/tags").json()
    assert [m.model for m in listed.models] == ["noa", "noa:base"]
    assert [m["name"] for m in raw["models"]] == ["noa", "noa:base"]
    assert listed.models[0].modified_at == datetime.fromtimestamp(tmp_path.stat().st_mtime).astimezone()
    assert set(raw["models"][0]["details"]) >= {"format", "family", "families", "parameter_size"}


def test_chat_without_streaming_answers_with_the_whole_reply_and_its_counts():
    twin, server = serve()
    with server as url:
        response = client(url).chat("noa", messages=HEY)
    assert response.message.role == "assistant" and response.message.content == REPLY
    assert response.done and response.done_reason == "stop" and response.model == "noa"
    assert (response.prompt_eval_count, response.eval_count) == (1, CHUNKS)
    assert response.total_duration >= response.eval_duration > 0 and response.prompt_eval_duration > 0
    datetime.fromisoformat(response.created_at)
    assert twin.calls[0][0] == HEY and twin.calls[0][2] is True


def test_chat_streams_the_reply_in_many_pieces_and_ends_with_the_counts():
    _, server = serve()
    with server as url:
        parts = list(client(url).chat("noa", messages=HEY, stream=True))
    assert "".join(p.message.content for p in parts) == REPLY
    assert len([p for p in parts if p.message.content]) > len(TUNED)
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    last = parts[-1]
    assert (last.done_reason, last.prompt_eval_count, last.eval_count) == ("stop", 1, CHUNKS)
    assert last.message.content == "" and parts[0].eval_count is None


def test_the_raw_stream_is_ndjson_and_streaming_is_the_default():
    _, server = serve()
    with server as url:
        response = httpx.post(f"{url}/api/chat", json={"model": "noa", "messages": HEY, "options": None})
        assert httpx.head(f"{url}/").status_code == 200  # how Ollama's CLI checks that a server is up
        assert "<html" in httpx.get(f"{url}/").text.lower()  # and GET / is still the chat page
        # curl -d without a content type, as in Ollama's own examples: refused, in Ollama's error shape
        refused = httpx.post(f"{url}/api/generate", content=b'{"model": "noa", "prompt": "hey"}',
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert refused.status_code == 415 and "application/json" in refused.json()["error"]
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert len(lines) > 2 and all(set(line) >= {"model", "created_at", "message", "done"} for line in lines)
    assert lines[-1]["done"] and not any(line["done"] for line in lines[:-1])
    assert lines[-1]["done_reason"] == "stop" and lines[-1]["eval_count"] == CHUNKS


def test_the_base_model_and_ollamas_latest_tag_are_served():
    twin, server = serve()
    with server as url:
        assert client(url).chat("noa:base", messages=HEY).message.content == BASE[0]
        assert client(url).chat("noa:latest", messages=HEY).message.content == REPLY
    assert [call[2] for call in twin.calls] == [False, True]


def test_generate_answers_the_prompt_as_the_persona_streaming_or_not_and_ignores_system():
    twin, server = serve()
    with server as url:
        whole = client(url).generate("noa", "hey", system="be formal")
        parts = list(client(url).generate("noa", "hey", stream=True))
    assert whole.response == REPLY and whole.done and whole.eval_count == CHUNKS
    assert "".join(p.response for p in parts) == REPLY and parts[-1].done and parts[-1].done_reason == "stop"
    assert len(parts) > len(TUNED) + 1
    assert twin.calls[0][0] == HEY and twin.calls[1][0] == HEY


def test_options_override_the_runs_defaults():
    twin, server = serve()
    with server as url:
        client(url).chat("noa", messages=HEY, options={"temperature": 0.2, "top_p": 0.9, "num_predict": 50,
                                                        "seed": 3, "repeat_penalty": 1.3, "num_ctx": 8192})
        client(url).generate("noa", "hey", options={"num_predict": -1})
    config = twin.calls[0][1]
    assert (config.temperature, config.top_p, config.max_new_tokens, config.seed, config.repetition_penalty) == \
        (0.2, 0.9, 50, 3, 1.3)
    assert twin.calls[1][1].max_new_tokens == twin.defaults.max_new_tokens  # -1: no limit of the client's own


def test_num_predict_that_cuts_the_reply_ends_it_with_done_reason_length():
    _, server = serve()
    with server as url:
        whole = client(url).chat("noa", messages=HEY, options={"num_predict": 2})
        parts = list(client(url).generate("noa", "hey", stream=True, options={"num_predict": 2}))
    assert whole.message.content == "ok\nsur" and whole.done_reason == "length" and whole.eval_count == 2
    assert "".join(p.response for p in parts) == "ok\nsur" and parts[-1].done_reason == "length"


def test_stop_strings_end_the_reply_where_they_start():
    twin, server = serve()
    with server as url:
        response = client(url).chat("noa", messages=HEY, options={"stop": ["ur"]})
    assert response.message.content == "ok\ns" and response.done_reason == "stop"
    assert twin.completed == [False]  # generating stopped there


def test_an_empty_request_just_loads_the_model_as_ollama_does():
    twin, server = serve()
    with server as url:
        assert client(url).chat("noa", messages=[]).done_reason == "load"
        assert client(url).generate("noa", "").done_reason == "load"
        with pytest.raises(ollama.ResponseError) as caught:
            client(url).generate("llama3", "")
    assert caught.value.status_code == 404
    assert twin.calls == []


def test_show_describes_the_model_and_version_names_talkalike():
    twin, server = serve()
    with server as url:
        shown = client(url).show("noa:base")
        version = httpx.get(f"{url}/api/version").json()
        with pytest.raises(ollama.ResponseError) as caught:
            client(url).show("llama3")
    assert "temperature 0.5" in shown.parameters and "repeat_penalty 1.1" in shown.parameters
    assert shown.capabilities == ["completion"] and shown.modelinfo["talkalike.adapter"] is False
    assert version == {"version": __version__}
    assert caught.value.status_code == 404 and "noa:base" in caught.value.error


UNSUPPORTED = {
    "tools": dict(tools=[{"type": "function", "function": {"name": "f", "description": "x", "parameters": {}}}]),
    "format": dict(format="json"),
    "think": dict(think=True),
    "images": dict(messages=[{"role": "user", "content": "hey", "images": ["aGk="]}]),
}


@pytest.mark.parametrize("name", UNSUPPORTED)
def test_what_the_twin_cannot_do_is_a_clear_400_not_ignored(name):
    twin, server = serve()
    with server as url:
        with pytest.raises(ollama.ResponseError) as caught:
            client(url).chat("noa", **({"messages": HEY} | UNSUPPORTED[name]))
    assert caught.value.status_code == 400
    assert caught.value.error.startswith(name) and "not supported" in caught.value.error
    assert twin.calls == []


def test_bad_requests_are_400s_in_ollamas_error_shape():
    twin, server = serve(max_tokens=100)
    with server as url:
        for body in ({"model": "noa", "messages": HEY, "options": {"temperature": "hot"}},
                     {"model": "noa", "messages": HEY, "options": {"num_predict": 101}},
                     {"model": "noa", "messages": HEY, "stream": "yes"},
                     {"model": "noa", "messages": [{"role": "assistant", "content": "hi"}]},
                     {"model": "noa", "messages": [{"role": "tool", "content": "42"}]},
                     {"messages": HEY}):
            response = httpx.post(f"{url}/api/chat", json=body)
            assert response.status_code == 400, body
            assert isinstance(response.json()["error"], str), body
        message = httpx.post(f"{url}/api/chat", json={"model": "noa", "messages": HEY,
                                                      "options": {"num_predict": 101}}).json()["error"]
        assert "options.num_predict must be an integer from 1 to 100" in message
        assert httpx.post(f"{url}/api/generate", content=b'{"model": "noa", "prompt": ',
                          headers={"Content-Type": "application/json"}).status_code == 400
    assert twin.calls == []


def test_with_an_api_key_ollama_clients_send_it_as_a_bearer_header():
    _, server = serve(api_key="s3cret")
    with server as url:
        with pytest.raises(ollama.ResponseError) as caught:
            client(url).chat("noa", messages=HEY)
        assert caught.value.status_code == 401 and "API key" in caught.value.error  # a string, as Ollama's
        with pytest.raises(ollama.ResponseError):
            client(url, key="wrong").list()
        assert client(url, key="s3cret").chat("noa", messages=HEY).message.content == REPLY
        assert [m.model for m in client(url, key="s3cret").list().models] == ["noa", "noa:base"]


def test_a_client_that_hangs_up_mid_stream_stops_the_reply_and_frees_the_model():
    twin = FakeTwin(delay=0.02, tuned=["a long reply " * 20] * 3)  # about 5 s of streaming
    _, server = serve(twin, queue_timeout_s=3)
    with server as url:
        with httpx.stream("POST", f"{url}/api/generate", json={"model": "noa", "prompt": "hey"}) as response:
            next(response.iter_lines())
        started = time.monotonic()
        while not twin.completed and time.monotonic() - started < 3:
            time.sleep(0.02)
        assert twin.completed == [False]
        twin.delay = 0
        assert client(url).generate("noa", "hey").done
    assert twin.active == 0
