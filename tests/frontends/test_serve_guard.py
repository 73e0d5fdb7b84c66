"""What the server shares and with whom, against a live uvicorn server with real HTTP clients (httpx, raw sockets):
the key (or the raters' share token) on every route that returns chat content, the Host and Origin checks, JSON
bodies only, strict validation, bodies counted as they arrive, hang-ups, stop strings, the security headers, the
port and key options of `talkalike serve`. A FakeTwin answers, except where the real decoder's limits are the point."""

import json
import socket
import stat
import time

import httpx
import pytest
import uvicorn
from fake_twin import TUNED, FakeTwin, fake_stream, live_server

from talkalike.cli import main
from talkalike.evaluate import abtest
from talkalike.frontends import serve
from talkalike.frontends.serve import ServeSettings, create_app

HEY = [{"role": "user", "content": "hey"}]
CHAT = {"model": "noa", "messages": HEY}
PAIRS = [{"id": "eval-1-1", "context": HEY, "real": ["ok"], "twin": ["sure"]}]


def server(twin=None, **settings):
    twin = twin or FakeTwin()
    return live_server(create_app(twin, ServeSettings(**settings), stream=fake_stream))


@pytest.fixture
def run_dir(tmp_path):
    abtest.write_pairs(tmp_path, PAIRS)
    return tmp_path


def auth(key):
    return {"Authorization": f"Bearer {key}"}


def ask_next_and_answer(url, headers):
    """(status of GET /ab/next, status of answering it)."""
    question = httpx.get(f"{url}/ab/next", headers=headers)
    if question.status_code != 200:
        return question.status_code, httpx.post(f"{url}/ab/answer", json={"question": "x", "choice": "a"},
                                                headers=headers).status_code
    return 200, httpx.post(f"{url}/ab/answer", json={"question": question.json()["question"], "choice": "a"},
                           headers=headers).status_code


def test_with_a_key_every_route_with_chat_content_needs_it_and_raters_get_only_the_blind_test(run_dir):
    twin = FakeTwin(run_dir=run_dir)
    with server(twin, api_key="owner-key") as url:
        token = abtest.share_token(run_dir)
        for headers in ({}, auth("wrong"), auth(token)):
            assert httpx.get(f"{url}/api/info", headers=headers).status_code == 401
            for path in ("/page/chat", "/api/chat", "/api/generate", "/v1/completions"):
                assert httpx.post(f"{url}{path}", json=CHAT, headers=headers).status_code == 401, path
            assert httpx.get(f"{url}/api/tags", headers=headers).status_code == 401
            assert httpx.get(f"{url}/v1/models", headers=headers).status_code == 401
            assert httpx.post(f"{url}/v1/chat/completions", json=CHAT, headers=headers).status_code == 401
        assert ask_next_and_answer(url, {}) == (401, 401)  # the A/B test served real chats to anyone before
        assert ask_next_and_answer(url, auth("wrong")) == (401, 401)
        assert ask_next_and_answer(url, auth(token)) == (200, 200)  # the raters' link
        assert ask_next_and_answer(url, auth("owner-key")) == (200, 200)
        assert httpx.post(f"{url}/v1/chat/completions", json=CHAT, headers=auth("owner-key")).status_code == 200
        for page in ("/", "/ab", "/static/app.js", "/static/ab.js"):  # the pages hold no data
            assert httpx.get(f"{url}{page}").status_code == 200, page
    assert len(twin.calls) == 1


def test_the_raters_link_is_printed_at_startup_and_the_port_is_checked_before_the_model_loads(run_dir, monkeypatch,
                                                                                            capsys, tmp_path):
    served = []
    monkeypatch.setattr(serve, "load_twin", lambda run, base, home, batched: FakeTwin(run_dir=run_dir))
    monkeypatch.setattr(serve, "talk_as", lambda twin, name, memories: None)
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets: served.append((self.config.app, sockets)))
    monkeypatch.setenv("TALKALIKE_API_KEY", "from-env")
    assert main(["--home", str(tmp_path), "serve", "noa", "--host", "0.0.0.0", "--port", "0"]) == 0
    err = capsys.readouterr().err
    assert f"/ab?t={abtest.share_token(run_dir)}" in err
    (app, sockets), = served
    assert app.state.settings.api_key == "from-env" and sockets[0].fileno() == -1  # closed once served

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setattr(serve, "load_twin",
                            lambda *a, **k: pytest.fail("the model loaded before the port was checked"))
        assert main(["--home", str(tmp_path), "serve", "noa", "--port", str(port)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and f"port {port}" in lines[0] and "--port" in lines[0]


def test_the_api_key_can_come_from_a_file_and_a_bad_file_is_one_clear_error(run_dir, monkeypatch, capsys, tmp_path):
    served = []
    monkeypatch.setattr(serve, "load_twin", lambda run, base, home, batched: FakeTwin(run_dir=run_dir))
    monkeypatch.setattr(serve, "talk_as", lambda twin, name, memories: None)
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets: served.append(self.config.app))
    monkeypatch.setenv("TALKALIKE_API_KEY", "from-env")
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    assert main(["--home", str(tmp_path), "serve", "noa", "--host", "0.0.0.0", "--port", "0",
                 "--api-key-file", str(key_file)]) == 0
    assert served[0].state.settings.api_key == "from-file"
    capsys.readouterr()
    for bad in (tmp_path / "missing", tmp_path):
        assert main(["--home", str(tmp_path), "serve", "noa", "--api-key-file", str(bad)]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: cannot read the API key from")
    assert "--api-key-file" in serve_help() and "TALKALIKE_API_KEY" in serve_help() and "ps" in serve_help()


def serve_help() -> str:
    from talkalike.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sub.choices["serve"].format_help()


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "127.0.0.1.nip.io:{port}", "127.0.0.1:1",
                                  "localhost:1", ""])
