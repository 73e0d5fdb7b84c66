"""Language steering: the persona's opening-script shares, and the first-token rescaling that keeps them."""

import pytest

from talkalike.decode.language import MAX_SHIFT, Steer, main_script, opening_shares, script


def test_script_reads_the_first_letter_and_main_script_the_majority():
    assert script("😂 lol") == "LATIN"
    assert script("  חחח ok") == "HEBREW"
    assert script("123 🙈") is None
    assert main_script("ok ok שלום חבר מה קורה") == "HEBREW"
    assert main_script("Привет, how are you doing today") == "LATIN"


def test_opening_shares_count_messages_by_the_incoming_message_s_script():
    pairs = [("How are you?", ["good", "שלום", "😂"])] * 30 + [("מה נשמע", ["טוב", "טוב", "ok"])] * 30
    other, shares = opening_shares(pairs)
    assert other == "HEBREW"
    # after English the turn's first message opens in English, its second in Hebrew ("😂" opens in no letter)
    assert shares["latin"] == pytest.approx((0, 1))
    assert shares["other"] == pytest.approx((1, 1 / 2))  # after Hebrew: "טוב", then "טוב" and "ok"
    assert shares["any"] == pytest.approx((1 / 2, 2 / 3))


def test_opening_shares_tell_a_turns_first_message_from_its_later_ones():
    """People often answer in the message's language and switch after: the shares follow them at each position."""
    pairs = [("How are you?", ["good", "שלום"])] * 15 + [("How are you?", ["ok", "sure"])] * 15
    _, shares = opening_shares(pairs)
    assert shares["latin"] == pytest.approx((0, 1 / 2))


def test_few_messages_after_one_script_fall_back_to_the_overall_share_and_one_script_is_not_steered():
    pairs = [("hi", ["ok", "שלום"])] * 30 + [("מה", ["טוב"])] * 2 + [("hi", ["ok"])] * 10
    _, shares = opening_shares(pairs)
    overall = 32 / 72  # Hebrew openings among all 72 messages
    assert shares["other"] == pytest.approx((overall, overall))  # 2 messages after Hebrew: the overall share
    assert shares["latin"] == pytest.approx((0, 1))  # 40 first messages, 30 later ones: their own shares
    assert opening_shares([("hi", ["ok", "sure 😂"])] * 40) is None


def steer_over(vocab: int = 12):
    import torch

    groups = torch.zeros(vocab, dtype=torch.long)
    groups[2:6] = 1  # Latin-opening tokens
    groups[6:9] = 2  # the other script's
    masks = torch.stack([groups == 1, groups == 2], dim=1).float()
    return Steer(other="HEBREW", shares={"latin": 0.3, "other": 0.8, "any": 0.5}, masks=masks, start_tail=[10, 11])


@pytest.mark.parametrize("temperature", [0.5, 1.0])
def test_at_a_message_start_the_other_script_gets_its_share_and_the_rest_keeps_its_mass(temperature):
    import torch

    steer = steer_over()
    torch.manual_seed(0)
    logits = torch.randn(1, 12) * 2
    before = torch.softmax(logits / temperature, -1)
    steer.apply(logits, [0.3], [temperature], [[4, 10, 11]])  # the separator's tail: a new message starts
    after = torch.softmax(logits / temperature, -1)
    latin, other = after[0, 2:6].sum().item(), after[0, 6:9].sum().item()
    assert other / (latin + other) == pytest.approx(0.3, abs=1e-5)
    assert after[0, [0, 1, 9, 10, 11]].sum().item() == pytest.approx(before[0, [0, 1, 9, 10, 11]].sum().item(), abs=1e-5)
    # inside a group the model's own preferences stay
    assert torch.allclose(after[0, 6:9] / other, before[0, 6:9] / before[0, 6:9].sum(), atol=1e-5)


def test_the_steer_sets_the_opening_share_after_the_habits_are_kept_and_scaled():
    """A laugh is written in a script ("lol", "חחח"): the habits' odds and scales move the scripts' masses, so the
    steer comes last and the draw opens in the other script as often as the share says."""
    import torch

    from talkalike.decode.config import GenerationConfig
    from talkalike.decode.sampling import Sampler

    config = GenerationConfig(temperature=0.5, repetition_penalty=1.0, no_repeat_ngram=0, seed=0,
                              opener_temperature=None, emoji_scale=2.0, laughter_scale=3.0)
    habits = [torch.tensor([0]), torch.tensor([4, 5])]  # an emoji; two Latin laughs
    sampler = Sampler(config, 12, rows=1, device="cpu", steer=steer_over(), shares=[0.3], habits=habits)
    torch.manual_seed(3)
    logits = torch.randn(1, 12)
    seen = torch.zeros(1, 1, dtype=torch.long)
    draws = [int(sampler(logits, seen, [0.5], [torch.tensor([4, 10, 11])])[0]) for _ in range(4000)]
    latin, other = sum(2 <= d < 6 for d in draws), sum(6 <= d < 9 for d in draws)
    assert other / (latin + other) == pytest.approx(0.3, abs=0.03)


