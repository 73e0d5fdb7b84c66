"""Decoding stays in character: no run of tokens twice in a reply, no more messages than the persona sends, no words
the persona never wrote."""

import dataclasses

import pytest
import torch
from conftest import build_tiny_model

from talkalike.decode.batch import decode_many
from talkalike.decode.config import GenerationConfig
from talkalike.decode.sampling import Sampler, block_repeats
from talkalike.decode.stream import reply
from talkalike.decode.turns import Splitter, collect_messages, fit_prompt, split_reply, vocabulary
from talkalike.decode.twin import LINE_BREAK_SHARE, Twin
from talkalike.memory import Memory
from talkalike.template import join_bubbles


def test_a_token_that_would_repeat_a_run_of_three_is_blocked_and_only_that_one():
    logits = torch.zeros(10)
    block_repeats(logits, torch.tensor([5, 6, 7, 1, 5, 6]), 3, torch.tensor([], dtype=torch.long))
    assert logits[7] == float("-inf")
    assert torch.isfinite(logits[[0, 1, 2, 3, 4, 5, 6, 8, 9]]).all()


def test_a_token_banned_by_one_run_stays_banned_whatever_other_runs_say():
    logits = torch.zeros(10)
    block_repeats(logits, torch.tensor([5, 6, 7, 5, 6, 8, 5, 6]), 3, torch.tensor([], dtype=torch.long))
    assert logits[7] == float("-inf") and logits[8] == float("-inf")


def test_runs_through_the_message_separator_are_never_blocked():
    separator = torch.tensor([9])
    logits = torch.zeros(10)
    block_repeats(logits, torch.tensor([1, 9, 2, 3, 1, 9]), 3, separator)  # "x <sep> y ... x <sep>": y may start again
    assert torch.isfinite(logits).all()
    block_repeats(logits, torch.tensor([2, 3, 4, 9, 2, 3]), 3, separator)
    assert logits[4] == float("-inf")


# A vocabulary where one word has several spellings, and two byte-fallback tokens that decode to U+FFFD alone.
SPELLINGS = ["<pad>", "ok", " ok", "OK", " no", "\n", "<|msg|>", "\ufffd", "\ufffd", " yes"]


def test_a_run_that_comes_back_in_another_spelling_is_blocked_in_every_spelling():
    """"ok ok ok" then " ok" redoes the run "ok ok ok" as words; as token ids ("ok", " ok", " ok") it is new."""
    from talkalike.decode.sampling import WordClasses

    words = WordClasses(SPELLINGS, 10, "cpu")
    reply = torch.tensor([1, 2, 2])
    plain = torch.zeros(10)
    block_repeats(plain, reply, 3, torch.tensor([], dtype=torch.long))
    assert torch.isfinite(plain).all()  # token ids alone miss the loop
    logits = torch.zeros(10)
    block_repeats(logits, reply, 3, torch.tensor([], dtype=torch.long), words)
    assert (logits[[1, 2, 3]] == float("-inf")).all()  # "ok", " ok" and "OK"
    assert torch.isfinite(logits[[0, 4, 5, 6, 7, 8, 9]]).all()


def test_word_classes_keep_bytes_space_and_ids_past_the_tokenizer_apart():
    from talkalike.decode.sampling import WordClasses

    words = WordClasses(SPELLINGS, 12, "cpu")  # a head two rows wider than the tokenizer
    assert words.of[1] == words.of[2] == words.of[3]
    classes = [int(words.of[i]) for i in (0, 4, 5, 6, 7, 8, 9, 10, 11)]
    assert len(set(classes)) == len(classes) and int(words.of[1]) not in classes
    logits = torch.zeros(12)
    block_repeats(logits, torch.tensor([7, 9, 7, 9]), 3, torch.tensor([], dtype=torch.long), words)
    assert logits[7] == float("-inf") and logits[8] == 0  # one byte token's repeat bans no other byte token


# Letters that make one word when written without spaces: a Hebrew laugh is "▁ח" then "ח" three times or more.
LAUGH = ["<pad>", "\u05d7", " \u05d7", " ok", "ok", " ", "\n"]