def test_a_host_header_other_than_the_served_address_is_refused(host):
    twin = FakeTwin()
    with server(twin) as url:
        port = url.rsplit(":", 1)[1]
        for route in ("/", "/api/info"):
            response = httpx.get(f"{url}{route}", headers={"Host": host.format(port=port)})
            assert response.status_code == 421 and response.json()["error"]["code"] == "wrong_host"
        response = httpx.post(f"{url}/page/chat", json=CHAT, headers={"Host": host.format(port=port)})
        assert response.status_code == 421
    assert twin.calls == []


def test_every_loopback_spelling_of_the_served_address_is_accepted():
    with server() as url:
        port = url.rsplit(":", 1)[1]
        for host in ("127.0.0.1", "localhost", "[::1]", "LOCALHOST"):
            assert httpx.get(f"{url}/api/info", headers={"Host": f"{host}:{port}"}).status_code == 200, host


def test_a_cross_site_page_can_neither_drive_the_model_nor_read_it():
    twin = FakeTwin()
    with server(twin) as url:
        evil = {"Origin": "http://evil.example"}
        # A "simple" request a page may send without a preflight: text/plain, another origin.
        for path in ("/page/chat", "/v1/chat/completions"):
            response = httpx.post(f"{url}{path}", content=json.dumps(CHAT),
                                  headers=evil | {"Content-Type": "text/plain"})
            assert response.status_code == 403 and "another site" in response.json()["error"]["message"]
            assert httpx.post(f"{url}{path}", json=CHAT, headers=evil).status_code == 403
            assert httpx.post(f"{url}{path}", json=CHAT, headers={"Origin": "null"}).status_code == 403
            # Even from the same origin (or from curl) the body must be declared JSON.
            for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
                response = httpx.post(f"{url}{path}", content=json.dumps(CHAT), headers={"Content-Type": kind})
                assert response.status_code == 415, kind
        preflight = httpx.options(f"{url}/v1/chat/completions", headers=evil | {
            "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"})
        assert not any(name.lower().startswith("access-control-") for name in preflight.headers)
        assert twin.calls == []
        same_site = {"Origin": url}
        assert httpx.post(f"{url}/page/chat", json=CHAT, headers=same_site).status_code == 200
        assert httpx.get(f"{url}/api/info", headers=same_site).headers.get("access-control-allow-origin") is None
    assert len(twin.calls) == 1


def test_pages_and_replies_carry_the_security_headers():
    with server() as url:
        for path in ("/", "/static/app.js", "/v1/models", "/nope"):
            headers = httpx.get(f"{url}{path}").headers
            assert "script-src 'self'" in headers["content-security-policy"]
            assert "frame-ancestors 'none'" in headers["content-security-policy"]
            assert "unsafe-inline" not in headers["content-security-policy"]
            assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY"
        assert "x-frame-options" in httpx.get(f"{url}/", headers={"Host": "evil.example"}).headers  # refusals too


