"""The privacy pass: each kind of personal data, consistency of placeholders, and where the mapping lives."""

import json
import re
from collections import Counter
from datetime import datetime, timedelta

import pytest

from talkalike.cli import main
from talkalike.home import store_path
from talkalike.message import Message, ParsedExport
from talkalike.prepare.privacy import PrivacyConfig, Pseudonymiser, infer_region, pseudonymise
from talkalike.store import Store

T0 = datetime(2025, 3, 1, 12, 0)


def msg(text: str, sender: str | None = "Noa", minute: int = 0) -> Message:
    return Message(T0 + timedelta(minutes=minute), sender, text)


def digits_of(text: str) -> str:
    return re.sub(r"\D", "", text)


# (region, the same number written two ways); every one is a valid number of its country.
PHONES = [
    ("IL", "050-234-5678", "+972 50-234-5678"),
    ("IL", "054-321-7788", "+972543217788"),
    ("GB", "07911 123456", "+44 7911 123456"),
    ("US", "(415) 555-2671", "+1 415-555-2671"),
    ("DE", "01512 3456789", "+49 1512 3456789"),
    ("FR", "06 12 34 56 78", "+33 6 12 34 56 78"),
]


@pytest.mark.parametrize("region,national,international", PHONES)
def test_a_phone_number_in_national_and_international_format_gets_one_placeholder(region, national, international):
    pseudo = Pseudonymiser(region=region)
    a = pseudo.text(f"call me on {national} tonight")
    b = pseudo.text(f"or {international}!")
    assert a == "call me on [PHONE_1] tonight"
    assert b == "or [PHONE_1]!"
    assert pseudo.counts["PHONE"] == 2


def test_international_numbers_of_several_countries_never_reach_the_output():
    texts = [f"{i}: {intl}" for i, (_, _, intl) in enumerate(PHONES)] + ["my new number btw 050-234-5678 📱"]
    kept, counts = pseudonymise([msg(t, minute=i) for i, t in enumerate(texts)], region="IL")
    out = "\n".join(m.text for m in kept)
    for _, national, intl in PHONES:
        assert intl not in out and national not in out
        assert digits_of(intl)[-7:] not in digits_of(out)
    assert counts["PHONE"] == len(texts)
    # 050-234-5678 and +972 50-234-5678 are one number, so they share the placeholder.
    assert kept[0].text.split(": ")[1] == kept[-1].text.split("btw ")[1].split(" ")[0]


def test_the_region_is_inferred_from_the_chats_own_plus_country_code_numbers():
    messages = [msg("+972 50-234-5678 is mine"), msg("and +972 54-321-7788 is dana"), msg("+44 7911 123456")]
    assert infer_region(messages) == "IL"
    assert infer_region([msg("hi"), msg("no numbers here 123")]) is None
    assert infer_region([msg("hi", sender="\u202a+44 7911 123456\u202c")]) == "GB"


def test_national_numbers_are_found_with_the_inferred_region():
    kept, counts = pseudonymise([msg("+972 50-234-5678"), msg("call 054-321-7788")])
    assert kept[1].text == "call [PHONE_2]"
    assert counts["PHONE"] == 2


def test_a_phone_number_sender_is_pseudonymised_like_the_same_number_in_a_body():
    kept, _ = pseudonymise([msg("hi", sender="+972 50-234-5678"), msg("his number is 050-234-5678", sender="Noa")],
                           region="IL", keep={"Noa"})
    assert kept[0].sender == "[PHONE_1]"
    assert kept[1].text == "his number is [PHONE_1]"
    assert kept[1].sender == "Noa"


def test_email_addresses_are_replaced_consistently():
    pseudo = Pseudonymiser()
    assert pseudo.text("send to noa.levi.design@example.com 🙏") == "send to [EMAIL_1] 🙏"
    assert pseudo.text("NOA.LEVI.DESIGN@EXAMPLE.COM again") == "[EMAIL_1] again"
    assert pseudo.text("dan@example.org") == "[EMAIL_2]"