def test_a_run_inside_one_word_is_no_loop_but_the_same_run_as_new_words_is():
    from talkalike.decode.sampling import MAX_WORD_TOKENS, WordClasses

    words = WordClasses(LAUGH, 7, "cpu")
    none = torch.tensor([], dtype=torch.long)
    logits = torch.zeros(7)
    block_repeats(logits, torch.tensor([2, 1, 1, 1]), 3, none, words)  # "חחחח" so far: its run of three again
    assert logits[1] == 0  # one more letter of the same word is let be ...
    assert logits[2] == float("-inf")  # ... a new word " ח" would repeat the run
    # a word already MAX_WORD_TOKENS long gets no more of its run, in any spelling
    logits = torch.zeros(7)
    block_repeats(logits, torch.tensor([2] + [1] * (MAX_WORD_TOKENS - 1)), 3, none, words)
    assert logits[1] == logits[2] == float("-inf")
    # the same three letters written as words, "ח ח ח ח": a loop of words, every spelling banned
    logits = torch.zeros(7)
    block_repeats(logits, torch.tensor([2, 2, 2, 2]), 3, none, words)
    assert logits[1] == logits[2] == float("-inf")
    # a space token between them ends the word: "ok" after "ok ok" + " " repeats words
    logits = torch.zeros(7)
    block_repeats(logits, torch.tensor([4, 3, 5, 4, 3, 5]), 3, none, words)
    assert logits[4] == logits[3] == float("-inf")


def test_word_classes_read_where_a_token_opens_and_closes_a_word():
    from talkalike.decode.sampling import WordClasses

    words = WordClasses(LAUGH, 8, "cpu")  # one id past the tokenizer
    assert words.opens.tolist() == [False, False, True, True, False, True, True, False]
    assert words.closes.tolist() == [False, False, False, False, False, True, True, False]


def test_greedy_sampling_with_word_classes_moves_past_every_spelling_of_a_loop():
    from talkalike.decode.sampling import WordClasses

    config = GenerationConfig(temperature=0, repetition_penalty=1.0, no_repeat_ngram=3)
    sampler = Sampler(config, vocab=10, rows=1, device="cpu", separator_ids=[6],
                      words=WordClasses(SPELLINGS, 10, "cpu"))
    logits = torch.tensor([[0.0, 5, 9, 8, 1, 0, 0, 0, 0, 7]])  # " ok", then "OK", then " yes"
    reply = torch.tensor([1, 2, 2])
    assert int(sampler(logits, reply[None], [0.0], [reply])) == 9


def test_greedy_sampling_takes_the_next_best_token_when_the_best_repeats():
    config = GenerationConfig(temperature=0, repetition_penalty=1.0, no_repeat_ngram=3)
    sampler = Sampler(config, vocab=10, rows=1, device="cpu", separator_ids=[9])
    logits = torch.arange(10, dtype=torch.float32)[None].flip(-1)  # token 0 best, then 1, ...
    reply = torch.tensor([3, 4, 0, 3, 4])
    assert int(sampler(logits, reply[None], [0.0], [reply])) == 1
    assert int(sampler(logits, reply[None], [0.0])) == 0  # without the reply, nothing is blocked
    off = Sampler(GenerationConfig(temperature=0, repetition_penalty=1.0, no_repeat_ngram=0), 10, 1, "cpu")
    assert int(off(logits, reply[None], [0.0], [reply])) == 0


def test_the_message_cap_ends_the_turn_at_the_separator_after_the_last_allowed_message():
    text = join_bubbles(["one", "two", "three", "four"])
    assert split_reply(text, [], max_messages=2) == ["one", "two"]
    assert split_reply(text, [], max_messages=0) == ["one", "two", "three", "four"]
    assert split_reply(text, [], max_messages=9) == ["one", "two", "three", "four"]


