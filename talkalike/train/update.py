"""`talkalike update RUN FILE...`: catch a twin up with later exports without starting over.

    talkalike update noa 'WhatsApp Chat with Maya.zip'      # a month later, the new export of the same chat

1. The files are imported as `talkalike import` imports them (a later export adds only what is new).
2. The dataset is rebuilt with the settings the run's dataset recorded in its dataset.json, into a new folder.
3. The run's own adapter (not a fresh LoRA) trains on the conversations it never trained on, with as many of the old
   ones replayed beside them (REPLAY_SHARE), into runs/<name>@v<N>.
4. The old and the new adapter are evaluated on the same newest held-out turns. The new one is kept only if no
   fidelity measure dropped beyond its noise (dropped_measures); the kept version carries the run's name and the
   other stays beside it as runs/<name>@v<N>, so `talkalike runs` lists both with their scores.
"""

import argparse
import json
import math
import os
import random
import shutil
from dataclasses import fields
from datetime import datetime
from pathlib import Path

from talkalike import console
from talkalike.errors import TalkalikeError
from talkalike.files import read_jsonl, say, write_json, write_jsonl
from talkalike.run import Run

# Replayed old conversations per new one, at most all of them. Continued training on the new month alone drifts the
# adapter toward that month (catastrophic forgetting); replaying as many old conversations as new ones gives each
# step half old, half new, so the new month weighs as much as the whole replayed past and no more.
REPLAY_SHARE = 1.0
UPDATE_FILE = "update.jsonl"  # in the new dataset folder: the rows the update trains on, new and replayed
EVAL_FILE = "eval.json"  # as evaluate.py names it (not imported: that module pulls in the model code)
VERSION_MARK = "@v"  # runs/<name>@v<N> holds version N of run <name> that does not carry the name now
Z = 2.0  # a drop counts beyond noise past two standard errors of the difference (about 95%)
PERPLEXITY_TOLERANCE = 0.02  # see dropped_measures
MIN_HELD_OUT = 4  # held-out persona turns `talkalike eval` needs (evaluate_run)


def family(name: str) -> str:
    """The run a version belongs to: `noa@v2` -> `noa`."""
    head, mark, tail = name.rpartition(VERSION_MARK)
    return head if mark and tail.isdigit() else name


def version_of(run: Run) -> int:
    """The run's version: 1 until an update made another."""
    return int(run.info.get("version") or 1)


def dataset_config(dataset_dir: Path):
    """The DatasetConfig a dataset folder was built with, from its dataset.json."""
    from talkalike.prepare.dataset import DatasetConfig

    path = dataset_dir / "dataset.json"
    if not path.is_file():
        raise TalkalikeError(f"the run's dataset folder {dataset_dir} has no dataset.json, so its settings are "
                             "unknown; restore it there, or build a dataset and train a new run.")
    recorded = json.loads(path.read_text(encoding="utf-8"))
    return DatasetConfig(**{f.name: recorded[f.name] for f in fields(DatasetConfig) if f.name in recorded})


def split_new(old_rows: list[dict], rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """`rows` parted into those the old run never trained on (new conversations, a conversation that went on,
    conversations that were held out before) and those it did."""
    seen = {json.dumps(r["messages"], ensure_ascii=False) for r in old_rows}
    new = [r for r in rows if json.dumps(r["messages"], ensure_ascii=False) not in seen]
    old = [r for r in rows if json.dumps(r["messages"], ensure_ascii=False) in seen]
    return new, old


def replay_mix(new: list[dict], old: list[dict], seed: int = 0) -> list[dict]:
    """The new rows plus REPLAY_SHARE as many old ones (at most all), drawn evenly over the whole history."""
    count = min(len(old), math.ceil(REPLAY_SHARE * len(new)))
    replayed = random.Random(seed).sample(old, count)
    return replayed + new


# --- the decision -------------------------------------------------------------------------------------------------


def fidelity_scores(result: dict) -> dict:
    """The fidelity measures of an eval.json for the tuned model: value, and how many items it was measured on."""
    scores = {}
    ranking = (result.get("next-reply ranking") or {}).get("tuned")
    if ranking:
        scores["R@1"] = {"value": ranking["r@1"], "n": ranking["n"]}
    auc = (result.get("real vs generated auc") or {}).get("tuned")
    if auc is not None:
        scores["AUC"] = {"value": auc, "n": result["held-out turns"]}
    facts = (result.get("facts") or {}).get("tuned")
    if facts:
        scores["facts"] = {"value": facts["recalled"], "n": facts["facts"]}
    scores["perplexity"] = {"value": result["perplexity"]["tuned"]["perplexity"],
                            "n": result["perplexity"]["tuned"].get("tokens")}
    return scores


def _proportion_se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 0.0) / max(n, 1))


def _auc_se(auc: float, n: int) -> float:
    """Hanley & McNeil's standard error of an AUC over n real and n generated replies."""
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    return math.sqrt(max(auc * (1 - auc) + (n - 1) * (q1 - auc ** 2) + (n - 1) * (q2 - auc ** 2), 0.0)) / max(n, 1)