def test_urls_that_survive_cleaning_are_replaced():
    pseudo = Pseudonymiser()
    assert pseudo.text("here https://cafe.example/menu.") == "here [URL_1]."


def test_cards_are_replaced_by_luhn_or_by_their_grouping_whatever_the_check_digit():
    pseudo = Pseudonymiser(region="IL")
    assert pseudo.text("card 4111 1111 1111 1111 exp 12/27") == "card [CARD_1] exp 12/27"
    assert pseudo.text("card 4111111111111111") == "card [CARD_1]"
    assert pseudo.text("card 4111-1111-1111-1112") == "card [CARD_2]"  # a typo in a card is still a card
    assert pseudo.text("amex 3782 822463 10005 ok") == "amex [CARD_3] ok"
    assert pseudo.counts["CARD"] == 4


def test_ibans_are_replaced_by_checksum_or_by_their_countrys_length():
    pseudo = Pseudonymiser(region="IL")
    assert pseudo.text("IL29 0123 4500 0001 2345 678 thats my iban 🙏") == "[IBAN_1] thats my iban 🙏"
    assert pseudo.text("compact IL290123450000012345678 OK") == "compact [IBAN_1] OK"
    assert pseudo.text("il29 0123 4500 0001 2345 678 in lower case") == "[IBAN_1] in lower case"
    assert pseudo.text("IL28 0123 4500 0001 2345 678") == "[IBAN_2]"  # wrong check digits, an Israeli IBAN's length
    assert pseudo.text("GB82 WEST 1234 5698 7654 32 please") == "[IBAN_3] please"


def test_nine_digits_are_replaced_whatever_their_check_digit_and_a_valid_one_names_the_kind():
    pseudo = Pseudonymiser(region="IL")
    assert pseudo.text("my id is 123456782") == "my id is [ID_1]"
    # recall first: any 9-digit run is replaced, as an ID where a validator knows it, else as a phone number
    assert re.fullmatch(r"order \[(?:PHONE|ID)_\d\] shipped", pseudo.text("order 123456789 shipped"))


@pytest.mark.parametrize("value", ["12345678Z", "390.533.447-05", "36574261809", "RCCMNL83S18D969H",
                                   "2 95 10 99 126 111 93"])
def test_other_national_ids_with_checksums_are_replaced(value):
    pseudo = Pseudonymiser()
    assert pseudo.text(f"id {value} ok") == "id [ID_1] ok"


def test_ordinary_numbers_dates_and_times_are_left_alone():
    pseudo = Pseudonymiser(region="IL")
    text = "on 12/03/2025 at 10:30 we paid 1500 shekels for 2 nights, room 214 😂"
    assert pseudo.text(text) == text
    assert not pseudo.counts


def test_the_mapping_is_persisted_in_the_store_and_reused_across_runs(tmp_path):
    store = Store(tmp_path / "store.db")
    first, _ = pseudonymise([msg("+972 50-234-5678"), msg("a@b.example")], store)
    rows = store.connection.execute("SELECT kind, original, placeholder FROM pii_map ORDER BY kind").fetchall()
    assert rows == [("EMAIL", "a@b.example", "[EMAIL_1]"), ("PHONE", "+972502345678", "[PHONE_1]")]
    store.close()

    store = Store(tmp_path / "store.db")
    again, _ = pseudonymise([msg("new: +44 7911 123456"), msg("old: 050-234-5678")], store, region="IL")
    assert [m.text for m in again] == ["new: [PHONE_2]", "old: [PHONE_1]"]
    store.close()


def test_switched_off_privacy_changes_nothing():
    messages = [msg("+972 50-234-5678")]
    kept, counts = pseudonymise(messages, config=PrivacyConfig(enabled=False))
    assert kept == messages and not counts