def test_the_persona_cap_is_the_90th_percentile_of_their_messages_per_turn(tmp_path):
    counts = [1] * 50 + [2] * 30 + [3] * 15 + [7] * 5
    rows = [{"messages": [{"role": "user", "content": f"q{i}"},
                          {"role": "assistant", "content": join_bubbles(["m"] * n)}], "start": f"{i:04d}"}
            for i, n in enumerate(counts)]
    assert Memory.build(rows, tmp_path / "memory.db").messages_per_turn(0.9) == 3


def test_a_line_break_starts_a_message_for_a_persona_who_never_writes_one_inside_a_message():
    """The twin writes "text\n😂" or a list of lines in one message; a persona without line breaks would have sent
    each line as its own message, and the lines count toward the cap."""
    text = "so tired\n😂" + join_bubbles(["", "ok\n\nsee you", "bye"])
    assert split_reply(text, [], line_breaks=False) == ["so tired", "😂", "ok", "see you", "bye"]
    assert split_reply(text, [], line_breaks=True) == ["so tired\n😂", "ok\n\nsee you", "bye"]
    assert split_reply("a\nb\nc\nd\ne", [], max_messages=2, line_breaks=False) == ["a", "b"]
    # a stop string that begins with a line break still ends the turn where it starts
    assert split_reply("hi\nDaniel: and you?", ["\nDaniel:"], line_breaks=False) == ["hi"]
    streamed = Splitter([], 3, line_breaks=False)
    events = [event for char in "hey\n" + join_bubbles(["how", "are\nyou", "x"]) for event in streamed.feed(char)]
    assert collect_messages(events + streamed.finish()) == ["hey", "how", "are"]


def test_a_persona_writes_line_breaks_when_at_least_one_message_in_a_hundred_has_one(tmp_path):
    def memory(lined: int, name: str) -> Memory:
        rows = [{"messages": [{"role": "user", "content": f"q{i}"},
                              {"role": "assistant", "content": join_bubbles(["a\nb" if i < lined else "a", "c"])}],
                 "start": f"{i:04d}"} for i in range(100)]
        return Memory.build(rows, tmp_path / name)

    assert memory(0, "none.db").line_break_share() == 0
    assert memory(10, "some.db").line_break_share() == 10 / 200
    assert memory(1, "rare.db").line_break_share() < LINE_BREAK_SHARE <= memory(2, "two.db").line_break_share()


@pytest.fixture(scope="module")
def remembering_twin(tiny_tokenizer, tmp_path_factory):
    rows = [{"messages": [{"role": "user", "content": f"question {i}"},
                          {"role": "assistant", "content": join_bubbles(["haha ok", "sure 😂"])}], "start": f"{i:04d}"}
            for i in range(3)]
    memory = Memory.build(rows, tmp_path_factory.mktemp("run") / "memory.db")
    twin = Twin.of(build_tiny_model(len(tiny_tokenizer), seed=5), tiny_tokenizer, persona="Noa", memory=memory)
    twin.prepare(torch.float32)
    return twin


HISTORY = [{"role": "user", "content": "Hello there, how are you today?"}]


def test_a_reply_uses_only_the_personas_own_tokens_and_the_conversations(remembering_twin, monkeypatch):
    import talkalike.decode.stream as stream

    twin = remembering_twin
    config = GenerationConfig(temperature=1.0, max_new_tokens=24, seed=3, memories=0, max_messages=0, own_words=True)
    prompt = fit_prompt(twin, HISTORY, config)
    allowed = set(vocabulary(twin, [prompt], config))
    assert set(twin.tokenizer.encode("haha ok", add_special_tokens=False)) <= allowed
    assert set(prompt) <= allowed and len(allowed) < len(twin.tokenizer) / 2
    drawn, loop = [], stream.tokens

    def recording(*args, **kwargs):
        for token in loop(*args, **kwargs):
            drawn.append(token)
            yield token

    monkeypatch.setattr(stream, "tokens", recording)
    reply(twin, HISTORY, config)
    assert drawn and set(drawn) <= allowed
    free = dataclasses.replace(config, own_words=False)
    assert vocabulary(twin, [prompt], free) is None
    drawn.clear()
    reply(twin, HISTORY, free)  # a random tiny model left to the whole vocabulary leaves the persona's words at once
    assert not set(drawn) <= allowed