BAD_BODIES = {
    "model as a list": {"model": ["noa"], "messages": HEY},
    "a text part that is a number": {"model": "noa", "messages": [{"role": "user",
                                                                   "content": [{"type": "text", "text": 5}]}]},
    "a content part that is a string": {"model": "noa", "messages": [{"role": "user", "content": ["hey"]}]},
    "content null": {"model": "noa", "messages": [{"role": "user", "content": None}]},
    "an unknown role": {"model": "noa", "messages": [{"role": "tool", "content": "x"}]},
    "messages as an object": {"model": "noa", "messages": {"role": "user", "content": "hey"}},
    "a seed past 2^64": CHAT | {"seed": 2**64},
    "a seed as a string": CHAT | {"seed": "3"},
    "max_tokens of 5,000 digits": b'{"model": "noa", "messages": [{"role": "user", "content": "hey"}], '
                                  b'"max_tokens": ' + b"9" * 5000 + b"}",
    "max_tokens as a float": CHAT | {"max_tokens": 10.5},
    "max_tokens as true": CHAT | {"max_tokens": True},
    "temperature as a string": CHAT | {"temperature": "hot"},
    "temperature NaN": b'{"model": "noa", "messages": [{"role": "user", "content": "hey"}], "temperature": NaN}',
    "stream as a string": CHAT | {"stream": "yes"},
    "n = 2": CHAT | {"n": 2},
    "stop as a number": CHAT | {"stop": 5},
    "five stop strings": CHAT | {"stop": ["a", "b", "c", "d", "e"]},
    "an empty stop string": CHAT | {"stop": ""},
    "a lone surrogate": b'{"model": "noa", "messages": [{"role": "user", "content": "\\ud800"}]}',
    "50,000 nested brackets": b'{"model": "noa", "messages": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    "50,000 nested objects": b'{"x": ' + b'{"a":' * 20_000 + b"1" + b"}" * 20_000 + b"}",
    "invalid UTF-8": b'{"model": "noa\xff", "messages": []}',
    "a JSON array": b"[1, 2]",
    "an empty body": b"",
    "no messages": {"model": "noa"},
}


@pytest.fixture(scope="module")
def one_server():
    """One server for the many bad bodies: each is refused before it reaches the model."""
    twin = FakeTwin()
    with server(twin) as url:
        yield twin, url


@pytest.mark.parametrize("name", BAD_BODIES)
def test_a_malformed_body_is_a_400_in_openais_shape(name, one_server):
    twin, url = one_server
    body = BAD_BODIES[name]
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    calls = len(twin.calls)
    for path in ("/v1/chat/completions", "/page/chat"):
        response = httpx.post(f"{url}{path}", content=content, headers={"Content-Type": "application/json"})
        assert response.status_code == 400, (path, response.text)
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert httpx.post(f"{url}/v1/chat/completions", json=CHAT).status_code == 200  # and the server lives on
    assert len(twin.calls) == calls + 1


def test_a_chunked_body_is_counted_as_it_arrives_and_refused_early_with_a_413(run_dir):
    """A 200 MB chunked POST to /ab/answer: the answer comes after a few hundred KB, and the rest is never read."""
    with live_server(create_app(FakeTwin(run_dir=run_dir), ServeSettings(), stream=fake_stream)) as url:
        port = int(url.rsplit(":", 1)[1])
        chunk = b"x" * 65536
        frame = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
        sent, reply = 0, b""
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(b"POST /ab/answer HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n" % port)
            conn.setblocking(False)
            while sent < 200 * 2**20 and not reply:
                try:
                    sent += conn.send(frame)
                except BlockingIOError:
                    time.sleep(0.01)  # the server has stopped reading: what it says is on its way
                except (BrokenPipeError, ConnectionResetError):
                    break
                try:
                    reply = conn.recv(65536)
                except BlockingIOError:
                    pass
            conn.setblocking(True)
            # The head and the body may come in separate packets: read until the body's declared length is in.
            while b"\r\n\r\n" not in reply or len(conn_body(reply)) < _content_length(reply):
                data = conn.recv(65536)
                if not data:
                    break
                reply += data
        assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
        assert sent < 16 * 2**20  # refused after the limit, not after 200 MB
        assert b"larger than 262144 bytes" in reply + conn_body(reply)
        assert httpx.get(f"{url}/ab/next").status_code == 200  # the server is fine
    assert not (abtest.ab_dir(run_dir) / abtest.ANSWERS).exists()


def conn_body(reply: bytes) -> bytes:
    return reply.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in reply else b""


def _content_length(reply: bytes) -> int:
    """The Content-Length of a response head (0 if it declares none)."""
    for line in reply.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def test_a_torn_last_line_in_answers_does_not_break_the_blind_test(run_dir):
    answers = abtest.ab_dir(run_dir) / abtest.ANSWERS
    answers.write_text('{"time": "2025-01-01T00:00:00+00:00", "pair": "eval-1-1", "choice": "a", "real": "a", "fo')
    with live_server(create_app(FakeTwin(run_dir=run_dir), ServeSettings(), stream=fake_stream)) as url:
        question = httpx.get(f"{url}/ab/next")
        assert question.status_code == 200
        answer = httpx.post(f"{url}/ab/answer", json={"question": question.json()["question"], "choice": "a"})
        assert answer.status_code == 200
    assert [json.loads(line)["choice"] for line in answers.read_text().splitlines()] == ["a"]
    assert stat.S_IMODE(answers.stat().st_mode) == 0o600


def test_a_non_streaming_client_that_hangs_up_stops_its_reply_and_frees_its_place():
    twin = FakeTwin(delay=0.02, tuned=["a long reply " * 20] * 3)  # about 5 s of generating
    with server(twin, queue_timeout_s=3) as url:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=httpx.Timeout(10, read=0.5))
        started = time.monotonic()
        while not twin.completed and time.monotonic() - started < 3:
            time.sleep(0.02)
        assert twin.completed == [False]  # stopped, not generated to the end for nobody
        twin.delay = 0
        assert httpx.post(f"{url}/v1/chat/completions", json=CHAT).status_code == 200
    assert twin.active == 0


def test_a_client_that_hangs_up_while_queued_never_generates():
    twin = FakeTwin(delay=0.01, tuned=["a long reply " * 10] * 3)  # about 1.2 s
    with server(twin, batch_rows=1) as url:  # one row: the others queue
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=CHAT | {"stream": True}) as first:
            lines = first.iter_lines()
            next(lines)
            for kind in ("/v1/chat/completions", "/page/chat", "/api/chat"):
                with pytest.raises(httpx.ReadTimeout):
                    httpx.post(f"{url}{kind}", json=CHAT, timeout=httpx.Timeout(10, read=0.2))
            list(lines)
        time.sleep(0.3)
        assert len(twin.calls) == 1  # the abandoned ones left the queue without generating
        assert httpx.post(f"{url}/v1/chat/completions", json=CHAT).status_code == 200
    assert len(twin.calls) == 2


