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


# --- the plain-words style gaps of the headline -------------------------------------------------------------------


def test_a_reply_repeating_a_three_word_run_is_counted_and_a_plain_one_is_not():
    assert metrics.repeats_a_trigram(["ok ok ok ok"])
    assert metrics.repeats_a_trigram(["see you at 8", "See you at 8"])  # the same message sent twice, any case
    assert not metrics.repeats_a_trigram(["a b c"])
    assert not metrics.repeats_a_trigram(["ok ok ok"])  # one 3-word run, nothing repeated
    assert metrics.repeated_trigram_share([["ok ok ok ok"], ["a b c"], ["fine"], []]) == 0.25
    assert metrics.repeated_trigram_share([]) == 0.0


def test_style_gaps_rank_a_planted_hebrew_gap_first_in_plain_words():
    # same length, one message a turn, no emoji or laughter: only the share of Hebrew messages differs
    persona = [["שלום מה"]] * 27 + [["hello x"]] * 73
    tuned = [["שלום מה"]] * 3 + [["hello x"]] * 97
    gaps = metrics.style_gaps(persona, tuned)
    assert gaps[0]["measure"] == "Hebrew messages"
    assert gaps[0]["text"] == "Hebrew messages tuned 3% vs persona 27%"
    assert gaps[0]["relative difference"] == pytest.approx(24 / 27)
    assert all(g["relative difference"] == 0 for g in gaps[1:])
    assert {g["measure"] for g in gaps} >= {"Hebrew messages", "messages per turn", "messages with an emoji",
                                           "replies repeating a 3-word run"}


def test_style_gaps_say_messages_per_turn_and_ignore_a_gap_too_rare_to_notice():
    persona = [["hey", "ok"]] * 7 + [["hey", "ok", "sure"]] * 3  # 2.3 messages a turn
    tuned = [["hey", "ok", "sure", "fine"]] * 5 + [["hey", "ok", "sure"]] * 5  # 3.5, and one emoji in 35 messages
    tuned[0] = ["hey 😂", "ok", "sure", "fine"]
    gaps = metrics.style_gaps(persona, tuned)
    assert gaps[0]["text"] == "messages per turn tuned 3.5 vs persona 2.3"
    emoji = next(g for g in gaps if g["measure"] == "messages with an emoji")
    # 3% vs 0% is relative to the 10% floor, not to 3%: it must not outrank the burst gap
    assert emoji["relative difference"] < gaps[0]["relative difference"]


def test_summary_reports_the_repeated_three_word_run_share():
    assert metrics.summary([["ok ok ok ok"], ["fine"]])["repeated 3-gram share"] == 0.5