def test_batched_replies_from_the_restricted_head_match_the_single_streams_masked_ones(remembering_twin):
    """Eval's batches compute only the allowed rows of the head; the chat masks the whole vocabulary: same tokens."""
    twin = remembering_twin
    config = GenerationConfig(temperature=0, max_new_tokens=16, memories=0, max_messages=0, repetition_penalty=1.1,
                              own_words=True)
    histories = [HISTORY, [{"role": "user", "content": "ok sure coming"}]]
    assert decode_many(twin, histories, config, batch_size=2) == [reply(twin, h, config) for h in histories]


def test_the_chat_shows_a_line_break_as_a_new_message_when_the_persona_writes_none(remembering_twin):
    from talkalike.decode.stream import stream_reply

    ids = remembering_twin.tokenizer.encode("so tired\nok sure", add_special_tokens=False)
    config = GenerationConfig(memories=0, max_messages=0)
    for line_breaks, expected in ((False, ["so tired", "ok sure"]), (True, ["so tired\nok sure"])):
        twin = dataclasses.replace(remembering_twin, line_breaks=line_breaks)
        events = stream_reply(twin, HISTORY, config, draw=lambda *args: (token for token in ids))
        assert collect_messages(events) == expected


def test_a_twin_without_memory_keeps_the_whole_vocabulary(tiny_tokenizer):
    twin = Twin.of(build_tiny_model(len(tiny_tokenizer)), tiny_tokenizer)
    assert vocabulary(twin, [[5, 6]], GenerationConfig(own_words=True)) is None


def test_a_tokenizers_word_classes_join_the_spellings_it_has(tiny_tokenizer):
    """Built from a real (byte-level BPE) tokenizer: a word and its space-led token are one class; off with the rule."""
    from talkalike.decode.sampling import word_classes

    config = GenerationConfig(no_repeat_ngram=3)
    words = word_classes(tiny_tokenizer, len(tiny_tokenizer), "cpu", config)
    pairs = [(tiny_tokenizer.convert_tokens_to_ids(w), tiny_tokenizer.convert_tokens_to_ids("Ġ" + w))
             for w in ("the", "you", "ok")]
    pairs = [(a, b) for a, b in pairs if a != tiny_tokenizer.unk_token_id and b != tiny_tokenizer.unk_token_id
             and a is not None and b is not None]
    assert pairs, "the tiny vocabulary has a word both with and without a leading space"
    for bare, spaced in pairs:
        assert words.of[bare] == words.of[spaced]
        assert spaced in words.members[words.of[bare]].tolist()
    assert word_classes(tiny_tokenizer, len(tiny_tokenizer), "cpu", GenerationConfig(no_repeat_ngram=0)) is None


@pytest.mark.parametrize("with_words", [True, False], ids=["words", "tokens"])
def test_the_rule_over_a_batchs_rows_bans_what_it_bans_row_by_row(with_words):
    """serve's batch draws every row in one call: block_repeats_rows must ban exactly what block_repeats bans for
    each row alone, over replies of any lengths (shorter than the run too), separators, word-internal runs and loops
    in other spellings."""
    from talkalike.decode.sampling import MAX_WORD_TOKENS, WordClasses, block_repeats_rows

    vocab = len(LAUGH) + len(SPELLINGS)
    words = WordClasses(LAUGH + SPELLINGS, vocab, "cpu") if with_words else None
    separator = torch.tensor([6 + len(LAUGH)])
    generator = torch.Generator().manual_seed(3)
    replies = [torch.tensor([2] + [1] * (MAX_WORD_TOKENS + 2)), torch.tensor([2, 1, 1, 1]), torch.tensor([3]),
               torch.tensor([], dtype=torch.long), torch.tensor([4, 3, 5, 4, 3, 5]), torch.tensor([1, 2, 2])]
    replies += [torch.randint(0, vocab, (int(torch.randint(0, 14, (1,), generator=generator)),), generator=generator)
                for _ in range(40)]
    replies += [torch.randint(7, 10, (12,), generator=generator) for _ in range(10)]  # few tokens: many repeats
    for n in (2, 3, 4):
        alone = torch.zeros(len(replies), vocab + 3)  # a sampler's buffer is wider than the vocabulary
        for row, one in enumerate(replies):
            block_repeats(alone[row], one, n, separator, words)
        together = torch.zeros(len(replies), vocab + 3)
        block_repeats_rows(together, replies, n, separator, words)
        assert torch.isinf(alone).any()  # the comparison below can fail
        assert torch.equal(together, alone), n


