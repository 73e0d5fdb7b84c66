"""The streaming path's text side does a constant amount of work per token and shows exactly what the whole-reply
reference shows: the reply decoded whole after every token, split, and masked with every word of the message read.

Tokenizers: the tiny byte-level BPE from conftest (GPT-2 style: bytes joined, then decoded) and a tiny
SentencePiece-style one built here (byte-fallback tokens `<0xE2>`, `▁` for spaces, the leading space stripped), the
two ways real models split a character across tokens."""

import dataclasses
from unittest import mock

import pytest
import torch
from conftest import build_tiny_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

from talkalike.decode import stream
from talkalike.decode.config import GenerationConfig
from talkalike.decode.sampling import Sampler, block_repeats, draw
from talkalike.decode.stream import Detokenizer
from talkalike.decode.turns import Splitter, stop_token_ids
from talkalike.decode.twin import Twin
from talkalike.prepare import privacy
from talkalike.template import BUBBLE_MARK

TRICKY = [
    "שלום מה קורה? חחח יאללה נתראה",
    "family 👩‍👩‍👧‍👦 thumbs 👍🏽 flag 🇮🇱 run 🏃‍♀️ laugh 😂😂",
    "call me on 054-123-4567 or +972 50-123-4567 ok",
    "ok\n<|msg|>\nsure\n<|msg|>\ncoming 🏃‍♀️<end_of_turn>",
    "  double  spaces, café, naïve; 12/03/2025 10:30",
    "\ufffd a literal replacement character \ufffd",
]


class WholeReply:
    """The reference: the whole reply decoded after every token (what stream.py did before Detokenizer)."""

    def __init__(self, tokenizer):
        self.tokenizer, self.ids, self.text = tokenizer, [], ""

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        decoded = self.tokenizer.decode(self.ids, skip_special_tokens=False)
        if decoded.endswith("\ufffd") or not decoded.startswith(self.text):
            return ""
        delta, self.text = decoded[len(self.text):], decoded
        return delta

    def rest(self) -> str:
        decoded = self.tokenizer.decode(self.ids, skip_special_tokens=False)
        return decoded[len(self.text):] if decoded.startswith(self.text) else ""


def pieces(decoder, ids: list[int]) -> list[str]:
    return [decoder.add(i) for i in ids] + [decoder.rest()]


