"""The OpenAI-compatible API, driven by the official `openai` client against a live uvicorn server on loopback:
models, streaming and not, the API-key rule, limits, bad requests and the queue. A FakeTwin answers."""

import json
import threading
import time

import httpx
import openai
import pytest
from fake_twin import BASE, TUNED, FakeTwin, fake_stream, live_server

from talkalike.cli import main
from talkalike.frontends.serve import ServeSettings, create_app

HEY = [{"role": "user", "content": "hey"}]


def serve(twin=None, **settings):
    twin = twin or FakeTwin()
    return twin, live_server(create_app(twin, ServeSettings(**settings), stream=fake_stream))


def client(url, key="none"):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=30)


def test_models_lists_the_tuned_twin_and_its_base():
    _, server = serve()
    with server as url:
        assert [m.id for m in client(url).models.list()] == ["noa", "noa:base"]


def test_a_reply_joins_the_personas_messages_with_newlines_and_lists_them_separately():
    twin, server = serve()
    with server as url:
        completion = client(url).chat.completions.create(model="noa", messages=HEY)
    message = completion.choices[0].message
    assert message.role == "assistant" and message.content == "\n".join(TUNED)
    assert message.model_extra["talkalike_messages"] == TUNED
    assert completion.choices[0].finish_reason == "stop" and completion.model == "noa"
    assert twin.calls[0][0] == HEY and twin.calls[0][2] is True


def test_streaming_delivers_the_same_text_in_many_chunks_and_ends():
    _, server = serve()
    with server as url:
        chunks = list(client(url).chat.completions.create(model="noa", messages=HEY, stream=True))
    pieces = [c.choices[0].delta.content or "" for c in chunks]
    assert "".join(pieces) == "\n".join(TUNED)
    assert len([p for p in pieces if p]) > len(TUNED)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert {c.choices[0].delta.model_extra.get("talkalike_message_index") for c in chunks if c.choices[0].delta.content} \
        == {0, 1, 2}


def test_the_raw_stream_is_server_sent_events_ending_with_done():
    _, server = serve()
    with server as url:
        response = httpx.post(f"{url}/v1/chat/completions", json={"model": "noa", "messages": HEY, "stream": True})
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line for line in response.text.split("\n\n") if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    json.loads(events[0][6:])