def dropped_measures(old: dict, new: dict) -> list[str]:
    """The fidelity measures (fidelity_scores of each) on which the new adapter is worse than the old beyond noise.

    - R@1 and facts are proportions: worse when the new one is lower by more than Z standard errors of the
      difference of two proportions over their n items (and by at least one item). Both models answer the same
      items, so treating them as independent overstates the noise a little: a drop must be clear to count.
    - AUC (real vs generated, 0.5 = indistinguishable): worse when it moved away from 0.5 by more than Z standard
      errors of the difference (Hanley & McNeil's standard error of each).
    - Perplexity is computed on the very same tokens, without sampling, so it has no noise to allow for; a rise of
      more than PERPLEXITY_TOLERANCE (2%) counts, which a change in the last digits shown does not reach.
    A measure only one side has (facts added later) is not compared.
    """
    dropped = []
    for name in ("R@1", "facts"):
        if name in old and name in new:
            a, b = old[name], new[name]
            noise = Z * math.hypot(_proportion_se(a["value"], a["n"]), _proportion_se(b["value"], b["n"]))
            noise = max(noise, 1 / max(min(a["n"], b["n"]), 1))
            if b["value"] < a["value"] - noise:
                dropped.append(f"{name} {a['value']:.0%} -> {b['value']:.0%} (noise ±{noise:.0%} over {b['n']})")
    if "AUC" in old and "AUC" in new:
        a, b = old["AUC"], new["AUC"]
        noise = Z * math.hypot(_auc_se(a["value"], a["n"]), _auc_se(b["value"], b["n"]))
        if abs(b["value"] - 0.5) > abs(a["value"] - 0.5) + noise:
            dropped.append(f"AUC {a['value']:.2f} -> {b['value']:.2f} (further from 0.50 by more than the "
                           f"noise ±{noise:.2f})")
    a, b = old["perplexity"]["value"], new["perplexity"]["value"]
    if b > a * (1 + PERPLEXITY_TOLERANCE):
        dropped.append(f"perplexity {a:.2f} -> {b:.2f} (more than {PERPLEXITY_TOLERANCE:.0%} higher)")
    return dropped


# --- the update ---------------------------------------------------------------------------------------------------


def next_version(runs: Path, name: str, current: int) -> int:
    """One above every version of `name` there is: the current one and runs/<name>@v<N> beside it."""
    taken = [current]
    for path in runs.glob(f"{name}{VERSION_MARK}*"):
        tail = path.name[len(name) + len(VERSION_MARK):]
        if tail.isdigit():
            taken.append(int(tail))
    return max(taken) + 1


