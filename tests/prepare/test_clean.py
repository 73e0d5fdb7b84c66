"""The clean stage: each drop rule on its own, and kept text stays byte-exact."""

from datetime import datetime, timedelta

from talkalike.message import Message
from talkalike.prepare.clean import CleanConfig, clean, is_link_only, looks_like_code

T0 = datetime(2025, 3, 1, 12, 0)


def msg(text: str, sender: str | None = "Noa", kind: str = "text", minute: int = 0) -> Message:
    return Message(T0 + timedelta(minutes=minute), sender, text, kind)


def test_media_placeholders_are_dropped_and_counted():
    kept, dropped = clean([msg("<Media omitted>", kind="media"), msg("hi")])
    assert [m.text for m in kept] == ["hi"]
    assert dropped["media"] == 1


def test_deleted_messages_are_dropped_and_counted():
    kept, dropped = clean([msg("This message was deleted", kind="deleted"), msg("hi")])
    assert [m.text for m in kept] == ["hi"]
    assert dropped["deleted"] == 1


def test_system_events_are_dropped_and_counted():
    kept, dropped = clean([msg("Messages and calls are end-to-end encrypted.", sender=None, kind="system"), msg("hi")])
    assert [m.text for m in kept] == ["hi"]
    assert dropped["system"] == 1


def test_a_message_that_is_only_a_link_is_dropped():
    kept, dropped = clean([msg("https://youtu.be/dQ7xLmT8pQa"), msg("  www.example.com/a?b=1  "), msg("ok")])
    assert [m.text for m in kept] == ["ok"]
    assert dropped["link_only"] == 2


def test_a_link_inside_text_becomes_a_placeholder_and_the_rest_is_unchanged():
    result = clean([msg("look at this https://www.instagram.com/p/C8kLmQx4Np7/ חחח 😂")])
    assert [m.text for m in result.messages] == ["look at this [LINK] חחח 😂"]
    assert result.links_replaced == 1


def test_sentence_punctuation_after_a_link_stays_outside_the_placeholder():
    kept, _ = clean([msg("The menu is here: https://cafe.example/menu. See you!")])
    assert kept[0].text == "The menu is here: [LINK]. See you!"


def test_links_are_kept_as_written_when_the_placeholder_is_switched_off():
    text = "look https://x.example/a"
    kept, _ = clean([msg(text)], CleanConfig(link_placeholder=None))
    assert kept[0].text == text


def test_pasted_code_is_dropped():
    code = "def total(items):\n    s = 0\n    for i in items:\n        s += i\n    return s"
    js = "function f(x) {\n  const y = x * 2;\n  return y;\n}"
    kept, dropped = clean([msg(code), msg(js), msg("```\nls -la\n```"), msg("haha")])
    assert [m.text for m in kept] == ["haha"]
    assert dropped["code"] == 3


def test_multi_line_lists_and_chatty_messages_are_not_code():
    packing = "Things we should bring:\n- sleeping bags\n- the small gas stove\n- six litres of water"
    burst = "ok\nso\nhear me out\nwe get a second cat 🙈"
    assert not looks_like_code("Shopping:\n  milk\n  eggs\n  bread")
    assert not looks_like_code(packing)
    assert not looks_like_code(burst)
    kept, dropped = clean([msg(packing, sender="Daniel"), msg(burst)])
    assert [m.text for m in kept] == [packing, burst]
    assert not dropped


def test_a_paste_far_longer_than_the_senders_usual_messages_is_dropped():
    usual = [msg("short one 😂", minute=i) for i in range(20)]
    paste = msg("Lorem ipsum dolor sit amet. " * 30, minute=30)  # 840 chars > max(500, 10 x 12)
    kept, dropped = clean([*usual, paste])
    assert paste not in kept and len(kept) == 20
    assert dropped["long_paste"] == 1


def test_a_long_message_from_someone_who_always_writes_long_ones_is_kept():
    story = "I went to the market and then to the beach, and it was lovely. " * 10  # 640 chars
    daniel = [msg(story, sender="Daniel", minute=i) for i in range(5)]
    kept, dropped = clean(daniel)
    assert len(kept) == 5 and not dropped


def test_empty_messages_are_dropped():
    kept, dropped = clean([msg("   "), msg("x")])
    assert [m.text for m in kept] == ["x"]
    assert dropped["empty"] == 1


def test_kept_messages_are_byte_exact_with_emoji_hebrew_laughter_and_spelling():
    texts = ["חחחחח אני מתה 😂😂", "hahahaa nooo", "sooo tired...", "Ok. Fine!!", "👩‍👩‍👧 ❤️‍🔥", "ממש\nכן", "i wnt 2 go"]
    kept, dropped = clean([msg(t, minute=i) for i, t in enumerate(texts)])
    assert [m.text.encode() for m in kept] == [t.encode() for t in texts]
    assert not dropped


def test_clean_result_keeps_message_order_and_fields():
    messages = [msg("a", minute=2), msg("<Media omitted>", kind="media", minute=1), msg("b", sender="Daniel", minute=0)]
    kept, _ = clean(messages)
    assert kept == [messages[0], messages[2]]


def test_link_only_detection_needs_a_link():
    assert is_link_only("https://a.example/x https://b.example")
    assert not is_link_only("see https://a.example/x")
    assert not is_link_only("no links here")
