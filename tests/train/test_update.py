"""`talkalike update`: imports a later export, rebuilds the dataset with the run's settings, continues the run's own
adapter with old conversations replayed, keeps the new adapter only when no fidelity measure dropped, and leaves
both versions listed in `talkalike runs`. The evaluator is a fake that scores each adapter as told."""

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from talkalike.cli import main
from talkalike.files import read_jsonl, write_json
from talkalike.train.update import dropped_measures, fidelity_scores, replay_mix, split_new

PERSONA = ["haha ok 😂 see you at the beach", "lol pita the cat", "sure, coming", "חחח יאללה נתראה"]
OTHER = ["hey what's up?", "Hello there, how are you today?", "I think we should meet at the café."]


def export(path: Path, days: int) -> Path:
    """A WhatsApp export of `days` daily conversations of two exchanges each, Maya writing first; a later export
    (more days) starts with the same lines, as a phone's re-export does."""
    start = datetime(2024, 1, 1, 9, 0)
    lines = []
    for day in range(days):
        t = start + timedelta(days=day)
        for turn in range(2):
            lines.append(f"{t:%d/%m/%Y, %H:%M} - Maya: {OTHER[(day + turn) % 3]} {day}")
            t += timedelta(minutes=1)
            lines.append(f"{t:%d/%m/%Y, %H:%M} - Noa: {PERSONA[(day + turn) % 4]}")
            t += timedelta(minutes=1)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def result(r_at_1: float, auc: float, ppl: float, turns: int = 40) -> dict:
    """The parts of an eval.json the decision and `runs` read."""
    return {"held-out turns": turns, "perplexity": {"tuned": {"perplexity": ppl, "tokens": 500}},
            "real vs generated auc": {"tuned": auc}, "next-reply ranking": {"tuned": {"r@1": r_at_1, "n": turns}},
            "headline": {"next-reply ranking": {"tuned": r_at_1}, "perplexity": {"tuned": ppl}}}


class FakeEvaluator:
    """Scores the previous adapter (evaluated in a scratch copy, a dot folder) and the new one as given, writes
    eval.json like the real one, and remembers what it was shown."""

    def __init__(self, previous: dict, new: dict):
        self.previous, self.new, self.seen = previous, new, []

    def __call__(self, run_dir: Path, home: Path, config) -> dict:
        from safetensors.torch import load_file

        weights = load_file(run_dir / "adapter" / "adapter_model.safetensors")
        self.seen.append({"eval": (run_dir / "eval.jsonl").read_text(), "weights": weights,
                          "previous": run_dir.name.startswith(".")})
        answer = self.previous if run_dir.name.startswith(".") else self.new
        write_json(run_dir / "eval.json", answer)
        return answer


@pytest.fixture
def trained(tiny_model_dir, home, tmp_path, capsys):
    """A run `noa` trained on an export of 30 days, its dataset built with settings that are not the defaults."""
    import torch
    from safetensors.torch import load_file, save_file

    from talkalike.train.trainer import train

    assert main(["import", str(export(tmp_path / "WhatsApp Chat with Maya.txt", 30))]) == 0
    dataset = tmp_path / "noa-ds"
    assert main(["dataset", "--me", "Noa", "--out", str(dataset), "--gap-minutes", "30", "--eval-share", "0.25",
                 "--no-contact", "--max-tokens", "512"]) == 0
    train(dataset, home, base=str(tiny_model_dir), name="noa", max_steps=2, force=True, progress=False)
    # Two steps barely move a LoRA from its start (B = 0, A drawn from the seed a fresh LoRA draws again), so the
    # adapter is given weights of its own: an update that started fresh could not end near them.
    weights = home / "runs" / "noa" / "adapter" / "adapter_model.safetensors"
    tensors = load_file(weights)
    generator = torch.Generator().manual_seed(1)
    save_file({k: torch.randn(v.shape, generator=generator) * 0.05 for k, v in tensors.items()}, weights)
    capsys.readouterr()
    return dataset


def update_with(home, tmp_path, evaluator, days=40):
    from talkalike.train.update import update

    (tmp_path / "later").mkdir()
    later = export(tmp_path / "later" / "WhatsApp Chat with Maya.txt", days)
    return update("noa", [str(later)], home, out=str(tmp_path / "noa-ds-2"), max_steps=2, force=True,
                  evaluate=evaluator, progress=False)