def _evaluate_previous(candidate: Path, previous_adapter: Path, home: Path, evaluate, config) -> dict:
    """The previous adapter evaluated exactly as the candidate: a scratch copy of the candidate's run folder (same
    held-out turns, memory, tokenizer, dataset) with the previous adapter in place of the new one."""
    scratch = candidate.with_name(f".{candidate.name}.previous-{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(candidate, scratch, ignore=shutil.ignore_patterns("adapter", "ab", "eval.json", "report.html"))
    shutil.copytree(previous_adapter, scratch / "adapter")
    try:
        return evaluate(scratch, home, config)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def update(run: str, files: list[str], home: Path, *, out: str | None = None, chat: list[str] | None = None,
           date_order: str | None = None, epochs: float | None = None, max_steps: int | None = None,
           force: bool = False, eval_config=None, evaluate=None, progress: bool = True) -> dict:
    """Import `files`, rebuild the run's dataset, continue its adapter, keep whichever adapter is better; returns
    what happened (also saved as the new version's run.json "update")."""
    from talkalike.evaluate.evaluate import EvalConfig, evaluate_run, held_out_turns
    from talkalike.home import resolve_run, runs_dir
    from talkalike.prepare.dataset import build_from_store
    from talkalike.store import import_files
    from talkalike.train.trainer import calibrate_habits, train

    evaluate = evaluate or evaluate_run
    eval_config = eval_config or EvalConfig()
    current = Run.open(resolve_run(home, run))
    runs = runs_dir(home).resolve()
    if current.dir.resolve().parent != runs or family(current.name) != current.name:
        raise TalkalikeError(f"{current.dir} is not a current run in {runs}; update the run by its name "
                             f"(`talkalike update {family(current.name)} FILE...`).")
    old_dataset = current.dataset
    if old_dataset is None or not (old_dataset / "train.jsonl").is_file():
        raise TalkalikeError(f"the dataset {current.name} was trained on is not at {old_dataset} (run.json "
                             "'dataset'); update rebuilds it with the same settings, so restore it there.")
    config = dataset_config(old_dataset)

    import_files(argparse.Namespace(files=files, chat=chat, date_order=date_order, home=str(home)))
    stamp = f"{datetime.now():%Y%m%d-%H%M%S}"
    new_dataset = Path(out).expanduser().resolve() if out else home / "datasets" / f"{current.name}-{stamp}"
    if new_dataset.exists():
        raise TalkalikeError(f"{new_dataset} already exists; choose another --out for the rebuilt dataset.")
    say(f"rebuilding the dataset of {current.name} with its settings into {new_dataset}")
    build_from_store(home, config, new_dataset)
    facts = old_dataset / "facts.jsonl"
    if facts.is_file():  # the facts probe reads them from the run's dataset folder
        shutil.copyfile(facts, new_dataset / "facts.jsonl")

    new, old = split_new(read_jsonl(old_dataset / "train.jsonl"), read_jsonl(new_dataset / "train.jsonl"))
    if not new:
        shutil.rmtree(new_dataset)
        raise TalkalikeError(f"the exports add no conversation to train on that {current.name} has not trained on "
                             "(new ones are held out first); nothing was changed. Update again after more chats.")
    held_out = held_out_turns(read_jsonl(new_dataset / "eval.jsonl"), eval_config.limit)
    if len(held_out) < MIN_HELD_OUT:
        raise TalkalikeError(f"the rebuilt dataset {new_dataset} holds out {len(held_out)} persona turns; the old "
                             f"and new adapters need at least {MIN_HELD_OUT} to be compared. Nothing was trained.")
    mix = replay_mix(new, old, seed=0)
    write_jsonl(new_dataset / UPDATE_FILE, mix)
    say(f"training on {len(new)} new conversation samples and {len(mix) - len(new)} replayed old ones "
        f"(as many as new, at most all {len(old)})")

    version = next_version(runs, current.name, version_of(current))
    candidate_name = f"{current.name}{VERSION_MARK}{version}"
    candidate = train(str(new_dataset), home, base=current.base_id, preset=current.info.get("preset"),
                      name=candidate_name, epochs=epochs, max_steps=max_steps,
                      all_turns=bool(current.info.get("all_turns")), force=force, progress=progress,
                      adapter=str(current.adapter_dir.resolve()), train_file=str(new_dataset / UPDATE_FILE))
    calibrate_habits(candidate, home)  # as `train` does: both adapters are then scored with the new scales

    say(f"evaluating the previous and the new adapter on the newest held-out turns of {new_dataset}")
    try:
        previous_result = _evaluate_previous(candidate, current.adapter_dir, home, evaluate, eval_config)
        new_result = evaluate(candidate, home, eval_config)
    except (TalkalikeError, KeyboardInterrupt):
        shutil.rmtree(candidate)  # undecided, it must not pass for a version; the rebuilt dataset stays
        raise
    before, after = fidelity_scores(previous_result), fidelity_scores(new_result)
    dropped = dropped_measures(before, after)
    record = {"previous": current.name, "previous version": version_of(current), "kept": not dropped,
              "dropped": dropped, "held-out turns": new_result.get("held-out turns"), "previous scores": before,
              "new scores": after, "new conversation samples": len(new), "replayed samples": len(mix) - len(new),
              "dataset": str(new_dataset)}
    info = Run.open(candidate).info | {"version": version, "update": record}
    if dropped:
        Run.write(candidate, info)  # stays beside the run as <name>@v<N>, listed with its scores
        record["kept_as"] = current.name
        record["other"] = candidate.name
    else:
        aside = runs / f"{current.name}{VERSION_MARK}{version_of(current)}"
        os.rename(current.dir, aside)
        Run.write(aside, Run.open(aside).info | {"name": aside.name, "version": version_of(current)})
        os.rename(candidate, current.dir)
        Run.write(current.dir, info | {"name": current.name})
        record["kept_as"] = current.name
        record["other"] = aside.name
    _rescore(runs / (record["other"] if not dropped else record["kept_as"]), previous_result)
    return record


def _rescore(folder: Path, result: dict) -> None:
    """Give the previous adapter's folder its scores on the newest held-out turns, so `talkalike runs` shows both
    versions measured alike; the eval.json it had is kept as eval-before-update.json."""
    if (folder / EVAL_FILE).is_file():
        os.replace(folder / EVAL_FILE, folder / "eval-before-update.json")
    write_json(folder / EVAL_FILE, result)


def cmd_update(args) -> int:
    """`talkalike update RUN FILE...`."""
    from talkalike.evaluate.evaluate import EvalConfig
    from talkalike.home import resolve_home

    home = resolve_home(args.home)
    record = update(args.run, args.files, home, out=args.out, chat=args.chat, date_order=args.date_order,
                    epochs=args.epochs, max_steps=args.max_steps, force=args.force,
                    eval_config=EvalConfig(limit=args.limit))
    for name in ("R@1", "AUC", "facts", "perplexity"):
        if name in record["new scores"]:
            before = record["previous scores"].get(name, {}).get("value")
            after = record["new scores"][name]["value"]
            shown = "-" if before is None else f"{before:.3g}"
            print(f"{name}: previous {shown}, new {after:.3g} ({record['held-out turns']} held-out turns)")
    if record["kept"]:
        print(f"kept the new adapter as {record['kept_as']}; the previous one stays as {record['other']}")
    else:
        print(f"kept the previous adapter as {record['kept_as']}: {'; '.join(record['dropped'])}. "
              f"The new one stays as {record['other']}")
    console.done(f"{record['new conversation samples']} new and {record['replayed samples']} replayed samples",
                 f"talkalike runs, or talkalike chat {record['kept_as']}")
    return 0
