"""The terminal chat: streamed messages on separate lines, /reset, /save, /quit, --compare, and the session log.
A FakeTwin stands in for the model; stdin is a pipe, as in scripts."""

import io
import re
import sys

import pytest
from fake_twin import BASE, TUNED, FakeTwin, fake_stream

import talkalike.frontends.chat as chat
from talkalike.cli import main
from talkalike.decode.config import GenerationConfig
from talkalike.frontends.chat import Transcript, run_chat


def lines_of(*texts):
    feed = iter(texts)
    return lambda: next(feed, None)


def chat_once(tmp_path, *texts, compare=False, twin=None):
    twin = twin or FakeTwin(run_dir=tmp_path)
    out = io.StringIO()
    transcript = Transcript(tmp_path / "chats", "noa")
    run_chat(twin, GenerationConfig(), lines_of(*texts), out, transcript, compare=compare, stream=fake_stream)
    return twin, out.getvalue(), transcript.path.read_text(encoding="utf-8")


def test_each_of_the_personas_messages_gets_its_own_line(tmp_path):
    _, shown, _ = chat_once(tmp_path, "hey", "/quit")
    assert shown.splitlines() == [f"Noa: {m}" for m in TUNED]


def test_the_transcript_has_a_timestamped_session_header_and_both_sides(tmp_path):
    _, _, log = chat_once(tmp_path, "hey", "/quit")
    lines = log.splitlines()
    assert re.fullmatch(r"=== \d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4} · noa ===", lines[0])
    assert lines[1:] == ["you: hey"] + [f"Noa: {m}" for m in TUNED]


def test_a_second_session_is_appended_under_its_own_header(tmp_path):
    chat_once(tmp_path, "hey")
    _, _, log = chat_once(tmp_path, "again")
    assert log.count("=== ") == 2
    assert log.index("you: hey") < log.index("you: again")


def test_history_carries_both_sides_and_reset_forgets_it(tmp_path):
    twin, _, log = chat_once(tmp_path, "hey", "what's up?", "/reset", "hello again")
    first, second, third = (call[0] for call in twin.calls)
    assert first == [{"role": "user", "content": "hey"}]
    assert second[:-1] == first + [{"role": "assistant", "content": m} for m in TUNED]
    assert third == [{"role": "user", "content": "hello again"}]
    assert "--- /reset ---" in log


def test_save_writes_the_transcript_before_the_session_ends(tmp_path):
    twin = FakeTwin(run_dir=tmp_path)
    transcript = Transcript(tmp_path / "chats", "noa")
    seen_on_disk = []

    def feed():
        yield from ["hey", "/save"]
        seen_on_disk.append(transcript.path.read_text(encoding="utf-8"))
        yield "/quit"

    feeder = feed()
    run_chat(twin, GenerationConfig(), lambda: next(feeder, None), io.StringIO(), transcript, stream=fake_stream)
    assert "you: hey" in seen_on_disk[0] and "Noa: sure" in seen_on_disk[0]


def test_compare_shows_the_base_reply_to_the_same_history_and_continues_with_the_tuned_one(tmp_path):
    twin, shown, log = chat_once(tmp_path, "hey", "and?", compare=True)
    assert shown.splitlines()[:4] == [f"Noa: {m}" for m in TUNED] + [f"Noa (base): {BASE[0]}"]
    tuned_call, base_call, next_tuned, _ = twin.calls
    assert tuned_call[2] is True and base_call[2] is False
    assert tuned_call[0] == base_call[0]
    assert BASE[0] not in str(next_tuned[0])
    assert f"Noa (base): {BASE[0]}" in log


def test_the_cli_reads_piped_lines_and_logs_in_the_run_folder(tmp_path, monkeypatch, capsys):
    twin = FakeTwin(run_dir=tmp_path / "noa")
    monkeypatch.setattr(chat, "load_twin", lambda run, base, home, **_: twin)
    monkeypatch.setattr(chat, "stream_reply", fake_stream)
    monkeypatch.setattr(sys, "stdin", io.StringIO("hey\n/quit\n"))
    assert main(["--home", str(tmp_path), "chat", "noa", "--temperature", "0.9"]) == 0
    out = capsys.readouterr()
    assert out.out.splitlines() == [f"Noa: {m}" for m in TUNED]
    assert "talking to Noa" in out.err
    config = twin.calls[0][1]
    assert (config.temperature, config.repetition_penalty) == (0.9, 1.1)  # the flag, else the run's default
    (log,) = (tmp_path / "noa" / "chats").glob("*.txt")
    assert "temperature 0.9" in log.read_text(encoding="utf-8")