def _import(store: Store, chat: str, lines: list[tuple[str, str]]) -> None:
    messages = [Message(T0 + timedelta(minutes=i), s, t) for i, (s, t) in enumerate(lines)]
    store.import_export(ParsedExport(name=chat, source="whatsapp", format="test", messages=messages), chat)


def test_a_chat_without_plus_numbers_takes_its_region_from_the_rest_of_the_store(tmp_path):
    store = Store(tmp_path / "store.db")
    _import(store, "Group", [("\u202a+972 54-321-7788\u202c", "shalom"), ("Noa", "hi")])
    _import(store, "Daniel", [("Noa", "call me 050-234-5678")])
    result = pseudonymise([m for _, m in store.messages(["Daniel"])], store, chat="Daniel")
    assert result.region == "IL"
    assert result.messages[0].text == "call me [PHONE_1]"
    store.close()


def test_scrub_names_replaces_third_parties_but_not_the_persona_or_the_chats_participants(tmp_path):
    store = Store(tmp_path / "store.db")
    _import(store, "Daniel", [("Noa", "maya says hi"), ("Daniel", "Tell Maya Cohen and Noa that I said hello."),
                              ("Noa", "daniel stop")])
    _import(store, "Maya", [("Maya Cohen", "noa!!"), ("Noa", "maya ❤️")])
    messages = [m for chat, m in store.messages(["Daniel"])]
    kept, counts = pseudonymise(messages, store, chat="Daniel", scrub_names=True, keep={"Noa"})
    assert [m.text for m in kept] == ["[NAME_1] says hi", "Tell [NAME_1] and Noa that I said hello.", "daniel stop"]
    assert counts["NAME"] == 2
    in_group = [m for chat, m in store.messages(["Maya"])]
    kept, counts = pseudonymise(in_group, store, chat="Maya", scrub_names=True, keep={"Noa"})
    assert [m.text for m in kept] == ["noa!!", "maya ❤️"] and not counts["NAME"]
    store.close()


def test_names_are_kept_unless_scrubbing_is_asked_for(tmp_path):
    store = Store(tmp_path / "store.db")
    _import(store, "Maya", [("Maya", "hi")])
    kept, _ = pseudonymise([msg("maya says hi")], store, keep={"Noa"})
    assert kept[0].text == "maya says hi"
    store.close()