def test_the_personas_own_emoji_are_read_from_memory(remembering_twin, tiny_tokenizer):
    assert remembering_twin.own_emoji() == {"😂"}
    assert Twin.of(build_tiny_model(len(tiny_tokenizer)), tiny_tokenizer).own_emoji() is None


@pytest.fixture
def fresh_foreign_emoji():
    """The banned-emoji tensors are cached per persona; tests that fake the emoji tokens start and end without them."""
    from talkalike.decode.language import _foreign_tensor

    _foreign_tensor.cache_clear()
    yield
    _foreign_tensor.cache_clear()


def test_chat_and_batched_replies_never_draw_an_emoji_the_persona_never_wrote(remembering_twin, monkeypatch,
                                                                              fresh_foreign_emoji):
    """Tokens said to write 🙈 (the persona only ever wrote 😂) are drawn by a random model left alone, and never
    with own_emoji on: in the chat's single stream, eval's batches and the restricted head of own_words."""
    import talkalike.decode.batch as batch
    import talkalike.decode.language as language
    import talkalike.decode.stream as stream

    twin = remembering_twin
    foreign = set(range(100, 300))
    monkeypatch.setattr(language, "emoji_tokens", lambda tokenizer, vocab: {i: frozenset("🙈") for i in foreign})
    drawn, batch_drawn, loop, sample = [], set(), stream.tokens, batch.Batch.sample

    def recording(*args, **kwargs):
        for token in loop(*args, **kwargs):
            drawn.append(token)
            yield token

    def recording_sample(self, rows):
        finished = sample(self, rows)
        batch_drawn.update(token for tokens in rows.tokens for token in tokens)
        return finished

    monkeypatch.setattr(stream, "tokens", recording)
    monkeypatch.setattr(batch.Batch, "sample", recording_sample)
    histories = [HISTORY, [{"role": "user", "content": "ok sure coming"}]]
    for own_emoji in (False, True):
        config = GenerationConfig(temperature=1.0, max_new_tokens=24, seed=3, memories=0, max_messages=0,
                                  no_repeat_ngram=0, own_emoji=own_emoji)
        drawn.clear()
        for history in histories:
            reply(twin, history, config)
        for own_words in (False, True):
            batch_drawn.clear()
            decode_many(twin, histories * 4, dataclasses.replace(config, own_words=own_words), batch_size=8)
            assert batch_drawn and bool(foreign & batch_drawn) is not own_emoji, own_words
        assert drawn and bool(foreign & set(drawn)) is not own_emoji


def test_every_reply_of_one_persona_bans_with_one_tensor_so_serve_draws_its_rows_together(remembering_twin,
                                                                                          monkeypatch,
                                                                                          fresh_foreign_emoji):
    import talkalike.decode.language as language
    from talkalike.decode.stream import reply_sampler

    monkeypatch.setattr(language, "emoji_tokens", lambda tokenizer, vocab: {i: frozenset("🙈") for i in range(7, 9)})
    config = GenerationConfig(memories=0)
    first, _ = reply_sampler(remembering_twin, "cpu", [5, 6], config, HISTORY)
    second, _ = reply_sampler(remembering_twin, "cpu", [5, 6, 7], dataclasses.replace(config, temperature=1.0), HISTORY)
    assert first.banned.tolist() == [7, 8] and first.banned is second.banned and first.kind() == second.kind()
