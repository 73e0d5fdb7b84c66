"""Generation: where a turn stops, how it splits into messages and what history fits (test_evaldecode.py checks the
batched decoder against this single stream). The tiny Gemma model from conftest, with a scripted last layer where the
test needs to choose the tokens."""

import json

import pytest
import torch
from conftest import build_tiny_model, make_run
from hypothesis import given, settings
from hypothesis import strategies as st

from talkalike.decode.config import GenerationConfig, load_generation_config, save_generation_config, with_overrides
from talkalike.decode.stream import reply, stream_reply
from talkalike.decode.turns import Splitter, collect_messages, fit_prompt
from talkalike.decode.twin import Twin
from talkalike.errors import TalkalikeError
from talkalike.template import BUBBLE_SEP

GREEDY = GenerationConfig(temperature=0, repetition_penalty=1.0, max_new_tokens=40)


class Scripted(torch.nn.Module):
    """The tiny model, but the next token is the script's: logits are one-hot on the scripted id at each step."""

    def __init__(self, model, script: list[int]):
        super().__init__()
        self.inner, self.script, self.calls = model, script, 0
        self.config, self.generation_config = model.config, model.generation_config

    def forward(self, **kwargs):
        out = self.inner(**kwargs)
        step = min(self.calls, len(self.script) - 1)
        logits = torch.full_like(out.logits, -1e4)
        logits[..., self.script[step]] = 1e4
        self.calls += 1
        out.logits = logits
        return out


@pytest.fixture(scope="module")
def tiny_model(tiny_tokenizer):
    return build_tiny_model(len(tiny_tokenizer))


def scripted_twin(tiny_model, tokenizer, text: str, then: list[str]) -> Twin:
    """A twin that writes `text`, then the tokens named in `then` (e.g. <end_of_turn>), then keeps writing "ok"."""
    script = tokenizer.encode(text, add_special_tokens=False)
    script += [tokenizer.convert_tokens_to_ids(t) for t in then]
    script += tokenizer.encode(" ok ok ok", add_special_tokens=False)
    twin = Twin.of(Scripted(tiny_model, script), tokenizer)
    twin.prepare(torch.float32)
    return twin


HELLO = [{"role": "user", "content": "hey what's up?"}]


def test_a_reply_of_several_messages_comes_out_as_separate_messages_without_the_separator(tiny_model, tiny_tokenizer):
    twin = scripted_twin(tiny_model, tiny_tokenizer, "ok\n<|msg|>\nsure\n<|msg|>\ncoming 🏃‍♀️", ["<end_of_turn>"])
    events = list(stream_reply(twin, HELLO, GREEDY))
    shown = "".join(e[1] for e in events if e[0] == "text")
    assert "<" not in shown and "msg" not in shown and "|" not in shown
    assert [e for e in events if e[0] == "end_message"] == [("end_message",)] * 3
    assert collect_messages(events) == ["ok", "sure", "coming 🏃‍♀️"]
    assert events[-1] == ("end_message",)


def test_the_turn_stops_at_the_end_of_turn_token_and_decoding_stops_with_it(tiny_model, tiny_tokenizer):
    twin = scripted_twin(tiny_model, tiny_tokenizer, "see you at the beach", ["<end_of_turn>"])
    assert reply(twin, HELLO, GREEDY) == ["see you at the beach"]
    written = len(tiny_tokenizer.encode("see you at the beach", add_special_tokens=False))
    assert twin.model.calls == written + 1  # the prefill and one step per token; nothing after <end_of_turn>


def test_the_end_of_sequence_token_also_ends_the_turn(tiny_model, tiny_tokenizer):
    twin = scripted_twin(tiny_model, tiny_tokenizer, "haha ok", ["<eos>"])
    assert reply(twin, HELLO, GREEDY) == ["haha ok"]


def test_a_model_that_starts_writing_the_other_persons_turn_has_ended_its_own(tiny_model, tiny_tokenizer):
    twin = scripted_twin(tiny_model, tiny_tokenizer, "sure<start_of_turn>user\nwhat about you", [])
    assert reply(twin, HELLO, GREEDY) == ["sure"]


def test_a_reply_cut_by_max_new_tokens_never_shows_a_half_written_separator(tiny_model, tiny_tokenizer):
    text = "ok\n<|msg|>\nsure\n<|m"
    twin = scripted_twin(tiny_model, tiny_tokenizer, text + "sg|>\nlater", [])
    budget = len(tiny_tokenizer.encode(text, add_special_tokens=False))
    config = with_overrides(GREEDY, max_new_tokens=budget)
    messages = reply(twin, HELLO, config)
    assert messages == ["ok", "sure"]