def test_a_dataset_holds_placeholders_and_never_the_data_or_the_mapping(tmp_path):
    planted = ["050-234-5678", "+44 7911 123456", "noa.levi@example.com", "IL29 0123 4500 0001 2345 678", "123456782"]
    store = Store(store_path(tmp_path))
    lines = []
    for day in range(12):
        lines += [("Daniel", f"Day {day}: how are you doing today?"), ("Noa", f"good {planted[day % 5]} 😂"),
                  ("Daniel", "Great, see you later."), ("Noa", "yalla bye")]
    messages = [Message(T0 + timedelta(days=i // 4, minutes=i % 4), s, t) for i, (s, t) in enumerate(lines)]
    store.import_export(ParsedExport(name="Daniel", source="whatsapp", format="test", messages=messages), "Daniel")
    store.close()
    out = tmp_path / "ds"
    assert main(["--home", str(tmp_path), "dataset", "--me", "Noa", "--out", str(out), "--region", "IL"]) == 0
    # memory.db is SQLite, not text, but it stores its texts as UTF-8: they must hold placeholders too
    written = "".join(p.read_bytes().decode("utf-8", "replace") for p in sorted(out.iterdir()) if p.is_file())
    for value in planted:
        assert value not in written and json.dumps(value)[1:-1] not in written
    assert digits_of("+972502345678") not in digits_of(written) and "+972502345678" not in written
    assert "[PHONE_1]" in written and "[EMAIL_1]" in written and "[IBAN_1]" in written and "[ID_1]" in written
    with Store(store_path(tmp_path)) as store:
        assert store.connection.execute("SELECT count(*) FROM pii_map").fetchone()[0] == 5


def test_extra_names_from_the_config_are_scrubbed_too():
    config = PrivacyConfig(scrub_names=True, names=("Yossi", "Avi Ben-David"))
    kept, counts = pseudonymise([msg("yossi said avi ben-david fixed it, ask Avi")], config=config, keep={"Noa"})
    assert kept[0].text == "[NAME_1] said [NAME_2] fixed it, ask [NAME_2]"
    assert counts["NAME"] == 3


# ---------------------------------------------------------------- issue 14: recall first


@pytest.mark.parametrize("spelt", ["054-123-4567", "054-1234567", "054.123.4567", "054 123 45 67", "+972 54-123-4567",
                                   "0541234567", "054–123–4567", "(054) 123-4567", "00972 54 123 4567"])
def test_a_number_libphonenumber_calls_invalid_is_replaced_in_every_spelling_with_one_placeholder(spelt):
    pseudo = Pseudonymiser(region="IL")
    assert pseudo.text(f"call {spelt} tonight") == "call [PHONE_1] tonight"
    assert pseudo.text("or +972541234567") == "or [PHONE_1]"  # the same number, however it was written


def test_national_numbers_of_a_second_country_are_replaced_whatever_the_inferred_region():
    kept, _ = pseudonymise([msg("+972 50-234-5678 is mine"), msg("the US office: (415) 555-0199", sender="Avi")])
    assert kept[1].text == "the US office: [PHONE_2]"
    kept, _ = pseudonymise([msg("+1 415 555 0132 is my US number"), msg("and 054-765-4321 here", sender="Avi")])
    assert kept[1].text == "and [PHONE_2] here"


def test_every_region_seen_in_the_chat_is_tried_so_a_national_number_keys_like_its_international_form():
    result = pseudonymise([msg("+1 415 555 0132"), msg("+972 50-234-5678", sender="Avi"),
                           msg("+972 52-345-6789"), msg("old one: 050-234-5678", sender="Avi")])
    assert result.regions == ("IL", "US")
    assert result.messages[3].text == "old one: [PHONE_2]"


def test_a_number_or_card_split_across_two_bubbles_of_one_turn_is_found_and_leaves_both():
    kept, counts = pseudonymise([msg("054-765", minute=0), msg("4321", minute=1), msg("ok?", sender="Avi", minute=2)])
    assert [m.text for m in kept] == ["[PHONE_1]", "ok?"]  # the bubble that held only the rest is gone
    kept, counts = pseudonymise([msg("card 4111 1111"), msg("1111 1111 exp 12/27")])
    assert [m.text for m in kept] == ["card [CARD_1]", "exp 12/27"] and counts == Counter({"CARD": 1})
    kept, _ = pseudonymise([msg("my number 052"), msg("555 9876")], region="IL")
    assert [m.text for m in kept] == ["my number [PHONE_1]"]


def test_values_complete_in_their_own_bubbles_are_not_merged_with_the_next_one():
    kept, _ = pseudonymise([msg("0: +972 50-234-5678"), msg("1: +44 7911 123456"), msg("12 people")], region="IL")
    assert [m.text for m in kept] == ["0: [PHONE_1]", "1: [PHONE_2]", "12 people"]


@pytest.mark.parametrize("written,kind", [("דנה@דוגמה.ישראל", "EMAIL"), ("name [at] example [dot] com", "EMAIL"),
                                          ("dana (at) example.co.il", "EMAIL"), ("lucia at gmail dot com", "EMAIL"),
                                          ("il29 0123 4500 0001 2345 678", "IBAN"), ("de89370400440532013000", "IBAN"),
                                          ("X1234567L", "ID"), ("AB 12 34 56 C", "ID"), ("390.533.447-05", "ID"),
                                          ("76.086.428-K", "ID"), ("HEGG560427MVZRRL04", "ID")])
def test_other_forms_are_replaced_with_their_kind(written, kind):
    assert Pseudonymiser().text(f"here: {written} ok") == f"here: [{kind}_1] ok"


def test_spelled_out_and_plain_addresses_share_a_placeholder():
    pseudo = Pseudonymiser()
    assert pseudo.text("name [at] example [dot] com") == pseudo.text("Name@Example.com") == "[EMAIL_1]"


@pytest.mark.parametrize("text", ["I'm at home. Then we go", "on 12/03/2025 at 10:30, 1.250.000 €", "10.30-11.45",
                                  "2019-2023", "20/12/2024 13:40", "12/03/2025 3 people", "1 2 3 4 5 6 7",
                                  "iOS 17.4.1", "₪1,500", "1 200 000 ₪", "LY315 at 14:05", "score 3-2"])
def test_dates_times_prices_counts_and_sentences_with_at_stay(text):
    assert Pseudonymiser(region="IL").text(text) == text


def test_chat_group_and_sender_names_are_scanned_like_text():
    result = pseudonymise([msg("hi", sender="Dana 054-123-4567"), msg("hey", sender="Noa")], keep={"Noa"},
                          title="Vaad Bait 052-555-9876", region="IL")
    assert result.title == "Vaad Bait [PHONE_2]"
    assert result.messages[0].sender == "Dana [PHONE_1]" and result.messages[1].sender == "Noa"


def test_a_region_is_read_in_any_case_and_an_unknown_one_is_a_clear_error():
    from talkalike.errors import TalkalikeError
    from talkalike.prepare.privacy import check_region

    assert check_region("il") == check_region(" IL ") == "IL"
    with pytest.raises(TalkalikeError, match="--region 'XX'"):
        check_region("XX")
    texts = [msg(f"call 05{i}-123-45{i}7 please", minute=i) for i in range(10)] + [msg("or (415) 555-0199")]
    counts = [sum(pseudonymise(texts, region=region).counts.values()) for region in (None, "IL", "il", "US")]
    assert counts == [11, 11, 11, 11]  # the region decides keys, never how many are found


def test_a_bad_region_on_the_command_line_is_one_error_line_and_exit_2(tmp_path, capsys):
    _import_sample(tmp_path)
    assert main(["--home", str(tmp_path), "dataset", "--me", "Noa", "--out", str(tmp_path / "ds"), "--region", "XX"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --region 'XX'")
    assert not (tmp_path / "ds").exists()
    assert main(["--home", str(tmp_path), "dataset", "--me", "Noa", "--out", str(tmp_path / "ds"), "--region", "il"]) == 0
    assert json.loads((tmp_path / "ds" / "dataset.json").read_text())["region"] == "IL"


def _import_sample(home) -> None:
    store = Store(store_path(home))
    lines = [("Daniel", "hi"), ("Noa", "hey 054-123-4567"), ("Daniel", "ok"), ("Noa", "bye")] * 3
    messages = [Message(T0 + timedelta(days=i // 4, minutes=i % 4), s, t) for i, (s, t) in enumerate(lines)]
    store.import_export(ParsedExport(name="Daniel", source="whatsapp", format="test", messages=messages), "Daniel")
    store.close()


def test_mask_replaces_real_looking_data_in_generated_text_and_lets_placeholders_pass():
    from talkalike.prepare.privacy import mask

    assert mask("call [PHONE_2] or 054-123-4567, mail [EMAIL_1] or dana@example.com") == \
        "call [PHONE_2] or [PHONE], mail [EMAIL_1] or [EMAIL]"
    assert mask("see you at 10:30 on 12/03/2025 😂") == "see you at 10:30 on 12/03/2025 😂"


def _events(messages: list[str], chunk: int):
    for text in messages:
        for i in range(0, len(text), chunk):
            yield ("text", text[i:i + chunk])
        yield ("end_message",)


@pytest.mark.parametrize("chunk", [1, 2, 3, 7])
def test_the_masked_stream_shows_no_personal_data_in_any_chunk_and_still_streams(chunk):
    from talkalike.decode.turns import collect_messages
    from talkalike.prepare.privacy import mask_stream

    replies = [["call me on 054-123-4567 tonight, or write to name [at] example [dot] com ok"], ["054-765", "4321", "bye"],
               ["4111 1111", "1111 1111"], ["haha [PHONE_2] 😂 see you at 10:30", "sure"]]
    expected = [["call me on [PHONE] tonight, or write to [EMAIL] ok"], ["[PHONE]", "bye"], ["[CARD]"],
                ["haha [PHONE_2] 😂 see you at 10:30", "sure"]]
    for reply, want in zip(replies, expected, strict=True):
        events = list(mask_stream(_events(reply, chunk)))
        assert collect_messages(events) == want
        shown = "".join(e[1] for e in events if e[0] == "text")
        assert "4567" not in shown and "example" not in shown and "1111" not in shown and "4321" not in shown
    events = list(mask_stream(_events(["a long and ordinary message with nothing in it at all"], 3)))
    assert len([e for e in events if e[0] == "text"]) > 5  # words stream as they come, not at the end


def test_stream_reply_masks_what_the_model_writes(monkeypatch):
    from talkalike.decode import stream

    monkeypatch.setattr(stream, "_stream_reply", lambda *args: _events(["my id is 123456782", "and +44 7911 123456"], 4))
    assert stream.reply(None, []) == ["my id is [ID]", "and [PHONE]"]


def test_end_to_end_no_planted_item_reaches_any_dataset_file(tmp_path):
    planted = ["054-123-4567", "054.123.4567", "+972 54-123-4567", "(415) 555-0199", "4111 1111 1111 1111",
               "דנה@דוגמה.ישראל", "il29 0123 4500 0001 2345 678", "name [at] example [dot] com", "123456782",
               "X1234567L", "390.533.447-05", "052-555-9876", "053-888-7766"]
    split = [("054-765", "4321"), ("4111 1111", "1111 1111")]  # each half alone says too little
    lines = []
    for day in range(12):
        d = f"{5 + day:02d}/01/2025"
        lines += [f"{d}, 10:00 - Dana 053-888-7766: morning all, {planted[day]} is the one",
                  f"{d}, 10:01 - Avi: noted", f"{d}, 10:02 - Noa: ok {planted[(day + 5) % len(planted)]} 😂",
                  f"{d}, 10:03 - Avi: thanks"]
        if day < len(split):
            lines += [f"{d}, 10:04 - Noa: {split[day][0]}", f"{d}, 10:04 - Noa: {split[day][1]}", f"{d}, 10:05 - Avi: ok"]
    export = tmp_path / "WhatsApp Chat with Vaad Bait 052-555-9876.txt"
    export.write_text("\n".join(lines) + "\n", encoding="utf-8")
    home, out = tmp_path / "home", tmp_path / "ds"
    assert main(["--home", str(home), "import", str(export)]) == 0
    assert main(["--home", str(home), "dataset", "--me", "Noa", "--out", str(out), "--eval-share", "0.3",
                 "--region", "il"]) == 0
    files = {name: (out / name).read_bytes().decode("utf-8", "replace")
             for name in ("train.jsonl", "eval.jsonl", "stats.json", "dataset.json", "memory.db")}
    assert json.loads(files["stats.json"])["samples"]["eval"] > 0
    for name, text in files.items():
        digits = digits_of(text)
        for value in planted + ["054-765-4321", "4111 1111 1111 1111"]:
            assert value not in text and json.dumps(value)[1:-1] not in text, (name, value)
            assert len(digits_of(value)) < 7 or digits_of(value)[-7:] not in digits, (name, value)
        assert "Vaad Bait [PHONE_" in text or name == "dataset.json", name  # the group keeps its name, not its number