def test_stop_strings_end_the_reply_where_they_start_and_stop_generating():
    twin = FakeTwin()
    with server(twin) as url:
        reply = httpx.post(f"{url}/v1/chat/completions", json=CHAT | {"stop": "ur"}).json()
        assert reply["choices"][0]["message"]["content"] == "ok\ns"
        assert twin.completed == [False]
        reply = httpx.post(f"{url}/v1/chat/completions", json=CHAT | {"stop": ["zzz", "נתראה"]}).json()
        assert reply["choices"][0]["message"]["talkalike_messages"] == ["ok", "sure", "שלום!"]
        streamed = httpx.post(f"{url}/v1/chat/completions", json=CHAT | {"stop": ["sure"], "stream": True}).text
        pieces = [json.loads(line[6:]) for line in streamed.split("\n\n") if line.startswith("data: {")]
        assert "".join(p["choices"][0]["delta"].get("content") or "" for p in pieces) == "ok"
        assert streamed.rstrip().endswith("data: [DONE]")
        reply = httpx.post(f"{url}/v1/chat/completions", json=CHAT | {"stop": ["never"]}).json()
        assert reply["choices"][0]["message"]["talkalike_messages"] == TUNED


def test_the_documented_largest_max_tokens_of_1024_gets_a_reply(tiny_tokenizer, one_torch_thread):
    """The real decoder: max_tokens=1024 once always failed with "0 tokens left" for the history."""
    from conftest import build_tiny_model

    from talkalike.decode.twin import Twin

    model = build_tiny_model(len(tiny_tokenizer))
    model.config.max_position_embeddings = 4096  # as a real model's window (Gemma 3 1B: 32k); the twin's is 1024
    twin = Twin.of(model.eval(), tiny_tokenizer, name="noa", persona="Noa")
    with live_server(create_app(twin, ServeSettings())) as url:
        for max_tokens in (1024, 1):
            # Common letters as stop strings end the random model's reply within a few tokens: a quick test, and
            # `stop` through the real decoder.
            response = httpx.post(f"{url}/v1/chat/completions", timeout=120, json=CHAT | {
                "max_tokens": max_tokens, "seed": 1, "stop": [" ", "a", "e", "o"]})
            assert response.status_code == 200, response.text
            assert not {" ", "a", "e", "o"} & set(response.json()["choices"][0]["message"]["content"])
        assert httpx.post(f"{url}/v1/chat/completions", json=CHAT | {"max_tokens": 1025}).status_code == 400


def test_json_depth_skips_brackets_inside_strings_and_stays_linear_on_unterminated_ones():
    from talkalike.frontends.guard import json_depth

    assert json_depth(b'{"a": "[[[[", "b": [[1]], "c": "\\"[{"}') == 3
    assert json_depth(b'{"a": "x\\\\", "b": [[1]]}') == 3  # an escaped backslash ends the string
    assert json_depth(b"[]" * 1000) == 1 and json_depth(b"") == 0
    started = time.monotonic()
    assert json_depth(b'"' + b'[\\"' * 80_000) == 0  # once took minutes: every quote restarted the string match
    assert time.monotonic() - started < 2
