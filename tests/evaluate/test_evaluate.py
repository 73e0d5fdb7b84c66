"""`talkalike eval` on a tiny run folder (tiny Gemma 3 + a LoRA adapter), and the canary leak check on a tiny model
trained here to memorise a secret."""

import json
import math
from pathlib import Path

import pytest
from conftest import make_run

from talkalike.evaluate import evaluate
from talkalike.files import read_jsonl, write_jsonl
from talkalike.memory import Memory
from talkalike.template import join_bubbles, render_sample

PERSONA_REPLIES = [["haha ok", "see u 😂"], ["חחח יאללה"], ["lol no way"], ["sure", "8?"], ["omg 🙈"], ["ok ok"]]
OTHER_TURNS = ["Hello there, how are you today?", "I think we should meet at the café on Dizengoff at eight.",
               "That is a good point, let me think about it.", "Are you coming to the beach tomorrow?"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rows(n: int, offset: int = 0) -> list[dict]:
    rows = []
    for k in range(n):
        messages = []
        for t in range(3):
            messages.append({"role": "user", "content": OTHER_TURNS[(k + t + offset) % len(OTHER_TURNS)]})
            reply = PERSONA_REPLIES[(k * 3 + t + offset) % len(PERSONA_REPLIES)]
            messages.append({"role": "assistant", "content": join_bubbles(reply)})
        rows.append({"messages": messages, "chat": "Noa", "start": f"2025-01-{k + 1:02d}T10:00:00", "id": f"c{k}"})
    return rows


@pytest.fixture
def tiny_run(tmp_path, tiny_model_dir, tiny_tokenizer) -> Path:
    """A run folder as `talkalike train` writes it: run.json, tokenizer/, adapter/ (random LoRA), eval.jsonl."""
    dataset = tmp_path / "ds"
    dataset.mkdir()
    train_rows = _rows(8)
    train_rows[2]["messages"][3]["content"] = "call me on +972 50-123-4567 ok"
    write_jsonl(dataset / "train.jsonl", train_rows)
    (dataset / "dataset.json").write_text(json.dumps({"persona": "Noa", "privacy": False}))
    run = make_run(tmp_path / "runs" / "tiny", tiny_model_dir, tiny_tokenizer, ["q_proj", "v_proj"],
                   dataset=str(dataset))
    write_jsonl(run / "eval.jsonl", _rows(4, offset=1))
    write_jsonl(run / "metrics.jsonl", [{"step": s, "loss": 3.0 - s * 0.1} for s in range(1, 11)]
                 + [{"step": 10, "eval_loss": 2.5}])
    return run


def test_held_out_turns_are_the_persona_turns_with_their_history():
    rows = _rows(2)
    turns = evaluate.held_out_turns(rows)
    assert len(turns) == 6
    assert all(t.context[-1]["role"] == "user" and len(t.context) == t.index for t in turns)
    assert turns[0].real == PERSONA_REPLIES[0]
    # whole conversations spread over the set (not just the first ones); a row's selected turns are its first ones
    limited = evaluate.held_out_turns(_rows(4), limit=6)
    assert len(limited) == 6 and {t.row for t in limited} == {0, 2}
    assert [t.index for t in limited] == [1, 3, 5, 1, 3, 5]
    cut = evaluate.held_out_turns(_rows(4), limit=5)
    assert len(cut) == 5 and [t.index for t in cut if t.row == cut[-1].row] == [1, 3]


def test_group_chat_speaker_prefixes_are_stripped_for_the_classifier():
    assert evaluate.strip_speakers(["Dana: hi", "Avi: what's up"]) == ["hi", "what's up"]
    assert evaluate.strip_speakers(["Note: this stays", "no prefix here"]) == ["Note: this stays", "no prefix here"]
    persona, others = evaluate.speaker_turns([{"messages": [
        {"role": "user", "content": join_bubbles(["Dana: hi", "Avi: yo"])},
        {"role": "assistant", "content": join_bubbles(["haha", "hey"])}]}])
    assert persona == ["haha\nhey"] and others == ["hi\nyo"]


def test_perplexity_counts_only_the_selected_persona_tokens_and_matches_full_logits(tiny_run, home):
    import torch

    from talkalike.decode.twin import Twin

    twin = Twin.from_run(tiny_run, home)
    rows = read_jsonl(tiny_run / "eval.jsonl")
    turns = evaluate.held_out_turns(rows)
    result = evaluate.perplexity(twin, rows, turns, use_adapter=True)
    # the same number the slow way: full logits, every assistant token of every row
    total, count = 0.0, 0
    with torch.inference_mode():
        for row in rows:
            rendered = render_sample(row["messages"], twin.tokenizer, twin.layout)
            ids = torch.tensor([rendered.input_ids])
            logp = twin.model(input_ids=ids).logits.float().log_softmax(-1)[0]
            for t in range(1, len(rendered.input_ids)):
                if rendered.mask[t]:
                    total -= float(logp[t - 1, rendered.input_ids[t]])
                    count += 1
    assert result["tokens"] == count
    assert result["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-4)
    base = evaluate.perplexity(twin, rows, turns, use_adapter=False)
    assert base["tokens"] == count and base["perplexity"] != pytest.approx(result["perplexity"], rel=1e-6)
    one = evaluate.perplexity(twin, rows, turns[:1], use_adapter=True)
    first_turn = render_sample(rows[0]["messages"][:2], twin.tokenizer, twin.layout)
    assert one["tokens"] == sum(first_turn.mask[1:])


def test_secrets_are_matched_by_digits_in_any_spelling_and_emails_case_blind():
    assert evaluate.contains_secret("ring 972501234567 now", "+972 50-123-4567")
    assert evaluate.contains_secret("my number is +972 (50) 123 4567", "+972 50-123-4567")
    assert evaluate.contains_secret("call 050-123-4567", "+972 50-123-4567")  # national and international spelling
    assert not evaluate.contains_secret("call [PHONE_1]", "+972 50-123-4567")
    assert not evaluate.contains_secret("call 050-123-4568", "+972 50-123-4567")
    assert evaluate.contains_secret("Mail NOA.LEVI@example.com", "noa.levi@example.com")
    assert evaluate.detect_secrets(["call me on 050-234-5678 or noa@example.com", "see u at 8"]) == \
        ["noa@example.com", "050-234-5678"]


def test_eval_writes_every_figure_the_report_and_the_blind_test_pairs(tiny_run, home, capsys):
    from talkalike import cli
    from talkalike.evaluate.facts import Fact, write_facts

    dataset = Path(json.loads((tiny_run / "run.json").read_text())["dataset"])
    write_facts(dataset / "facts.jsonl", [Fact("what's your cat called again?", ("Pita",), "pet"),
                                          Fact("where do you live?", ("Florentin",), "home")])
    Memory.build(read_jsonl(dataset / "train.jsonl"), tiny_run / "memory.db")  # as `train` copies it in
    assert cli.main(["--home", str(home), "eval", str(tiny_run), "--limit", "8"]) == 0
    out = capsys.readouterr().out
    assert "perplexity" in out and "style distance" in out and "furthest from the persona" in out
    assert "facts from the persona's history recalled (2 questions, any of 4 replies)" in out
    assert "classified as the persona" not in out
    result = json.loads((tiny_run / "eval.json").read_text(encoding="utf-8"))
    assert result["held-out turns"] == 8
    assert set(result["perplexity"]) == {"tuned", "base"}
    assert all(result["perplexity"][m]["perplexity"] > 1 for m in ("tuned", "base"))
    assert set(result["style"]["sets"]) == {"real", "tuned", "base"}
    assert result["style"]["sets"]["real"]["style distance"] == 0
    assert 0 <= result["persona classification"]["rate"]["tuned"] <= 1
    assert set(result["real vs generated auc"]) == {"tuned", "base"}
    assert set(result["memorisation"]) == {"real", "tuned", "base"}
    assert all(0 <= result["fooled rate at equal error"][m] <= 1 for m in ("tuned", "base"))
    ranking = result["next-reply ranking"]
    # 8 turns in 4 conversations: each is ranked against the other conversations' distinct persona turns
    assert set(ranking) == {"tuned", "base"} and all(ranking[m]["n"] == 8 for m in ranking)
    assert all(0 <= ranking[m]["r@1"] <= 1 and ranking[m]["chance"] >= 0.1 for m in ranking)
    identification = result["context identification"]
    assert set(identification) == {"real", "tuned", "base", "tuned share of real", "base share of real"}
    assert identification["real"]["n"] == 8 and result["timings"]["fidelity"] > 0
    # the raw phone number in a training reply is found and its context prompted
    assert "+972 50-123-4567" in result["canaries"]["secrets"]
    assert [r["planted as"] for r in result["canaries"]["results"]] == ["raw"]
    assert len(result["samples"]) == 8
    assert {"perplexity", "style distance", "furthest style features", "facts recalled"} <= set(result["headline"])
    assert "classified as persona" not in result["headline"] and result["persona classification"]["note"]
    # the facts in the dataset folder were asked of both models, each question greedy and 3 times sampled
    assert result["facts"]["file"] == str(dataset / "facts.jsonl")
    assert [len(r["replies"]) for r in result["facts"]["tuned"]["results"]] == [4, 4]
    assert result["facts"]["base"]["facts"] == 2 and 0 <= result["facts"]["tuned"]["recalled"] <= 1
    # and of the base once more with nothing recalled: the pretrained model as it comes
    alone = result["facts"]["base without memory"]
    assert alone["facts"] == 2 and result["headline"]["facts recalled"]["base without memory"] == alone["recalled"]
    assert "the base with no memories recalled" in out
    assert (tiny_run / "report.html").is_file()
    pairs = read_jsonl(tiny_run / "ab" / "pairs.jsonl")
    assert pairs and all(p["context"][-1]["role"] == "user" and p["real"] and p["twin"] for p in pairs)
    assert isinstance(evaluate.mechanics_ok(result), list)


def test_mechanics_check_lists_each_way_the_twin_fails_to_beat_its_base():
    good = {"headline": {"perplexity": {"tuned": 4.0, "base": 9.0}, "style distance": {"tuned": 0.2, "base": 0.4}}}
    assert evaluate.mechanics_ok(good) == []
    bad = {"headline": {"perplexity": {"tuned": 9.0, "base": 5.0}, "style distance": {"tuned": 0.41, "base": 0.4}}}
    failures = evaluate.mechanics_ok(bad)
    assert len(failures) == 2 and "perplexity" in failures[0] and "style" in failures[1]
    # better than base by less than the perplexity margin is still a failure: noise could do that
    marginal = {"headline": {"perplexity": {"tuned": 8.0, "base": 9.0}, "style distance": {"tuned": 0.38, "base": 0.4}}}
    assert len(evaluate.mechanics_ok(marginal)) == 1


def test_a_bad_facts_file_stops_eval_with_its_line_before_any_model_loads(tiny_run, home, capsys, monkeypatch):
    from talkalike import cli
    from talkalike.decode import twin

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the facts file was checked")

    monkeypatch.setattr(twin.Twin, "from_run", no_model)
    bad = tiny_run.parent / "facts.jsonl"
    bad.write_text('{"question": "cat?", "answers": ["Pita"]}\n{"question": "dog?"}\n', encoding="utf-8")
    assert cli.main(["--home", str(home), "eval", str(tiny_run), "--facts", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2" in err and "Traceback" not in err


def test_eval_of_a_run_without_held_out_data_is_one_clear_error(tiny_run, home, capsys):
    from talkalike import cli

    (tiny_run / "eval.jsonl").unlink()
    assert cli.main(["--home", str(home), "eval", str(tiny_run)]) == 2
    assert "eval.jsonl" in capsys.readouterr().err


# --- the canary test: a tiny model trained to memorise a secret ---------------------------------------------------

SECRET = "+972 50-123-4567"
CONTEXT = [{"role": "user", "content": "what's up? what is your number"}]


def _memorise(model_dir: Path, tokenizer, reply: str, steps: int = 60):
    """The tiny model overfit on one conversation whose persona reply is `reply` (masked loss, plain AdamW)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    rendered = render_sample(CONTEXT + [{"role": "assistant", "content": reply}], tokenizer)
    ids = torch.tensor([rendered.input_ids])
    labels = torch.tensor([[t if m else -100 for t, m in zip(rendered.input_ids, rendered.mask, strict=True)]])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return model, loss.item()


def _canary_twin(model, tokenizer):
    from talkalike.decode.twin import Twin

    twin = Twin.of(model, tokenizer, layout="chat")
    twin.prepare()
    return twin


def test_the_leak_check_catches_a_memorised_secret(tiny_model_dir, tiny_tokenizer):
    model, loss = _memorise(tiny_model_dir, tiny_tokenizer, f"my number {SECRET} ok")
    assert loss < 0.1, "the tiny model did not memorise its one sample"
    twin = _canary_twin(model, tiny_tokenizer)
    canaries = evaluate.find_canaries([{"messages": CONTEXT + [{"role": "assistant", "content": f"my number {SECRET} ok"}]}],
                                      [SECRET])
    assert [c.planted_as for c in canaries] == ["raw"]
    results = evaluate.leak_check(twin, canaries, samples=3, max_new_tokens=24)
    assert results[0]["leaked"] and results[0]["leaks"] >= 1, results[0]["outputs"]


def test_with_the_pseudonymised_placeholder_no_secret_comes_out(tiny_model_dir, tiny_tokenizer):
    reply = "my number [PHONE_1] ok"
    model, loss = _memorise(tiny_model_dir, tiny_tokenizer, reply)
    assert loss < 0.1
    twin = _canary_twin(model, tiny_tokenizer)
    canaries = evaluate.find_canaries([{"messages": CONTEXT + [{"role": "assistant", "content": reply}]}], [SECRET])
    assert [c.planted_as for c in canaries] == ["placeholder"]
    results = evaluate.leak_check(twin, canaries, samples=3, max_new_tokens=24)
    assert not results[0]["leaked"], results[0]["outputs"]
    # the model did memorise its reply: the greedy output is the placeholder sentence, not the secret
    assert "[PHONE_1]" in results[0]["outputs"][0]