def test_a_stop_string_written_as_text_ends_the_turn():
    splitter = Splitter(["<end_of_turn>", "<eos>"])
    events = []
    for piece in ["hi the", "re<end_", "of_turn>and more", " text"]:
        events += splitter.feed(piece)
    events += splitter.finish()
    assert collect_messages(events) == ["hi there"]
    assert "".join(e[1] for e in events if e[0] == "text") == "hi there"


messages_strategy = st.lists(
    st.text(alphabet="ab שלום😂 .\n", min_size=1, max_size=12).filter(lambda t: t.strip() and "<" not in t),
    min_size=1,
    max_size=4,
)


@settings(max_examples=200, deadline=None)
@given(messages=messages_strategy, cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=8))
def test_splitting_does_not_depend_on_how_the_text_arrives_in_chunks(messages, cuts):
    text = BUBBLE_SEP.join(messages) + "<end_of_turn>never shown"
    bounds = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    splitter = Splitter(["<end_of_turn>"])
    events = []
    for start, end in zip(bounds, bounds[1:], strict=False):
        events += splitter.feed(text[start:end])
    events += splitter.finish()
    assert collect_messages(events) == [m.strip() for m in messages]
    for event in events:
        if event[0] == "text":
            assert "<" not in event[1] and "|" not in event[1]


def long_history(turns: int) -> list[dict]:
    history = []
    for i in range(turns):
        history.append({"role": "user", "content": f"question {i} lol pita the cat"})
        history.append({"role": "assistant", "content": f"answer {i} haha ok"})
    history.append({"role": "user", "content": "last one?"})
    return history


def test_history_beyond_the_context_window_drops_the_oldest_turns_first(tiny_model, tiny_tokenizer):
    twin = Twin.of(tiny_model, tiny_tokenizer)
    history = long_history(30)
    config = GenerationConfig(max_context_tokens=200, max_new_tokens=50)
    ids = fit_prompt(twin, history, config)
    assert len(ids) <= 150
    text = tiny_tokenizer.decode(ids)
    assert "last one?" in text and "answer 29" in text
    assert "question 0 " not in text
    kept = [i for i in range(30) if f"question {i} " in text]
    assert kept == list(range(kept[0], 30))  # a suffix of the conversation: only the oldest went
    assert text.index("<start_of_turn>user") < text.index("<start_of_turn>model")  # still opens with the user


def test_a_last_message_longer_than_the_window_is_a_clear_error(tiny_model, tiny_tokenizer):
    twin = Twin.of(tiny_model, tiny_tokenizer)
    with pytest.raises(TalkalikeError, match="shorter message"):
        fit_prompt(twin, [{"role": "user", "content": "haha " * 300}], GenerationConfig(max_context_tokens=256))


def test_consecutive_messages_of_one_side_become_one_turn(tiny_model, tiny_tokenizer):
    twin = Twin.of(tiny_model, tiny_tokenizer)
    history = [{"role": "user", "content": "hey"}, {"role": "user", "content": "you there?"}]
    text = tiny_tokenizer.decode(fit_prompt(twin, history, GenerationConfig()))
    assert text.count("<start_of_turn>user") == 1
    assert f"hey{BUBBLE_SEP}you there?" in text


def test_a_fixed_seed_gives_the_same_sampled_reply(tiny_model, tiny_tokenizer):
    twin = Twin.of(tiny_model, tiny_tokenizer)
    twin.prepare(torch.float32)
    config = GenerationConfig(temperature=1.0, top_p=0.9, max_new_tokens=15, seed=7)
    assert reply(twin, HELLO, config) == reply(twin, HELLO, config)


def test_switching_the_adapter_off_gives_the_base_models_reply(tiny_tokenizer):
    from peft import LoraConfig, get_peft_model

    base = build_tiny_model(len(tiny_tokenizer), seed=3)
    base_twin = Twin.of(base, tiny_tokenizer)
    base_twin.prepare(torch.float32)
    config = GenerationConfig(temperature=0, max_new_tokens=12)
    base_reply = reply(base_twin, HELLO, config)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj", "up_proj"], init_lora_weights=False)
    tuned = Twin.of(get_peft_model(build_tiny_model(len(tiny_tokenizer), seed=3), lora), tiny_tokenizer,
                    has_adapter=True)
    tuned.prepare(torch.float32)
    assert reply(tuned, HELLO, config, use_adapter=False) == base_reply
    with torch.inference_mode():
        prompt = torch.tensor([fit_prompt(tuned, HELLO, config)])
        assert not torch.allclose(tuned.model(input_ids=prompt).logits, base(input_ids=prompt).logits)