def test_a_turns_first_message_takes_the_first_share_and_a_later_one_the_later_share():
    import torch

    steer = steer_over()
    for reply, expected in (([], 0.1), ([4, 10, 11], 0.6)):
        logits = torch.zeros(1, 12)
        steer.apply(logits, [(0.1, 0.6)], [1.0], [reply])
        after = torch.softmax(logits, -1)
        latin, other = after[0, 2:6].sum().item(), after[0, 6:9].sum().item()
        assert other / (latin + other) == pytest.approx(expected, abs=1e-5)


def test_mid_message_greedy_rows_and_rows_without_a_share_are_left_alone_and_shifts_are_bounded():
    import torch

    steer = steer_over()
    logits = torch.randn(4, 12)
    original = logits.clone()
    steer.apply(logits, [0.3, 0.3, None, 0.3], [1.0, 0.0, 1.0, 1.0], [[4, 5], [], [], [10, 11]])
    assert torch.equal(logits[:3], original[:3])  # mid-message, greedy, no share
    assert not torch.equal(logits[3], original[3])
    logits = torch.zeros(1, 12)
    logits[0, 6:9] = -30.0  # the model all but never opens in the other script here
    steer.apply(logits, [0.9], [1.0], [[]])
    assert logits[0, 6].item() == pytest.approx(-30.0 + MAX_SHIFT)


def test_a_device_tensor_reply_gives_the_same_shift_as_a_host_list():
    import torch

    steer = steer_over()
    base = torch.randn(1, 12)
    for reply in ([4, 10, 11], [4, 5, 6]):
        host, tensor = base.clone(), base.clone()
        steer.apply(host, [0.7], [1.0], [reply])
        steer.apply(tensor, [0.7], [1.0], [torch.tensor(reply)])
        assert torch.allclose(host, tensor)