def build_byte_fallback_tokenizer():
    """A SentencePiece-style BPE (Llama 2, Mistral): `▁` for spaces, byte-fallback tokens for characters it lacks,
    the leading space stripped on decode."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = ["hey what's up? haha ok see you at the beach", "call me on 054-123-4567 tonight",
              "I think we should meet at the cafe at eight", "ok <|msg|> sure <end_of_turn>"] * 20
    corpus.append("שלום 😂 👩‍👩‍👧‍👦 café")
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                           decoders.Strip(" ", 1, 0)])
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<eos>", "<end_of_turn>", *byte_tokens],
                                  limit_alphabet=40)  # few characters: Hebrew and emoji fall back to bytes
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>", unk_token="<unk>")


TOKENIZERS = {"byte-level": build_tiny_tokenizer(), "byte-fallback": build_byte_fallback_tokenizer()}


@pytest.mark.parametrize("kind", TOKENIZERS)
def test_each_token_shows_the_same_text_as_decoding_the_whole_reply(kind):
    tokenizer = TOKENIZERS[kind]
    for text in TRICKY:
        ids = tokenizer.encode(text * 3, add_special_tokens=False)  # long enough for the window to move
        assert pieces(Detokenizer(tokenizer), ids) == pieces(WholeReply(tokenizer), ids)
        assert "".join(pieces(Detokenizer(tokenizer), ids)) == tokenizer.decode(ids, skip_special_tokens=False)


def test_bytes_that_undo_a_finished_character_show_what_the_whole_reply_shows():
    # "€" then a stray continuation byte: byte fallback turns the whole group into U+FFFD, so the decoded reply
    # stops extending the shown text; the reference then shows nothing more, and neither may the window.
    tokenizer = TOKENIZERS["byte-fallback"]
    byte = {f"{i:02X}": tokenizer.convert_tokens_to_ids(f"<0x{i:02X}>") for i in range(256)}
    ok = tokenizer.encode("ok see you at the beach", add_special_tokens=False)
    ids = ok * 3 + [byte["E2"], byte["82"], byte["AC"], byte["80"]] + ok * 3
    reference = pieces(WholeReply(tokenizer), ids)
    assert pieces(Detokenizer(tokenizer), ids) == reference
    assert "€" in "".join(reference)


@settings(max_examples=150, deadline=None)
@given(kind=st.sampled_from(sorted(TOKENIZERS)), data=st.data())
def test_any_token_sequence_shows_the_same_text_as_decoding_the_whole_reply(kind, data):
    tokenizer = TOKENIZERS[kind]
    words = st.sampled_from([tokenizer.encode(t, add_special_tokens=False) for t in TRICKY + [" ", "ok"]])
    # Whole words and single tokens of any id, byte tokens and specials included.
    parts = data.draw(st.lists(st.one_of(words, st.lists(st.integers(0, len(tokenizer) - 1), max_size=3)),
                               max_size=12))
    ids = [i for part in parts for i in part]
    assert pieces(Detokenizer(tokenizer), ids) == pieces(WholeReply(tokenizer), ids)


def test_a_tokenizer_that_cleans_up_spaces_decodes_the_whole_reply_as_before():
    tokenizer = build_tiny_tokenizer()
    tokenizer.clean_up_tokenization_spaces = True
    detokenizer = Detokenizer(tokenizer)
    assert detokenizer.whole
    ids = tokenizer.encode(TRICKY[3], add_special_tokens=False)
    assert pieces(detokenizer, ids) == pieces(WholeReply(tokenizer), ids)


def test_a_long_reply_decodes_a_few_tokens_per_token():
    tokenizer = TOKENIZERS["byte-level"]
    ids = tokenizer.encode(" ".join(TRICKY) * 6, add_special_tokens=False)
    assert len(ids) > 500
    decoded_lengths = []
    real = tokenizer.decode

    def counting(token_ids, **kwargs):
        decoded_lengths.append(len(token_ids))
        return real(token_ids, **kwargs)

    with mock.patch.object(tokenizer, "decode", counting):
        detokenizer = Detokenizer(tokenizer)
        for token_id in ids:
            detokenizer.add(token_id)
    assert len(decoded_lengths) < 1.2 * len(ids)  # one decode per token, and now and then the window's start
    assert max(decoded_lengths) <= Detokenizer.WINDOW + 8


# ---------------------------------------------------------------- the splitter


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="<|>msgend_ofturnx \n", max_size=30))
def test_the_splitter_holds_back_exactly_the_longest_end_that_starts_a_mark(pending):
    stops = ["<end_of_turn>", "<eos>", "<start_of_turn>user"]
    splitter = Splitter(stops)
    splitter.pending = pending
    marks = [BUBBLE_MARK, *stops]
    expected = max((n for mark in marks for n in range(1, len(mark)) if pending.endswith(mark[:n])), default=0)
    assert splitter._partial_mark() == expected


# ---------------------------------------------------------------- the privacy mask


WINDOWED_SAFE_END = privacy._safe_end


def whole_message_safe_end(text: str, lo: int = 0) -> tuple[int, int]:
    """The reference: every word of the message read on every piece."""
    return WINDOWED_SAFE_END(text, 0)[0], 0


def chunked(messages: list[str], sizes: list[int]):
    for text in messages:
        at, k = 0, 0
        while at < len(text):
            size = sizes[k % len(sizes)] if sizes else 3
            yield ("text", text[at: at + size])
            at, k = at + size, k + 1
        yield ("end_message",)


WORDS = ["hi", "ok", "a", "I", "054", "123-4567", "054-765", "4321", "+972", "50", "name", "[at]", "at", "dot",
         "(dot)", "example", "com", "dana@example.com", "שלום", "לא", "זה", "😂", "👩‍👩‍👧‍👦", "12/03/2025", "10:30",
         "call", "me", "tonight", "4111", "1111", "IL29", "0123", "  ", "\n"]


@settings(max_examples=200, deadline=None)
@given(messages=st.lists(st.lists(st.sampled_from(WORDS), min_size=1, max_size=25).map(" ".join), min_size=1,
                         max_size=3),
       sizes=st.lists(st.integers(1, 9), max_size=6))
def test_the_masked_stream_is_the_same_when_only_the_tail_of_a_message_is_read(messages, sizes):
    streamed = list(privacy.mask_stream(chunked(messages, sizes)))
    with mock.patch.object(privacy, "_safe_end", whole_message_safe_end):
        reference = list(privacy.mask_stream(chunked(messages, sizes)))
    assert streamed == reference


def test_a_long_message_is_read_a_few_words_at_a_time():
    read = []

    def spy(text, lo=0):
        read.append(len(text) - lo)
        return WINDOWED_SAFE_END(text, lo)

    message = " ".join(["we could meet at the beach tomorrow if the weather holds"] * 60)
    with mock.patch.object(privacy, "_safe_end", spy):
        events = list(privacy.mask_stream(chunked([message], [4])))
    assert "".join(e[1] for e in events if e[0] == "text") == message
    assert len(message) > 3000 and max(read) < 120


# ---------------------------------------------------------------- the sampler


def test_a_draw_takes_the_same_token_as_torch_multinomial_from_the_same_generator():
    for rows, columns in [(1, 512), (3, 512), (2, 7)]:
        for seed in range(10):
            weights = torch.rand(rows, columns, generator=torch.Generator().manual_seed(seed + 99)) ** 4
            weights[:, :: 2 + seed % 3] = 0.0  # blocked tokens
            expected = torch.multinomial(weights, 1, generator=torch.Generator().manual_seed(seed))
            assert torch.equal(draw(weights, torch.Generator().manual_seed(seed)), expected)


def test_the_no_repeat_rule_spares_runs_that_touch_the_separator_as_torch_isin_finds_them():
    separator = torch.tensor([5, 6])
    for seed in range(20):
        reply = torch.randint(0, 9, (40,), generator=torch.Generator().manual_seed(seed))
        logits = torch.zeros(9)
        block_repeats(logits, reply, 3, separator)
        # The rule as written with torch.isin.
        runs = reply.unfold(0, 3, 1)
        repeats = (runs[:, :-1] == reply[-2:]).all(-1)
        repeats &= ~torch.isin(runs, separator).any(-1) & ~torch.isin(reply[-2:], separator).any()
        expected = torch.zeros(9)
        expected[runs[repeats, -1]] = float("-inf")
        assert torch.equal(logits, expected)


# ---------------------------------------------------------------- the whole stream


class ScriptedEngine:
    """An engine whose logits put the script's next token far ahead of the others (sampling still runs)."""

    def __init__(self, script: list[int], vocab: int):
        self.device, self.max_len, self.at = torch.device("cpu"), 4096, 0
        self.rows = torch.full((len(script), vocab), -20.0)
        self.rows[torch.arange(len(script)), torch.tensor(script)] = 20.0

    def prefill(self, ids):
        self.at = 0
        return self.rows[:1]

    def step(self, token):
        self.at = min(self.at + 1, self.rows.shape[0] - 1)
        return self.rows[self.at: self.at + 1]


