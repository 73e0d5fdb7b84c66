"""The style, distinguishability, memorisation and interval metrics on hand-made inputs with known answers."""

import math
import random

import pytest

from talkalike.evaluate import metrics

PERSONA = [
    ["haha ok", "see u at the beach 😂"],
    ["חחח יאללה", "coming 🏃‍♀️"],
    ["lol no way"],
    ["sure", "8?", "🙈"],
]
FORMAL = [
    ["I think we should meet at the café on Dizengoff at eight, if that suits you."],
    ["Hello there, how are you today? I hope the week went well."],
    ["That is a very good point. Let me think about it and get back to you tomorrow."],
]


def test_identical_sets_have_distance_zero_on_every_feature():
    distances = metrics.style_distances(PERSONA, [list(reply) for reply in PERSONA])
    assert set(distances) == set(metrics.FEATURES)
    assert all(d == pytest.approx(0.0, abs=1e-12) for d in distances.values())
    assert metrics.style_distance(PERSONA, PERSONA) == pytest.approx(0.0, abs=1e-12)


def test_emoji_only_against_no_emoji_is_the_maximum_distance():
    emoji_only = [["😂"], ["🙈🙈"], ["👍🏽"]]
    no_emoji = [["ok"], ["fine thanks"], ["see you"]]
    distances = metrics.style_distances(emoji_only, no_emoji)
    assert distances["emoji rate"] == pytest.approx(1.0)
    assert distances["which emoji"] == pytest.approx(1.0)


def test_hebrew_only_against_english_only_language_mix_is_the_maximum():
    hebrew = [["שלום מה קורה"], ["יאללה נתראה"]]
    english = [["hello how are you"], ["see you later"]]
    assert metrics.style_distances(hebrew, english)["language mix"] == pytest.approx(1.0)
    mixed = [["שלום hello"], ["see you later"]]
    partial = metrics.style_distances(mixed, english)["language mix"]
    assert 0.0 < partial < 1.0


def test_js_distance_matches_a_hand_computed_value():
    # p = (1, 0), q = (1/2, 1/2): JSD = 1/2 * log2(4/3) + 1/4 * log2(1/... ) computed directly
    p, q = {"a": 1}, {"a": 1, "b": 1}
    m = {"a": 0.75, "b": 0.25}
    jsd = 0.5 * (1 * math.log2(1 / m["a"])) + 0.5 * (0.5 * math.log2(0.5 / m["a"]) + 0.5 * math.log2(0.5 / m["b"]))
    assert metrics.js_distance(p, q) == pytest.approx(math.sqrt(jsd))
    assert metrics.js_distance(p, q) == pytest.approx(metrics.js_distance(q, p))
    assert metrics.js_distance({}, {}) == 0.0
    assert metrics.js_distance({"a": 3}, {}) == 1.0


def test_messages_per_turn_and_length_features_see_bursts_versus_long_sentences():
    distances = metrics.style_distances(PERSONA, FORMAL)
    assert distances["messages per turn"] > 0.5
    assert distances["message length"] > 0.8
    assert distances["capitalisation"] > 0.5
    bursts = metrics.profile(PERSONA)["messages per turn"]
    assert bursts == {"2": 2, "1": 1, "3": 1}


def test_laughter_markers_are_recognised_in_several_languages_but_not_inside_words():
    counts = metrics.profile([["hahaha"], ["חחחח"], ["LOL"], ["jajaja"], ["kkkk"], ["😂"], ["ההורים שלי"]])["laughter"]
    assert counts == {"haha": 1, "חחח": 1, "lol": 1, "jaja": 1, "kkk": 1, "😂": 1, "none": 1}


def test_emoji_sequences_count_as_one_emoji():
    counts = metrics.profile([["coming 🏃‍♀️ 👍🏽"]])["which emoji"]
    assert counts == {"🏃\u200d♀️": 1, "👍🏽": 1}


def test_summary_and_vocabulary_overlap_are_consistent():
    stats = metrics.summary(PERSONA)
    assert stats["turns"] == 4 and stats["messages"] == 8
    assert stats["messages per turn"] == pytest.approx(2.0)
    overlap = metrics.vocabulary_overlap(PERSONA, PERSONA)
    assert overlap["token share in real vocabulary"] == 1.0 and overlap["vocabulary jaccard"] == 1.0
    assert metrics.vocabulary_overlap(FORMAL, [["zzz"]])["token share in real vocabulary"] == 0.0


def test_style_report_ranks_the_closer_set_first():
    report = metrics.style_report({"real": PERSONA, "close": PERSONA[:3], "far": FORMAL})
    sets = report["sets"]
    assert sets["real"]["style distance"] == pytest.approx(0.0, abs=1e-12)
    assert sets["close"]["style distance"] < sets["far"]["style distance"]
    assert set(sets["far"]["distributions"]) == set(metrics.FEATURES)


def test_verbatim_copies_are_detected_by_long_word_or_character_runs():
    index = metrics.CopyIndex(["we should totally go to the beach on saturday morning with pita", "call me 0541234567890123456789012345678901"])
    assert index.copies("omg We should totally go to the beach on saturday morning!!")  # 8 shared words, case-blind
    assert index.copies("my number: call me 0541234567890123456789012345678901 ok")  # a 40-char run
    assert not index.copies("we should totally go to the mall")  # only 6 words in common
    assert not index.copies("haha ok")
    assert index.copy_rate(["haha ok", "we should totally go to the beach on saturday morning"]) == 0.5


def test_wilson_interval_matches_known_values():
    low, high = metrics.wilson_interval(2, 20)
    assert (round(low, 4), round(high, 4)) == (0.0279, 0.3010)
    low, high = metrics.wilson_interval(50, 100)
    assert (round(low, 4), round(high, 4)) == (0.4038, 0.5962)
    assert metrics.wilson_interval(0, 10)[0] == 0.0
    assert metrics.wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert metrics.wilson_interval(0, 0) == (0.0, 1.0)


def test_persona_classifier_tells_the_persona_from_a_formal_speaker():
    persona = ["haha ok 😂", "lol sure", "חחח יאללה", "see u 🙈", "haha no", "lol 8?", "יאללה bye 😂", "ok haha"] * 3
    others = [" ".join(reply) for reply in FORMAL] * 8
    classifier = metrics.train_persona_classifier(persona, others)
    assert metrics.persona_rate(classifier, ["hahaha ok 😂", "lol yes"]) == 1.0
    assert metrics.persona_rate(classifier, ["Good evening. I hope you are well, and that the meeting went fine."]) == 0.0


def test_real_versus_generated_auc_is_high_for_different_styles_and_near_half_for_the_same():
    real = [f"haha ok {i} 😂" for i in range(20)]
    different = [f"Good evening, I hope that item {i} is fine." for i in range(20)]
    assert metrics.real_vs_generated_auc(real, different) > 0.95
    # two random halves of one pool in the persona's style: nothing to tell them apart by
    pool = [f"{laugh} {word} {emoji}" for laugh in ("haha", "lol", "חחח") for word in ("ok", "sure", "no", "yes",
            "bye", "8?", "yalla") for emoji in ("😂", "🙈")]
    random.Random(1).shuffle(pool)
    assert 0.25 < metrics.real_vs_generated_auc(pool[0::2], pool[1::2]) < 0.75