def test_a_reply_holding_unicode_line_breaks_streams_one_event_a_line_for_any_line_splitter():
    """U+2028, U+2029 and U+0085 end a line for str.splitlines() and httpx's aiter_lines(), which many clients read
    a stream with; the events escape them, and the text arrives whole."""
    reply = ["one\u2028two", "three\u2029four\x85five שלום"]
    _, server = serve(FakeTwin(tuned=reply))
    with server as url:
        raw = httpx.post(f"{url}/v1/chat/completions", json={"model": "noa", "messages": HEY, "stream": True}).text
        with httpx.stream("POST", f"{url}/api/chat", json={"model": "noa", "messages": HEY}) as response:
            ndjson = [json.loads(line) for line in response.iter_lines()]
    events = [line for line in raw.splitlines() if line]
    assert all(line.startswith("data: ") for line in events)
    chunks = [json.loads(line[6:]) for line in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == "\n".join(reply)
    assert "".join(line["message"]["content"] for line in ndjson) == "\n".join(reply)


def test_the_base_model_id_answers_with_the_adapter_off():
    twin, server = serve()
    with server as url:
        completion = client(url).chat.completions.create(model="noa:base", messages=HEY)
    assert completion.choices[0].message.content == BASE[0]
    assert twin.calls[0][2] is False


def test_sampling_parameters_override_the_runs_defaults_and_system_messages_are_ignored():
    twin, server = serve()
    with server as url:
        client(url).chat.completions.create(
            model="noa", messages=[{"role": "system", "content": "be nice"}] + HEY, temperature=0.2, max_tokens=50,
            seed=3)
    history, config, _ = twin.calls[0]
    assert history == HEY
    assert (config.temperature, config.max_new_tokens, config.seed, config.repetition_penalty) == (0.2, 50, 3, 1.1)


def test_with_an_api_key_requests_without_it_get_401_and_with_it_succeed():
    _, server = serve(api_key="s3cret")
    with server as url:
        with pytest.raises(openai.AuthenticationError) as caught:
            client(url, key="wrong").models.list()
        assert caught.value.status_code == 401
        assert caught.value.body["type"] == "authentication_error"
        for path in ("/page/chat", "/api/chat"):
            assert httpx.post(f"{url}{path}", json={"model": "noa", "messages": HEY}).status_code == 401
        assert [m.id for m in client(url, key="s3cret").models.list()] == ["noa", "noa:base"]
        assert httpx.get(f"{url}/").status_code == 200  # the page itself holds no data


def test_binding_beyond_loopback_without_a_key_refuses_to_start(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("TALKALIKE_API_KEY", raising=False)
    assert main(["--home", str(tmp_path), "serve", "--base", "whatever", "--host", "0.0.0.0"]) == 2
    assert "API key" in capsys.readouterr().err
    with pytest.raises(Exception, match="API key"):
        create_app(FakeTwin(), ServeSettings(host="192.168.1.5"), stream=fake_stream)


def test_malformed_json_is_a_400_in_openais_error_shape():
    _, server = serve()
    with server as url:
        response = httpx.post(f"{url}/v1/chat/completions", content=b'{"model": "noa", "messages": [',
                              headers={"content-type": "application/json"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and "JSON" in error["message"]


def test_an_unknown_model_is_a_404_that_names_the_served_ones():
    _, server = serve()
    with server as url:
        with pytest.raises(openai.NotFoundError) as caught:
            client(url).chat.completions.create(model="gpt-4o", messages=HEY)
    assert "noa:base" in caught.value.body["message"] and caught.value.body["code"] == "model_not_found"


def test_a_request_over_the_size_limit_is_a_413():
    _, server = serve(max_body_bytes=2000)
    with server as url:
        with pytest.raises(openai.APIStatusError) as caught:
            client(url).chat.completions.create(model="noa", messages=[{"role": "user", "content": "x" * 5000}])
    assert caught.value.status_code == 413 and "larger than 2000 bytes" in caught.value.body["message"]


def test_too_long_a_history_or_too_many_tokens_are_clear_400s():
    _, server = serve(max_messages=3, max_tokens=100)
    with server as url:
        with pytest.raises(openai.BadRequestError, match="at most 3 messages"):
            client(url).chat.completions.create(model="noa", messages=HEY * 4)
        with pytest.raises(openai.BadRequestError, match="max_tokens must be an integer from 1 to 100"):
            client(url).chat.completions.create(model="noa", messages=HEY, max_tokens=101)
        with pytest.raises(openai.BadRequestError, match="last message must be the user's"):
            client(url).chat.completions.create(model="noa", messages=[{"role": "assistant", "content": "hi"}])
        with pytest.raises(openai.BadRequestError, match="shorter message"):
            client(url).chat.completions.create(model="noa", messages=[{"role": "user", "content": "too long"}],
                                                stream=True)


def concurrent_replies(twin, **settings):
    results = []
    _, server = serve(twin, **settings)
    with server as url:
        def ask():
            results.append(client(url).chat.completions.create(model="noa", messages=HEY).choices[0].message.content)
        threads = [threading.Thread(target=ask) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    return results


def test_concurrent_requests_are_generated_together_up_to_the_batch_size():
    twin = FakeTwin(delay=0.01)
    assert concurrent_replies(twin, batch_rows=3) == ["\n".join(TUNED)] * 4
    assert twin.most_active == 3  # the fourth waited for a free row


def test_with_one_row_concurrent_requests_are_answered_one_at_a_time():
    twin = FakeTwin(delay=0.01)
    assert concurrent_replies(twin, batch_rows=1) == ["\n".join(TUNED)] * 4
    assert twin.most_active == 1


def test_a_request_that_waits_too_long_gets_a_503_and_the_server_keeps_working():
    twin, server = serve(FakeTwin(delay=0.1), queue_timeout_s=0.3, batch_rows=1)
    with server as url:
        slow = threading.Thread(target=lambda: client(url).chat.completions.create(model="noa", messages=HEY))
        slow.start()
        while not twin.calls:
            pass
        with pytest.raises(openai.InternalServerError) as caught:
            client(url).chat.completions.create(model="noa", messages=HEY)
        assert caught.value.status_code == 503 and "busy" in caught.value.body["message"]
        slow.join(60)
        twin.delay = 0
        assert client(url).chat.completions.create(model="noa", messages=HEY).choices[0].message.content


def test_the_blind_ab_test_is_served_once_the_run_has_pairs(tmp_path):
    from talkalike.evaluate.abtest import write_pairs

    twin = FakeTwin(run_dir=tmp_path)
    with live_server(create_app(twin, ServeSettings(), stream=fake_stream)) as url:
        assert httpx.get(f"{url}/ab").status_code == 404
    write_pairs(tmp_path, [{"id": "1", "context": HEY, "real": ["ok"], "twin": ["sure"]}])
    with live_server(create_app(twin, ServeSettings(), stream=fake_stream)) as url:
        assert httpx.get(f"{url}/ab").status_code == 200
        assert httpx.get(f"{url}/ab/next").status_code == 200


def test_a_client_that_hangs_up_mid_stream_stops_the_reply_and_frees_the_model():
    twin = FakeTwin(delay=0.02, tuned=["a long reply " * 20] * 3)  # about 5 s of streaming
    _, server = serve(twin, queue_timeout_s=3)
    with server as url:
        with httpx.stream("POST", f"{url}/v1/chat/completions",
                          json={"model": "noa", "messages": HEY, "stream": True}) as response:
            next(response.iter_lines())
        started = time.monotonic()
        while not twin.completed and time.monotonic() - started < 3:
            time.sleep(0.02)
        assert twin.completed == [False]  # closed early, not generated to the end for nobody
        twin.delay = 0
        assert client(url).chat.completions.create(model="noa", messages=HEY).choices[0].message.content
    assert twin.active == 0


def test_a_reply_reports_its_usage_and_a_max_tokens_cut_says_length():
    _, server = serve()
    with server as url:
        whole = client(url).chat.completions.create(model="noa", messages=HEY)
        cut = client(url).chat.completions.create(model="noa", messages=HEY, max_tokens=2)
        chunks = list(client(url).chat.completions.create(model="noa", messages=HEY, max_tokens=2, stream=True,
                                                          stream_options={"include_usage": True}))
    # The fake twin counts a word of the history as a prompt token and a streamed chunk as a reply token.
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens, whole.usage.total_tokens) == (1, 11, 12)
    assert whole.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == "ok\nsur" and cut.choices[0].finish_reason == "length"
    assert cut.usage.completion_tokens == 2
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "ok\nsur"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 2


def test_the_real_decoder_counts_tokens_with_the_tokenizer_and_says_length_at_max_tokens(tiny_tokenizer,
                                                                                       one_torch_thread):
    from conftest import build_tiny_model

    from talkalike.decode.turns import fit_prompt
    from talkalike.decode.twin import Twin

    twin = Twin.of(build_tiny_model(len(tiny_tokenizer)).eval(), tiny_tokenizer, name="noa", persona="Noa")
    with live_server(create_app(twin, ServeSettings())) as url:
        completion = client(url).chat.completions.create(model="noa", messages=HEY, max_tokens=3, seed=1)
    assert completion.usage.prompt_tokens == len(fit_prompt(twin, HEY, twin.defaults))
    # A random model rarely ends its turn within 3 tokens; if it did, the reason must say so and count fewer.
    assert (completion.choices[0].finish_reason, completion.usage.completion_tokens) == ("length", 3)


def test_a_model_can_be_retrieved_by_id():
    _, server = serve()
    with server as url:
        assert client(url).models.retrieve("noa:base").id == "noa:base"
        with pytest.raises(openai.NotFoundError) as caught:
            client(url).models.retrieve("gpt-4o")
    assert caught.value.body["code"] == "model_not_found"


def test_completions_answer_the_prompt_as_the_persona_streaming_or_not():
    twin, server = serve()
    with server as url:
        whole = client(url).completions.create(model="noa", prompt="hey")
        chunks = list(client(url).completions.create(model="noa:base", prompt=["hey"], stream=True))
        cut = client(url).completions.create(model="noa", prompt="hey", max_tokens=1)
        with pytest.raises(openai.BadRequestError, match="one non-empty prompt"):
            client(url).completions.create(model="noa", prompt=["hey", "you"])
        with pytest.raises(openai.BadRequestError, match="echo is not supported"):
            client(url).completions.create(model="noa", prompt="hey", echo=True)
    assert whole.object == "text_completion" and whole.choices[0].text == "\n".join(TUNED)
    assert whole.choices[0].finish_reason == "stop" and whole.usage.completion_tokens == 11
    assert "".join(c.choices[0].text for c in chunks) == BASE[0] and chunks[-1].choices[0].finish_reason == "stop"
    assert len(chunks) > 2
    assert cut.choices[0].text == "ok" and cut.choices[0].finish_reason == "length"
    assert [(call[0], call[2]) for call in twin.calls] == [(HEY, True), (HEY, False), (HEY, True)]


TOOL = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}}}


def test_tools_and_response_format_are_clear_400s_not_ignored():
    twin, server = serve()
    with server as url:
        with pytest.raises(openai.BadRequestError, match="tools and function calling are not supported") as caught:
            client(url).chat.completions.create(model="noa", messages=HEY, tools=[TOOL])
        assert caught.value.body["param"] == "tools"
        with pytest.raises(openai.BadRequestError, match="tool_choice is not supported"):
            client(url).chat.completions.create(model="noa", messages=HEY, tool_choice="required")
        for kind in ("json_object", "json_schema"):
            with pytest.raises(openai.BadRequestError, match="not JSON") as caught:
                client(url).chat.completions.create(model="noa", messages=HEY, response_format={
                    "type": kind, "json_schema": {"name": "x", "schema": {}}})
            assert caught.value.body["param"] == "response_format"
        assert twin.calls == []
        # What changes nothing is accepted: plain text, and an empty tool list.
        assert client(url).chat.completions.create(model="noa", messages=HEY, response_format={"type": "text"},
                                                   tools=[]).choices[0].message.content