def test_update_imports_rebuilds_with_the_same_settings_and_continues_the_old_adapter(trained, home, tmp_path,
                                                                                       capsys):
    import torch
    from safetensors.torch import load_file

    old_weights = load_file(home / "runs" / "noa" / "adapter" / "adapter_model.safetensors")
    evaluator = FakeEvaluator(result(0.5, 0.8, 10.0), result(0.55, 0.75, 9.0))
    record = update_with(home, tmp_path, evaluator)

    assert record["kept"] and record["dropped"] == []
    assert "added 40 new" in capsys.readouterr().out  # the import's own report: 10 new days of 4 messages
    new_ds = tmp_path / "noa-ds-2"
    before, after = (json.loads((d / "dataset.json").read_text()) for d in (trained, new_ds))
    assert after == before and after["gap_minutes"] == 30 and after["eval_share"] == 0.25
    assert not after["contact"] and after["max_tokens"] == 512

    # the update trained on every new row plus as many old ones, all of them rows of the rebuilt train.jsonl
    new_train = read_jsonl(new_ds / "train.jsonl")
    new_rows, old_rows = split_new(read_jsonl(trained / "train.jsonl"), new_train)
    mix = read_jsonl(new_ds / "update.jsonl")
    assert new_rows and len(mix) == len(new_rows) + min(len(new_rows), len(old_rows))
    assert all(row in new_train for row in mix) and all(row in mix for row in new_rows)

    # both adapters were scored on the newest held-out conversations; the previous one was the old weights
    previous, new = evaluator.seen
    assert previous["previous"] and not new["previous"]
    assert previous["eval"] == new["eval"] == (new_ds / "eval.jsonl").read_text()
    assert all(torch.equal(previous["weights"][k], old_weights[k]) for k in old_weights)

    # the kept adapter started from the old one: every tensor moved by training, yet stayed near the old weights
    # (a fresh LoRA starts with B = 0 and A from the seed, nowhere near them)
    kept = load_file(home / "runs" / "noa" / "adapter" / "adapter_model.safetensors")
    assert kept.keys() == old_weights.keys()
    assert all(not torch.equal(kept[k], old_weights[k]) for k in kept)
    assert all((kept[k] - old_weights[k]).norm() < 0.2 * old_weights[k].norm() for k in kept)
    info = json.loads((home / "runs" / "noa" / "run.json").read_text())
    assert info["version"] == 2 and info["started_from"].endswith("/runs/noa/adapter")
    assert info["dataset"] == str(new_ds)
    aside = json.loads((home / "runs" / "noa@v1" / "run.json").read_text())
    assert aside["version"] == 1 and aside["name"] == "noa@v1"

    # `runs` lists both versions, the current one first, each with its scores on the same held-out turns
    assert main(["runs", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["version"], r["kept"]) for r in rows] == [("noa", 2, True), ("noa@v1", 1, True)]
    assert rows[0]["scores"]["r@1"] == 0.55 and rows[1]["scores"]["r@1"] == 0.5


def test_an_update_that_ranks_worse_keeps_the_old_adapter_and_says_which_measure_dropped(trained, home, tmp_path,
                                                                                        capsys):
    old_adapter = (home / "runs" / "noa" / "adapter" / "adapter_model.safetensors").read_bytes()
    evaluator = FakeEvaluator(result(0.6, 0.7, 9.0), result(0.3, 0.7, 9.0))
    record = update_with(home, tmp_path, evaluator)

    assert not record["kept"] and len(record["dropped"]) == 1 and record["dropped"][0].startswith("R@1 60% -> 30%")
    assert (home / "runs" / "noa" / "adapter" / "adapter_model.safetensors").read_bytes() == old_adapter
    assert json.loads((home / "runs" / "noa@v2" / "run.json").read_text())["update"]["kept"] is False
    assert not [p for p in (home / "runs").iterdir() if p.name.startswith(".")], "a scratch folder stayed"
    capsys.readouterr()
    assert main(["runs"]) == 0
    out, err = capsys.readouterr()
    names = [line.split()[0] for line in out.splitlines()[1:]]
    assert names == ["noa", "noa@v2*"]
    assert "not kept because a fidelity measure dropped" in err


def test_the_decision_allows_noise_but_not_a_clear_drop():
    same = fidelity_scores(result(0.5, 0.8, 10.0))
    assert dropped_measures(same, same) == []
    # 40 turns: 50% -> 45% is two turns, well inside the noise; 50% -> 20% is not
    assert dropped_measures(same, fidelity_scores(result(0.45, 0.8, 10.0))) == []
    assert [d.split()[0] for d in dropped_measures(same, fidelity_scores(result(0.2, 0.8, 10.0)))] == ["R@1"]
    # AUC: closer to 0.5 is better even when lower; far from it beyond noise is worse
    assert dropped_measures(same, fidelity_scores(result(0.5, 0.55, 10.0))) == []
    assert [d.split()[0] for d in dropped_measures(fidelity_scores(result(0.5, 0.55, 10.0), ),
                                                   fidelity_scores(result(0.5, 0.99, 10.0)))] == ["AUC"]
    # perplexity: no sampling noise; 1% higher passes, 10% higher does not
    assert dropped_measures(same, fidelity_scores(result(0.5, 0.8, 10.1))) == []
    assert [d.split()[0] for d in dropped_measures(same, fidelity_scores(result(0.5, 0.8, 11.0)))] == ["perplexity"]
    with_facts = result(0.5, 0.8, 10.0) | {"facts": {"tuned": {"recalled": 0.8, "facts": 30}}}
    fewer = result(0.5, 0.8, 10.0) | {"facts": {"tuned": {"recalled": 0.3, "facts": 30}}}
    assert [d.split()[0] for d in dropped_measures(fidelity_scores(with_facts), fidelity_scores(fewer))] == ["facts"]


def test_replay_mixes_as_many_old_rows_as_new_at_most_all():
    old = [{"messages": [{"role": "user", "content": str(i)}]} for i in range(10)]
    new = [{"messages": [{"role": "user", "content": f"new {i}"}]} for i in range(3)]
    assert split_new(old, old[:4] + new) == (new, old[:4])
    mix = replay_mix(new, old)
    assert len(mix) == 6 and all(r in mix for r in new) and sum(r in old for r in mix) == 3
    assert len(replay_mix(new * 5, old)) == 15 + 10


def test_update_of_an_unknown_run_is_one_error_line(home, tmp_path, capsys):
    code = main(["update", "nobody", str(export(tmp_path / "WhatsApp Chat with Maya.txt", 3))])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no run folder at 'nobody'") and err.count("\n") == 1
    assert not (home / "talkalike.db").exists()
