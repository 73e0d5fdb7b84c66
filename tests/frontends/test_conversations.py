"""The chat page's saved conversations: transcripts in the terminal chat's format under RUN/chats, private and written
atomically, and the routes that list, load, save and delete them behind the server's key."""

import os
import re
import stat

from fake_twin import FakeTwin, fake_stream

from talkalike.frontends import conversations
from talkalike.frontends.chat import transcript_line
from talkalike.frontends.serve import ServeSettings, create_app

TALK = [
    {"role": "user", "content": "hey, still on for tonight?", "base": False},
    {"role": "assistant", "content": "ok", "base": False},
    {"role": "assistant", "content": "שלום! נתראה ב-8 בדיזנגוף", "base": False},
    {"role": "user", "content": "and you?", "base": False},
    {"role": "assistant", "content": "Hello! How can I help you today?", "base": True},
]


def client_for(tmp_path, **settings):
    from fastapi.testclient import TestClient

    app = create_app(FakeTwin(run_dir=tmp_path), ServeSettings(**settings), stream=fake_stream)
    return TestClient(app, base_url="http://127.0.0.1")


def test_a_saved_conversation_is_a_private_transcript_in_the_runs_chats_folder(tmp_path):
    client = client_for(tmp_path)
    created = client.post("/page/conversations", json={"messages": TALK})
    assert created.status_code == 200
    conversation = created.json()["id"]
    path = tmp_path / "chats" / f"{conversation}.txt"
    lines = path.read_text(encoding="utf-8").splitlines()
    assert re.fullmatch(r"=== \d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4} · noa · web page ===", lines[0])
    assert lines[1:] == ["you: hey, still on for tonight?", "Noa: ok", "Noa: שלום! נתראה ב-8 בדיזנגוף",
                         "you: and you?", "Noa (base): Hello! How can I help you today?"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert client.get(f"/page/conversations/{conversation}").json() == {"id": conversation, "messages": TALK}


def test_saving_again_replaces_the_messages_and_keeps_the_start_time(tmp_path):
    client = client_for(tmp_path)
    conversation = client.post("/page/conversations", json={"messages": TALK[:2]}).json()["id"]
    path = tmp_path / "chats" / f"{conversation}.txt"
    header = path.read_text(encoding="utf-8").splitlines()[0]
    regenerated = TALK[:1] + [{"role": "assistant", "content": "sure", "base": False}]
    assert client.put(f"/page/conversations/{conversation}", json={"messages": regenerated}).status_code == 200
    assert client.get(f"/page/conversations/{conversation}").json()["messages"] == regenerated
    assert path.read_text(encoding="utf-8").splitlines()[0] == header
    assert [p for p in os.listdir(path.parent)] == [path.name]  # no temp file left behind


def test_the_list_is_newest_first_with_the_first_message_as_title_and_delete_removes_one(tmp_path):
    client = client_for(tmp_path)
    older = client.post("/page/conversations", json={"messages": TALK}).json()["id"]
    newer = client.post("/page/conversations", json={"messages": [
        {"role": "user", "content": "a very long first message " * 5}]}).json()["id"]
    os.utime(tmp_path / "chats" / f"{older}.txt", (1_000_000_000, 1_000_000_000))
    (tmp_path / "chats" / "2025-01-31.txt").write_text("=== terminal ===\nyou: hi\n")  # `talkalike chat`'s log
    listed = client.get("/page/conversations").json()["conversations"]
    assert [c["id"] for c in listed] == [newer, older]
    assert listed[1]["title"] == "hey, still on for tonight?" and listed[1]["messages"] == len(TALK)
    assert listed[0]["title"].endswith("…") and len(listed[0]["title"]) == conversations.TITLE_CHARS
    assert client.delete(f"/page/conversations/{older}").json() == {"id": older, "deleted": True}
    assert [c["id"] for c in client.get("/page/conversations").json()["conversations"]] == [newer]
    assert client.get(f"/page/conversations/{older}").status_code == 404
    assert client.put(f"/page/conversations/{older}", json={"messages": TALK}).status_code == 404


def test_multi_line_and_odd_messages_read_back_exactly(tmp_path):
    client = client_for(tmp_path)
    tricky = [{"role": "user", "content": "line one\nyou: not a new message\n\n  indented", "base": False},
              {"role": "assistant", "content": "a\u2028b: c", "base": False},
              {"role": "assistant", "content": "", "base": False}]
    conversation = client.post("/page/conversations", json={"messages": tricky}).json()["id"]
    assert client.get(f"/page/conversations/{conversation}").json()["messages"] == tricky
    # The terminal chat writes the same lines, so its transcripts read back the same way.
    assert conversations.parse(transcript_line("you", tricky[0]["content"])) == tricky[:1]


def test_ids_that_are_not_conversation_ids_never_reach_the_disk(tmp_path):
    client = client_for(tmp_path)
    (tmp_path / "secret.txt").write_text("you: private\n")
    for name in ["..%2Fsecret", "secret", "web-1-2-3", "2025-01-31"]:
        assert client.get(f"/page/conversations/{name}").status_code == 404, name
        assert client.delete(f"/page/conversations/{name}").status_code == 404, name
    assert (tmp_path / "secret.txt").exists()


def test_malformed_conversations_get_a_400_and_nothing_is_written(tmp_path):
    client = client_for(tmp_path)
    for body in [b'{"messages": [{"role": "system", "content": "x"}]}',
                 b'{"messages": [{"role": "user", "content": 5}]}',
                 b'{"messages": [{"role": "user", "content": "\\ud800"}]}',
                 b'{"messages": "hey"}', b"[]", b"not json"]:
        response = client.post("/page/conversations", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 400, body
        assert response.json()["error"]["message"]
    assert not (tmp_path / "chats").exists()


def test_with_an_api_key_conversations_need_it(tmp_path):
    client = client_for(tmp_path, api_key="s3cret")
    assert client.get("/page/conversations").status_code == 401
    assert client.post("/page/conversations", json={"messages": TALK}).status_code == 401
    key = {"Authorization": "Bearer s3cret"}
    conversation = client.post("/page/conversations", json={"messages": TALK}, headers=key).json()["id"]
    assert client.get(f"/page/conversations/{conversation}").status_code == 401
    assert client.delete(f"/page/conversations/{conversation}").status_code == 401
    assert client.get(f"/page/conversations/{conversation}", headers=key).json()["messages"] == TALK


def test_a_base_model_served_without_a_run_keeps_no_conversations(tmp_path):
    from fastapi.testclient import TestClient

    client = TestClient(create_app(FakeTwin(), ServeSettings(), stream=fake_stream), base_url="http://127.0.0.1")
    assert client.get("/page/conversations").status_code == 404
    saved = TestClient(create_app(FakeTwin(), ServeSettings(), stream=fake_stream, chats=tmp_path / "chats"),
                       base_url="http://127.0.0.1")
    assert saved.post("/page/conversations", json={"messages": TALK}).status_code == 200
    assert len(list((tmp_path / "chats").glob("web-*.txt"))) == 1
