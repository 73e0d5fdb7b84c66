"""`talkalike runs` lists runs with their scores and disk use; `talkalike rm` deletes one run, and nothing else."""

import io
import json
import os
from pathlib import Path

from talkalike.cli import main


def fake_run(home: Path, name: str, *, persona="Noa", finished="2026-12-01T10:00:00+00:00", eval_json=None,
             size=1000) -> Path:
    """A run folder as train writes it (run.json, adapter/), with `size` bytes of weights and an optional eval.json."""
    folder = home / "runs" / name
    (folder / "adapter").mkdir(parents=True)
    (folder / "adapter" / "adapter_model.safetensors").write_bytes(b"\0" * size)
    info = {"name": name, "base": {"id": "gemma-3-270m", "source": "embedded"}, "finished": finished,
            "dataset_info": {"persona": persona}}
    (folder / "run.json").write_text(json.dumps(info))
    if eval_json is not None:
        (folder / "eval.json").write_text(json.dumps(eval_json))
    return folder


EVAL = {"headline": {"next-reply ranking": {"tuned": 0.57, "base": 0.2}, "facts recalled": {"tuned": 0.59, "base": 0.4},
                     "perplexity": {"tuned": 9.31, "base": 141.0}},
        "real vs generated auc": {"tuned": 0.71, "base": 0.93}}


def test_runs_lists_persona_base_date_scores_and_disk_use_newest_first(home, capsys):
    fake_run(home, "old", persona="Lucía", finished="2026-11-01T10:00:00+00:00")
    fake_run(home, "noa", eval_json=EVAL, size=3_000_000, finished="2026-12-01T10:00:00+00:00")
    assert main(["runs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["run", "persona", "base", "date", "R@1", "AUC", "facts", "ppl", "disk"]
    noa, old = lines[1].split(), lines[2].split()
    assert noa[:3] == ["noa", "Noa", "gemma-3-270m"]
    assert noa[5:9] == ["57%", "0.71", "59%", "9.3"]
    assert float(noa[9]) == 3.01 and noa[10] == "MB"  # 3 MB of weights and the small files' blocks
    assert old[:3] == ["old", "Lucía", "gemma-3-270m"] and old[5:9] == ["-", "-", "-", "-"]


def test_runs_counts_a_hard_linked_file_once(home, capsys):
    folder = fake_run(home, "noa", size=10)
    (folder / "export-gguf").mkdir()
    (folder / "export-gguf" / "model.gguf").write_bytes(b"\1" * 2_000_000)
    (folder / "export-ollama").mkdir()
    os.link(folder / "export-gguf" / "model.gguf", folder / "export-ollama" / "model.gguf")
    assert main(["runs", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert 2_000_000 <= row["bytes"] < 2_100_000


def test_runs_shows_an_interrupted_run_and_says_so_when_there_are_none(home, capsys):
    assert main(["runs"]) == 0
    assert "no runs yet" in capsys.readouterr().err
    partial = home / "runs" / "noa.partial"
    partial.mkdir(parents=True)
    (partial / "resume.json").write_text(json.dumps({"name": "noa", "base": None}))
    assert main(["runs"]) == 0
    assert "(interrupted)" in capsys.readouterr().out


def test_rm_asks_and_keeps_the_run_unless_the_answer_is_yes(home, monkeypatch, capsys):
    folder = fake_run(home, "noa")
    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))
    assert main(["rm", "noa"]) == 1
    assert folder.is_dir()
    assert "delete" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    assert main(["rm", "noa"]) == 0
    assert not folder.exists()
    assert not list((home / "runs").iterdir()), "a renamed leftover stayed behind"


def test_rm_with_yes_deletes_without_asking(home, monkeypatch):
    folder = fake_run(home, "noa")
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["rm", "noa", "--yes"]) == 0
    assert not folder.exists()


def test_rm_refuses_paths_outside_the_runs_folder_and_folders_that_are_not_runs(home, tmp_path, capsys):
    fake_run(home, "noa")
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "run.json").write_text("{}")
    (home / "runs" / "notes").mkdir()
    (home / "runs" / "link").symlink_to(outside)
    for target in (str(outside), "..", ".", "../runs/../..", "notes", "link"):
        assert main(["rm", target, "--yes"]) == 2, target
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
    assert outside.is_dir() and (home / "runs" / "notes").is_dir() and (home / "runs" / "noa").is_dir()
    assert home.is_dir()


def test_rm_of_an_unknown_run_names_the_known_ones(home, capsys):
    fake_run(home, "noa")
    assert main(["rm", "nao", "--yes"]) == 2
    assert "Known runs: noa" in capsys.readouterr().err