def test_a_runs_generation_json_overrides_the_defaults_and_flags_override_both(tmp_path):
    assert load_generation_config(tmp_path) == GenerationConfig()
    save_generation_config(tmp_path, GenerationConfig(temperature=0.8, top_p=0.95), extra={"table": [1, 2]})
    assert json.loads((tmp_path / "generation.json").read_text())["table"] == [1, 2]
    tuned = load_generation_config(tmp_path)
    assert (tuned.temperature, tuned.top_p, tuned.repetition_penalty) == (0.8, 0.95, 1.025)
    flagged = with_overrides(tuned, temperature=0.3, top_p=None)
    assert (flagged.temperature, flagged.top_p) == (0.3, 0.95)
    assert tuned.opener_temperature == 1.0
    (tmp_path / "generation.json").write_text('{"opener_temperature": null}')
    assert load_generation_config(tmp_path).opener_temperature is None  # the message opener's rule off


@pytest.mark.slow
def test_the_embedded_model_streams_a_reply_as_messages_and_stops(tmp_path, monkeypatch, capsys):
    """End to end on the real embedded Gemma 3 270M: a run folder (an untrained adapter), the terminal chat
    streaming a reply, and the reply ending by itself or at max_new_tokens without any markup shown."""
    import io
    import sys

    from peft import LoraConfig, get_peft_model

    from talkalike.cli import main
    from talkalike.model import load_base, load_tokenizer

    home = tmp_path / "home"
    base = load_base(None, home)
    run = home / "runs" / "emb"
    get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(run / "adapter")
    load_tokenizer(None, home).save_pretrained(run / "tokenizer")
    (run / "run.json").write_text(json.dumps({"base": base.talkalike_base, "layout": "chat", "persona": "Noa"}))
    del base

    twin = Twin.from_run(run, home)
    assert twin.model.dtype in (torch.bfloat16, torch.float32) and twin.has_adapter
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hey"},
               {"role": "user", "content": "how are you?"}]
    config = GenerationConfig(temperature=0, max_new_tokens=30)
    events = list(stream_reply(twin, history, config))
    shown = "".join(e[1] for e in events if e[0] == "text")
    assert shown.strip() and events[-1] == ("end_message",)
    assert not any(mark in shown for mark in ("<end_of_turn>", "<start_of_turn>", "<|msg|>", "<eos>"))
    assert len([e for e in events if e[0] == "text"]) > 1  # streamed, not delivered at the end
    assert len(twin.tokenizer.encode(shown, add_special_tokens=False)) <= 30 + 2
    assert reply(twin, history, config, use_adapter=False) == collect_messages(events)  # untrained adapter: same

    monkeypatch.setattr(sys, "stdin", io.StringIO("how are you?\n/quit\n"))
    assert main(["--home", str(home), "chat", "emb", "--temperature", "0", "--max-new-tokens", "20"]) == 0
    assert capsys.readouterr().out.startswith("Noa: ")
    assert "you: how are you?" in next((run / "chats").glob("*.txt")).read_text(encoding="utf-8")


@pytest.mark.parametrize("native", [True, False])
def test_serve_loads_a_run_in_the_batch_dtype_and_chat_compare_in_fp32(tmp_path, tiny_tokenizer, tiny_model_dir,
                                                                       monkeypatch, native):
    import talkalike.train.recipe
    from talkalike.decode.twin import load_twin

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setattr(talkalike.train.recipe, "cpu_computes_bf16", lambda: native)
    make_run(tmp_path / "runs" / "noa", tiny_model_dir, tiny_tokenizer, name="noa")
    served = load_twin("noa", None, tmp_path, batched=True)  # serve: concurrent requests decode together
    compared = load_twin("noa", None, tmp_path)  # chat --compare: one conversation
    assert next(served.model.parameters()).dtype == (torch.bfloat16 if native else torch.float32)
    assert next(compared.model.parameters()).dtype == torch.float32


def test_the_prefills_last_position_reaches_the_head_with_plain_strides(tiny_tokenizer):
    from talkalike.model import causal_lm

    twin = Twin.of(build_tiny_model(len(tiny_tokenizer)), tiny_tokenizer, name="noa", persona="Noa")
    twin.prepare()
    seen = []
    head = causal_lm(twin.model).lm_head
    head.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    ids = torch.tensor([[5, 9, 14, 20, 33, 41]])
    with torch.inference_mode():
        kept = twin.model(input_ids=ids, logits_to_keep=1).logits
        whole = twin.model(input_ids=ids).logits
    # transformers hands the head a view of the last position whose outer stride is the prompt's (6 x hidden): a bf16
    # product on a CPU copies the whole head for it; the head now gets a tensor laid out as a fresh one
    assert seen[0].shape == (1, 1, seen[0].shape[-1]) and seen[0].stride() == (seen[0].shape[-1],) * 2 + (1,)
    torch.testing.assert_close(kept[0, -1], whole[0, -1])
