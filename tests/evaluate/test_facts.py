"""The facts probe: reading a facts file, matching answers in any case and in Hebrew, and counting recalled facts
with fake generate functions (no model)."""

import json
from pathlib import Path

import pytest

from talkalike.errors import TalkalikeError
from talkalike.evaluate import facts
from talkalike.evaluate.facts import Fact, contains_answer, probe, read_facts

FIXTURE = Path(__file__).parents[1] / "fixtures" / "facts" / "noa.facts.jsonl"
CAT = Fact("what's your cat called again?", ("Pita",), "pet")
HOME = Fact("where do you live these days?", ("Florentin", "פלורנטין"), "home")


def _answering(replies_by_question: dict[str, list[str]]):
    """A fake generate function: for each question, its listed replies in order (greedy first), one per call."""
    def generate(histories, temperatures):
        seen: dict[str, int] = {}
        out = []
        for history in histories:
            question = history[-1]["content"]
            k = seen.get(question, 0)
            seen[question] = k + 1
            out.append([replies_by_question[question][k]])
        return out

    return generate


def test_the_fixture_file_reads_as_three_facts_with_their_answers():
    read = read_facts(FIXTURE)
    assert [f.topic for f in read] == ["pet", "home", "job"]
    assert read[1].answers == ("Florentin", "פלורנטין")


@pytest.mark.parametrize("line, said", [
    ("{not json", "not JSON"),
    ('["a list"]', "not a JSON object"),
    ('{"answers": ["Pita"]}', '"question"'),
    ('{"question": "cat?", "answers": []}', '"answers"'),
    ('{"question": "cat?", "answers": "Pita"}', '"answers"'),
    ('{"question": "cat?", "answers": ["Pita", ""]}', '"answers"'),
])
def test_a_bad_line_is_one_clear_error_naming_the_line(tmp_path, line, said):
    path = tmp_path / "facts.jsonl"
    good = json.dumps({"question": CAT.question, "answers": ["Pita"]})
    path.write_text(good + "\n\n" + line + "\n", encoding="utf-8")
    with pytest.raises(TalkalikeError) as error:
        read_facts(path)
    assert f"{path}:3" in str(error.value) and said in str(error.value)


def test_an_empty_or_missing_facts_file_is_an_error(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(TalkalikeError, match="no facts"):
        read_facts(tmp_path / "empty.jsonl")
    with pytest.raises(TalkalikeError, match="no facts file"):
        read_facts(tmp_path / "missing.jsonl")


def test_answers_match_in_any_case_and_width_but_only_as_whole_words_outside_hebrew():
    assert contains_answer("PITA is asleep on my keyboard again", "Pita")
    assert contains_answer("pita!!", "Pita")
    assert contains_answer("ｐｉｔａ", "Pita")  # full-width letters, folded by NFKC
    assert not contains_answer("a pitafalafel place", "Pita")
    assert not contains_answer("what a variety", "Ari")
    assert not contains_answer("no idea", "Pita")


def test_a_hebrew_answer_counts_inside_a_hebrew_sentence_even_with_a_prefix_glued_on():
    assert contains_answer("אני גרה בפלורנטין כבר שנתיים", "פלורנטין")
    assert contains_answer("מעצבת גרפית, למה?", "מעצבת")
    assert not contains_answer("גרה ביפו", "פלורנטין")


def test_a_reply_containing_the_answer_in_another_case_counts_as_recalled():
    result = probe(_answering({CAT.question: ["its PITA lol", "x", "y", "z"],
                               HOME.question: ["dunno", "haha", "why", "ok"]}), [CAT, HOME])
    assert result["facts"] == 2 and result["recalled"] == 0.5 and result["greedy recalled"] == 0.5
    assert [r["hit"] for r in result["results"]] == [True, False]
    assert result["results"][0]["replies"][0] == "its PITA lol"
    low, high = result["interval"]
    assert low < 0.5 < high


def test_a_fact_said_only_in_a_sampled_reply_counts_but_not_for_the_greedy_rate():
    result = probe(_answering({CAT.question: ["idk", "hmm", "pita obviously", "meh"]}), [CAT])
    assert result["recalled"] == 1.0 and result["greedy recalled"] == 0.0
    assert result["results"][0]["greedy hit"] is False


def test_the_first_reply_of_each_question_is_greedy_and_the_rest_sampled():
    asked = []

    def generate(histories, temperatures):
        asked.extend(zip([h[-1]["content"] for h in histories], temperatures, strict=True))
        return [["ok"] for _ in histories]

    probe(generate, [CAT, HOME], samples=3, temperature=0.7)
    assert asked == [(CAT.question, 0.0), (CAT.question, 0.7), (CAT.question, 0.7),
                     (HOME.question, 0.0), (HOME.question, 0.7), (HOME.question, 0.7)]


def test_a_model_that_echoes_the_question_recalls_nothing_unless_the_question_holds_the_answer():
    def echo(histories, temperatures):
        return [[history[-1]["content"]] for history in histories]

    assert probe(echo, [CAT, HOME])["recalled"] == 0.0
    leaky = Fact("is your cat still called Pita?", ("Pita",), "pet")
    assert probe(echo, [CAT, leaky])["recalled"] == 0.5


def test_eval_uses_the_given_file_else_the_dataset_s_facts_jsonl(tmp_path):
    assert facts.facts_for_run(None, tmp_path) is None
    facts.write_facts(tmp_path / facts.FACTS_FILE, [CAT])
    assert facts.facts_for_run(None, tmp_path) == tmp_path / "facts.jsonl"
    assert read_facts(tmp_path / "facts.jsonl") == [CAT]
    assert facts.facts_for_run(str(FIXTURE), tmp_path) == FIXTURE


def test_dataset_copies_a_validated_facts_file_and_refuses_a_bad_one_before_building(tmp_path, capsys):
    from talkalike.cli import main

    export = tmp_path / "WhatsApp Chat with Noa.txt"
    lines = [f"{day:02d}/01/2025, 10:0{k} - {who}: {text}" for day in range(1, 9)
             for k, (who, text) in enumerate([("Daniel", "how is Pita?"), ("Noa", "pita is great haha"),
                                              ("Daniel", "nice"), ("Noa", "yes")])]
    export.write_text("\n".join(lines) + "\n", encoding="utf-8")
    home = tmp_path / "home"
    assert main(["--home", str(home), "import", str(export)]) == 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "cat?"}\n', encoding="utf-8")
    out = tmp_path / "ds"
    assert main(["--home", str(home), "dataset", "--me", "Noa", "--out", str(out), "--facts", str(bad)]) == 2
    assert f"{bad}:1" in capsys.readouterr().err and not out.exists()
    assert main(["--home", str(home), "dataset", "--me", "Noa", "--out", str(out), "--facts", str(FIXTURE)]) == 0
    assert read_facts(out / "facts.jsonl") == read_facts(FIXTURE)