@pytest.mark.parametrize(("ending", "no_repeat"), [("<end_of_turn>", 0), ("", 0), ("<end_of_turn>", 3)])
def test_stream_reply_streams_the_same_events_as_the_whole_reply_reference(ending, no_repeat):
    tokenizer = TOKENIZERS["byte-level"]
    text = ("haha 😂 👩‍👩‍👧‍👦\n<|msg|>\nשלום מה קורה? call me on 054-765\n<|msg|>\n4321 or noa [at] example [dot] "
            "com\n<|msg|>\nok see you at 10:30 👍🏽 " * 3 + ending)
    script = tokenizer.encode(text, add_special_tokens=False)
    # no_repeat 3 bans some scripted tokens (the emoji's bytes repeat), so the sampler draws others: garbled text,
    # which must come out the same way too.
    config = dataclasses.replace(GenerationConfig(), seed=3, max_messages=0, memories=0, no_repeat_ngram=no_repeat,
                                 max_new_tokens=len(script) + 5)
    twin = Twin(model=None, tokenizer=tokenizer, vocab_size=len(tokenizer), max_positions=None,
                stop_ids=stop_token_ids(tokenizer, "chat"), device=torch.device("cpu"))
    history = [{"role": "user", "content": "hey 😂"}]

    def run():
        twin.engines[True] = ScriptedEngine(script + [0] * 8, len(tokenizer))
        usage = stream.Usage()
        return list(stream.stream_reply(twin, history, config, usage=usage)), usage

    events, usage = run()
    with mock.patch.object(stream, "Detokenizer", WholeReply), \
            mock.patch.object(privacy, "_safe_end", whole_message_safe_end):
        reference, reference_usage = run()
    assert events == reference and usage == reference_usage
    assert usage.finish_reason == ("stop" if ending else "length")
    if no_repeat:
        return
    shown = "".join(e[1] for e in events if e[0] == "text")
    assert "👩‍👩‍👧‍👦" in shown and "שלום" in shown and "[PHONE]" in shown and "4321" not in shown
    assert sum(e == ("end_message",) for e in events) >= 8


def test_the_sampler_runs_without_torch_isin():
    # torch.isin would make a GPU wait for the host on every token (see block_repeats); the sampler must not use it.
    config = GenerationConfig(seed=0)
    sampler = Sampler(config, 400, rows=1, device=torch.device("cpu"), separator_ids=[283, 304, 292])
    seen = torch.randint(0, 400, (1, 60), generator=torch.Generator().manual_seed(0))
    with mock.patch.object(torch, "isin", side_effect=AssertionError("torch.isin called")):
        sampler(torch.randn(1, 400), seen, [0.5], [seen[0, 20:]])
