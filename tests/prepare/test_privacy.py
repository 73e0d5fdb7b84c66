"""The privacy pass: each kind of personal data, consistency of placeholders, and where the mapping lives."""

import json
import re
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