@pytest.mark.parametrize("byte_level", [True, False])
def test_token_groups_read_what_a_token_writes_in_byte_level_and_sentencepiece_vocabularies(byte_level):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from talkalike.decode.language import token_groups

    text = ["שלום מה קורה חברים", "hello how are you friends", "ok שלום hello"] * 20
    if byte_level:  # GPT-2 / Llama 3 style: Hebrew letters spelled as Latin-1 stand-ins in the vocabulary
        raw = Tokenizer(models.BPE())
        raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        raw.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:  # SentencePiece style: pieces in their own script after a "▁"
        raw = Tokenizer(models.BPE())
        raw.pre_tokenizer = pre_tokenizers.Metaspace()
        raw.decoder = decoders.Metaspace()
        alphabet = []
    raw.train_from_iterator(text, trainers.BpeTrainer(vocab_size=300, initial_alphabet=alphabet, special_tokens=["<s>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>")
    groups = token_groups(tokenizer, len(tokenizer), "HEBREW")
    ids = {tokenizer.decode([i]).strip(): i for i in range(len(tokenizer))}
    assert groups[ids["שלום"]] == 2 and groups[ids["hello"]] == 1
    assert groups[tokenizer.convert_tokens_to_ids("<s>")] == 0


@pytest.mark.parametrize("temperature", [0.5, 0.8, 1.5])
def test_habit_tokens_are_drawn_with_their_temperature_one_odds_and_the_rest_stays_at_the_temperature(temperature):
    import torch

    from talkalike.decode.language import keep_mass

    torch.manual_seed(1)
    logits = torch.randn(3, 40) * 1.5
    logits[:, 30:] -= 2.0  # the emoji columns start out less likely, as in a chat model's head
    ids = torch.arange(30, 40)
    at_one = torch.softmax(logits, -1)
    before = torch.softmax(logits / temperature, -1)
    assert not torch.allclose(before[:, 30:].sum(-1), at_one[:, 30:].sum(-1), atol=1e-3)  # the temperature moved it
    keep_mass(logits, [ids], temperature)
    after = torch.softmax(logits / temperature, -1)
    torch.testing.assert_close(after[:, 30:].sum(-1), at_one[:, 30:].sum(-1), atol=1e-5, rtol=1e-4)

    def inside(probs, block):
        return probs[:, block] / probs[:, block].sum(-1, keepdim=True)

    # which emoji: the temperature-1 choice; among the other tokens: the temperature's own
    torch.testing.assert_close(inside(after, slice(30, 40)), inside(at_one, slice(30, 40)), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(inside(after, slice(0, 30)), inside(before, slice(0, 30)), atol=1e-5, rtol=1e-4)


def test_habit_odds_leave_greedy_rows_and_blocked_habits_alone_and_unlikely_ones_unlikely():
    import torch

    from talkalike.decode.language import keep_mass

    logits = torch.randn(3, 20)
    logits[1, 15:] = float("-inf")  # every emoji blocked (own words, no-repeat): nothing to rescale
    logits[2, 15:] = -60.0  # far below the rest: they stay as unlikely as at temperature 1
    original = logits.clone()
    keep_mass(logits, [torch.arange(15, 20)], torch.tensor([[1.0], [0.5], [0.5]]))
    assert torch.equal(logits[:2], original[:2])
    assert torch.softmax(logits[2] / 0.5, -1)[15:].sum() < 1e-20
    assert torch.equal(logits[2, :15], original[2, :15])


def test_the_sampler_draws_emoji_at_the_models_own_rate_when_kept_and_less_often_when_not():
    import torch

    from talkalike.decode.config import GenerationConfig
    from talkalike.decode.sampling import Sampler

    logits = torch.zeros(1, 64)
    logits[0, :4] = 3.0  # four likely plain tokens
    logits[0, 60:] = 2.0  # four emoji, each a little less likely: 18% of the mass at temperature 1, 12% at 0.5
    at_one = torch.softmax(logits, -1)[0, 60:].sum().item()
    seen = torch.zeros(1, 1, dtype=torch.long)
    rates = {}
    for keep in (True, False):
        config = GenerationConfig(temperature=0.5, repetition_penalty=1.0, seed=0, keep_habits=keep)
        sampler = Sampler(config, 64, rows=1, device="cpu", habits=[torch.arange(60, 64)] if keep else None)
        draws = [int(sampler(logits, seen, [0.5])[0]) for _ in range(3000)]
        rates[keep] = sum(d >= 60 for d in draws) / len(draws)
    assert rates[True] == pytest.approx(at_one, abs=0.03)
    assert rates[False] < at_one - 0.04


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_a_calibrated_habit_scale_multiplies_the_class_odds_on_sampled_rows_and_leaves_greedy_rows_alone(scale):
    import torch

    from talkalike.decode.config import GenerationConfig
    from talkalike.decode.sampling import Sampler

    logits = torch.zeros(2, 64)
    logits[:, :4] = 3.0
    logits[:, 60:] = 2.0  # the emoji class: 18% of the mass at temperature 1
    at_one = torch.softmax(logits[0], -1)[60:].sum().item()
    expected = scale * at_one / (scale * at_one + 1 - at_one)  # the class's odds against the rest times the scale
    seen = torch.zeros(2, 1, dtype=torch.long)
    config = GenerationConfig(temperature=0.5, repetition_penalty=1.0, seed=0, emoji_scale=scale, laughter_scale=3.0)
    no_laughs = torch.tensor([], dtype=torch.long)  # a vocabulary without laughs: its scale has nothing to move
    sampler = Sampler(config, 64, rows=2, device="cpu", habits=[torch.arange(60, 64), no_laughs])
    draws = [sampler(logits, seen, [0.5, 0.0]) for _ in range(3000)]
    assert sum(int(d[0]) >= 60 for d in draws) / len(draws) == pytest.approx(expected, abs=0.03)
    assert all(int(d[1]) < 4 for d in draws)  # the greedy row still takes a plain token
    plain = Sampler(GenerationConfig(temperature=0.5), 64, 2, "cpu", habits=[torch.arange(60, 64), no_laughs])
    assert sampler.kind() != plain.kind() and plain.habit_bias is None  # rows of other scales are drawn apart


def test_a_habit_scale_must_be_above_zero():
    import torch

    from talkalike.decode.config import GenerationConfig
    from talkalike.decode.sampling import Sampler

    with pytest.raises(ValueError, match="above 0"):
        Sampler(GenerationConfig(emoji_scale=0.0), 64, 1, "cpu", habits=[torch.arange(60, 64), torch.arange(50, 52)])


def _habit_tokenizer(byte_level: bool):
    """A small BPE whose vocabulary holds whole emoji (😂, ❤️, 🙈) and laughs."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    text = ["haha 😂 ok", "love it ❤️ so much", "ok ok 🙈 lol", "nice one חחחח", "hahaha have a hat", "lol"] * 20
    raw = Tokenizer(models.BPE())
    if byte_level:
        raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        raw.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        raw.pre_tokenizer = pre_tokenizers.Metaspace()
        raw.decoder = decoders.Metaspace()
        alphabet = []
    raw.train_from_iterator(text, trainers.BpeTrainer(vocab_size=400, initial_alphabet=alphabet, special_tokens=["<s>"]))
    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>")


@pytest.mark.parametrize("byte_level", [True, False])
def test_habit_token_ids_find_the_tokens_that_write_an_emoji_or_a_laugh(byte_level):
    from talkalike.decode.language import habit_token_ids

    tokenizer = _habit_tokenizer(byte_level)
    found = {name: {tokenizer.decode([i]).strip() for i in ids}
             for name, ids in habit_token_ids(tokenizer, len(tokenizer)).items()}
    assert all(any(e in t for e in "😂❤🙈") for t in found["emoji"])
    for emoji in ("😂", "🙈"):
        assert any(emoji in t for t in found["emoji"]), emoji
    assert {"haha", "lol", "חחחח"} <= found["laughter"]
    assert not {"ha", "have", "hat", "nice", "ok"} & (found["laughter"] | found["emoji"])


@pytest.mark.parametrize("byte_level", [True, False])
def test_foreign_emoji_are_the_tokens_that_write_an_emoji_the_persona_never_wrote(byte_level):
    from types import SimpleNamespace

    from talkalike.decode.config import GenerationConfig
    from talkalike.decode.language import emoji_tokens, foreign_emoji

    tokenizer = _habit_tokenizer(byte_level)
    twin = SimpleNamespace(tokenizer=tokenizer, vocab_size=len(tokenizer), own_emoji=lambda: frozenset("😂"))
    banned = foreign_emoji(twin, "cpu", GenerationConfig())
    texts = {int(i): tokenizer.decode([int(i)]) for i in banned}
    assert texts and not any("😂" in text for text in texts.values())
    for emoji in ("🙈", "❤"):
        assert any(emoji in text for text in texts.values()), emoji
    # every emoji token is either the persona's own or banned
    assert {i for i, found in emoji_tokens(tokenizer, len(tokenizer)).items() if found != {"😂"}} == set(texts)
    assert foreign_emoji(twin, "cpu", GenerationConfig(own_emoji=False)) is None
    assert foreign_emoji(SimpleNamespace(**{**vars(twin), "own_emoji": lambda: None}), "cpu", GenerationConfig()) is None


def test_banned_tokens_are_never_drawn_and_the_persona_s_own_emoji_keep_their_temperature_one_odds():
    import torch

    from talkalike.decode.config import GenerationConfig
    from talkalike.decode.sampling import Sampler

    logits = torch.zeros(1, 64)
    logits[0, :4] = 3.0
    logits[0, 60:] = 2.5  # four emoji; the last two the persona never wrote
    banned = torch.tensor([62, 63])
    config = GenerationConfig(temperature=0.5, repetition_penalty=1.0, seed=0)
    sampler = Sampler(config, 64, rows=1, device="cpu", habits=[torch.arange(60, 64)], banned=banned)
    seen = torch.zeros(1, 1, dtype=torch.long)
    draws = [int(sampler(logits, seen, [0.5])[0]) for _ in range(3000)]
    assert not {62, 63} & set(draws)
    allowed = logits.clone()
    allowed[0, 62:] = float("-inf")
    at_one = torch.softmax(allowed, -1)[0, 60:62].sum().item()  # the kept emoji's mass at 1, the banned ones gone
    assert sum(d in (60, 61) for d in draws) / len(draws) == pytest.approx(at_one, abs=0.03)
    assert Sampler(config, 64, 1, "cpu", banned=banned).kind() != Sampler(config, 64, 1, "cpu").kind()


def test_two_habit_classes_each_keep_their_temperature_one_mass_at_once():
    import torch

    from talkalike.decode.language import keep_mass

    torch.manual_seed(2)
    logits = torch.randn(4, 60)
    logits[:, 40:50] -= 1.0  # emoji
    logits[:, 50:] -= 1.5  # laughs
    classes = [torch.arange(40, 50), torch.arange(50, 60)]
    at_one = torch.softmax(logits, -1)
    temperatures = torch.tensor([[0.5], [0.7], [1.0], [1.3]])
    keep_mass(logits, classes, temperatures)
    after = torch.softmax(logits / temperatures, -1)
    for ids in classes:
        torch.testing.assert_close(after[:, ids].sum(-1), at_one[:, ids].sum(-1), atol=1e-5, rtol=1e-4)


def _opener_draws(reply, opener, samples: int = 2000, device_side: bool = False, seed: int = 0):
    """How often the sampler draws token 1 (the likelier of two) for a reply that is or is not at a message start."""
    import torch

    from talkalike.decode.config import GenerationConfig
    from talkalike.decode.language import MessageStart
    from talkalike.decode.sampling import Sampler

    config = GenerationConfig(temperature=0.5, repetition_penalty=1.0, no_repeat_ngram=0, seed=seed,
                              opener_temperature=opener, keep_habits=False)
    starts = MessageStart([5, 6])
    if device_side:  # what a GPU's reply gives: the start as a 0-dim tensor, never read back
        host = starts
        starts = lambda r: torch.tensor(host(r))  # noqa: E731
    sampler = Sampler(config, 8, rows=1, device="cpu", starts=starts)
    logits = torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    seen = torch.zeros(1, 1, dtype=torch.long)
    return sum(int(sampler(logits, seen, [0.5], [reply])[0]) == 1 for _ in range(samples)) / samples


def test_each_later_messages_first_token_is_drawn_at_the_opener_temperature_and_the_rest_at_the_replys():
    """A message after the turn's first opens at the opener temperature; the turn's first message (it answers the
    message in front of it) and every other token stay at the reply's."""
    import math

    import torch

    at = {t: math.exp(1 / t) / (math.exp(1 / t) + 7) for t in (0.5, 1.0)}  # token 1's probability at t
    assert at[0.5] - at[1.0] > 0.15
    empty, after_separator, inside = torch.tensor([], dtype=torch.long), torch.tensor([3, 5, 6]), torch.tensor([3, 4])
    assert _opener_draws(after_separator, 1.0) == pytest.approx(at[1.0], abs=0.04)
    assert _opener_draws(empty, 1.0) == pytest.approx(at[0.5], abs=0.04)
    assert _opener_draws(inside, 1.0) == pytest.approx(at[0.5], abs=0.04)
    assert _opener_draws(after_separator, None) == pytest.approx(at[0.5], abs=0.04)  # off: the reply's throughout


def test_an_opener_known_only_on_the_device_draws_as_one_known_on_the_host():
    import torch

    for reply in (torch.tensor([], dtype=torch.long), torch.tensor([3, 5, 6]), torch.tensor([3, 4])):
        assert _opener_draws(reply, 1.0, 300, device_side=True, seed=4) == _opener_draws(reply, 1.0, 300, seed=4)


def test_message_start_reads_host_lists_and_tensors_alike():
    import torch

    from talkalike.decode.language import MessageStart

    start = MessageStart([5, 6])
    for reply, expected in (([], True), ([3, 5, 6], True), ([5, 6, 3], False), ([6], False), ([3, 4], False)):
        assert start(reply) is expected
        assert start(torch.tensor(reply, dtype=torch.long)) is expected
    assert MessageStart([5, 6]).columns(torch.arange(10) + 100).tail == [105, 106]


def test_a_habit_the_temperature_all_but_silenced_is_nudged_at_most_e4_toward_its_temperature_one_mass():
    import math

    import torch

    from talkalike.decode.language import MAX_SHIFT, keep_mass

    logits = torch.zeros(1, 40)
    logits[0, 0] = 10.0  # one token the model is sure of
    logits[0, 30:] = 3.0  # the habit: 1% of the mass at temperature 1, e^-14 times less at 0.5
    ids = torch.arange(30, 40)
    at_one = torch.softmax(logits, -1)[0, 30:].sum().item()
    before = torch.softmax(logits / 0.5, -1)[0, 30:].sum().item()
    keep_mass(logits, [ids], 0.5)
    after = torch.softmax(logits / 0.5, -1)[0, 30:].sum().item()
    assert before < after < at_one
    assert math.log(after / before) == pytest.approx(MAX_SHIFT, abs=0.01)
    inside = torch.softmax(logits[0, 30:] / 0.5, -1)  # which one: still the temperature-1 choice (here: even)
    torch.testing.assert_close(inside, torch.full((10,), 0.1))