def test_as_and_memories_reach_every_reply_and_an_unknown_contact_is_noted(tmp_path, monkeypatch, capsys):
    twin = FakeTwin(run_dir=tmp_path / "noa")
    monkeypatch.setattr(chat, "load_twin", lambda run, base, home, **_: twin)
    monkeypatch.setattr(chat, "stream_reply", fake_stream)
    monkeypatch.setattr(sys, "stdin", io.StringIO("hey\n/quit\n"))
    assert main(["--home", str(tmp_path), "chat", "noa", "--as", "Mom", "--memories", "0"]) == 0
    config = twin.calls[0][1]
    assert (config.contact, config.memories) == ("Mom", 0)
    assert "never wrote to" not in capsys.readouterr().err
    monkeypatch.setattr(sys, "stdin", io.StringIO("hey\n/quit\n"))
    assert main(["--home", str(tmp_path), "chat", "noa", "--as", "Grandpa"]) == 0
    assert "never wrote to Grandpa" in capsys.readouterr().err
    assert main(["--home", str(tmp_path), "chat", "noa", "--memories", "-1"]) == 2
    assert capsys.readouterr().err.startswith("error: --memories")


def test_compare_without_a_run_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(chat, "load_twin", lambda run, base, home, **_: FakeTwin(has_adapter=False))
    assert main(["--home", str(tmp_path), "chat", "--base", "some-model", "--compare"]) == 2
    assert capsys.readouterr().err.startswith("error: --compare needs a run")


def test_chat_without_a_run_or_base_says_what_to_give(tmp_path, capsys):
    assert main(["--home", str(tmp_path), "chat"]) == 2
    assert "name a run" in capsys.readouterr().err


def test_chat_with_an_unknown_run_lists_the_known_ones(tmp_path, capsys):
    assert main(["--home", str(tmp_path), "chat", "nobody"]) == 2
    assert "no run folder" in capsys.readouterr().err


def test_chat_with_a_tiny_base_model_streams_and_stops(tmp_path, tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("hey\n/quit\n"))
    assert main(["--home", str(tmp_path), "chat", "--base", str(tiny_model_dir), "--max-new-tokens", "8"]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"{tiny_model_dir.name}: ")
    (log,) = (tmp_path / "chats").glob("*.txt")
    assert "you: hey" in log.read_text(encoding="utf-8")


def test_a_message_the_model_cannot_take_is_an_error_line_and_the_chat_goes_on(tmp_path, capsys):
    twin, shown, log = chat_once(tmp_path, "too long", "hey")
    assert "shorter message" in capsys.readouterr().err
    assert shown.splitlines() == [f"Noa: {m}" for m in TUNED]
    assert twin.calls[1][0] == [{"role": "user", "content": "hey"}]  # the refused message left no trace
    assert "too long" not in log


def test_the_transcript_is_saved_even_when_the_session_is_interrupted(tmp_path):
    def lines():
        yield "hey"
        raise KeyboardInterrupt

    feed = lines()
    transcript = Transcript(tmp_path / "chats", "noa")
    with pytest.raises(KeyboardInterrupt):
        run_chat(FakeTwin(), GenerationConfig(), lambda: next(feed), io.StringIO(), transcript, stream=fake_stream)
    assert "Noa: sure" in transcript.path.read_text(encoding="utf-8")


def test_the_transcript_is_private_to_its_owner_even_in_a_folder_that_was_open(tmp_path):
    import os
    import stat

    folder = tmp_path / "chats"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    chat_once(tmp_path, "hey", "/save", "and you?", "/quit")
    (log,) = folder.glob("*.txt")
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert sorted(p.name for p in folder.iterdir()) == [log.name]  # no temp file left behind
