"""`talkalike tune-generation RUN`: find the run's sampling settings on held-out conversations, and save the best.

The twin answers the persona's held-out turns (RUN/eval.jsonl) under every setting of a small grid, temperature x
repetition penalty x top-p, all with one seed, and each setting is scored by eval's own fidelity measures (SCORE;
README "Tuning generation" says what each one is). Then, at the best of them, each switch that keeps a reply in
character (CHARACTER_SWITCHES: the persona's own words and emoji, habits, language steering, the no-repeat rule, the
message cap) is flipped in turn and kept only where the score drops. The best becomes the run's defaults in
RUN/generation.json, which chat, serve and eval read; the whole table is printed and kept in that file.

    talkalike tune-generation dana --limit 24 --top-p 1.0   # 9 settings, 24 held-out turns each
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from talkalike.errors import TalkalikeError
from talkalike.files import read_jsonl, say
from talkalike.home import resolve_home, resolve_run

Reply = list[str]  # one persona turn as its messages
# (histories, sampling settings) -> one reply per history; the model in real use, a fake in tests
Generator = Callable[[list[list[dict]], object], list[Reply]]
SCORE = "mean(style distance, style gap, 2 x AUC - 1, 1 - context identification share of real); lower is better"
# The in-character switches of decode/config.py and the values each can take, tried one at a time (in this order)
# after the sampling grid, at its best setting; a value other than the run's own is kept only where the score drops.
CHARACTER_SWITCHES = (
    ("own_words", (False, True)),
    ("own_emoji", (True, False)),
    ("keep_habits", (True, False)),
    ("steer_language", (True, False)),
    ("no_repeat_ngram", (3, 0)),
    ("max_messages", (None, 0)),  # the persona's 90th percentile, or no cap
)
SWITCH_TRIALS = sum(len(values) - 1 for _, values in CHARACTER_SWITCHES)  # settings the switch stage decodes


@dataclass(frozen=True)
class TuneConfig:
    """The grid and the budget of one scan; works with no arguments."""

    temperatures: tuple[float, ...] = (0.5, 0.8, 1.0)  # from the original's hand-picked 0.5 to the model's own spread
    repetition_penalties: tuple[float, ...] = (1.0, 1.025, 1.1)  # none, the original's, a strong one
    top_ps: tuple[float, ...] = (1.0, 0.9)  # the original's (no cut) and a common nucleus
    # Held-out turns per setting, decoded in one batch: fewer than about 24 leave the AUC to chance.
    limit: int | None = 32
    max_new_tokens: int = 48  # as in eval: a chat turn is 5-30 tokens; the cap bounds CPU time
    max_context_tokens: int = 256  # as in eval: recent history decides a reply's style, and prefill cost grows with it
    batch_size: int = 16  # replies decoded together
    seed: int = 0  # one seed for every setting
    characters: bool = True  # then flip each of CHARACTER_SWITCHES at the best sampling setting

    def grid(self) -> list[tuple[float, float, float]]:
        """Every (temperature, repetition_penalty, top_p) combination, in a fixed order."""
        return list(itertools.product(self.temperatures, self.repetition_penalties, self.top_ps))


@dataclass(frozen=True)
class Row:
    """One setting's scores."""

    temperature: float
    repetition_penalty: float
    top_p: float
    style_distance: float
    style_gap: float
    separability: float  # 2 x real-vs-generated AUC - 1, floored at 0
    off_context: float | None  # 1 - context identification share of real; None without a judge
    score: float
    changes: dict = field(default_factory=dict)  # in-character switches set away from the run's own values


def twin_tools(run_dir: Path, home: Path, batch_size: int):
    """(generator, judge) over the run's model: replies with the adapter on through eval's batched decoder
    (talkalike.decode.batch), and eval's context-identification scorer with the adapter off."""
    from talkalike.decode.batch import decode_many
    from talkalike.decode.twin import Twin
    from talkalike.evaluate.evaluate import EvalConfig
    from talkalike.evaluate.fidelity import model_scorer

    twin = Twin.from_run(run_dir, home)

    def generate(histories: list[list[dict]], config) -> list[Reply]:
        return decode_many(twin, histories, config, use_adapter=True, batch_size=batch_size)

    evaluation = EvalConfig()
    return generate, model_scorer(twin, False, evaluation.max_context_tokens, evaluation.rank_tokens)


def _row(setting: tuple[float, float, float], replies: list[Reply], turns: list, judge, real_rate: float | None,
         changes: dict | None = None) -> Row:
    from talkalike.evaluate import fidelity, metrics
    from talkalike.evaluate.evaluate import turn_text

    real = [t.real for t in turns]
    gaps = metrics.style_gaps(real, replies)
    auc = metrics.real_vs_generated_auc([turn_text(r) for r in real], [turn_text(r) for r in replies])
    off = None
    if judge is not None and real_rate:
        rate = fidelity.context_identification(turns, {"twin": replies}, judge)["twin"]["rate"]
        off = max(0.0, 1.0 - rate / real_rate)
    parts = [metrics.style_distance(replies, real), sum(g["relative difference"] for g in gaps) / len(gaps),
             max(0.0, 2 * auc - 1)]
    parts += [] if off is None else [off]
    return Row(*setting, parts[0], parts[1], parts[2], off, sum(parts) / len(parts), dict(changes or {}))


def tune(run_dir: Path, home: Path, config: TuneConfig = TuneConfig(), generate: Generator | None = None,
         judge=None) -> tuple[list[Row], Row, int]:
    """Score every setting of the grid on the held-out turns; returns (rows in grid order, best row, turns used)."""
    from tqdm import tqdm

    from talkalike.decode.config import load_generation_config
    from talkalike.evaluate import fidelity
    from talkalike.evaluate.evaluate import held_out_turns

    eval_path = run_dir / "eval.jsonl"
    if not eval_path.is_file():
        raise TalkalikeError(f"{run_dir.name} has no eval.jsonl (held-out conversations); train it from a dataset "
                             "with an evaluation share (talkalike dataset --eval-share 0.2)")
    turns = held_out_turns(read_jsonl(eval_path), config.limit)
    if len(turns) < 2:
        raise TalkalikeError(f"{eval_path} holds {len(turns)} persona turns that answer someone; tuning needs at "
                             "least 2 (import more chat history or raise --eval-share)")
    if generate is None:
        generate, judge = twin_tools(run_dir, home, config.batch_size)
    real_rate = None
    if judge is not None:
        real_rate = fidelity.context_identification(turns, {"real": [t.real for t in turns]}, judge)["real"]["rate"]
    base = load_generation_config(run_dir)
    histories = [t.context for t in turns]
    rows = []
    for temperature, penalty, top_p in tqdm(config.grid(), desc="settings", unit="setting", file=sys.stderr):
        settings = dataclasses.replace(base, temperature=temperature, repetition_penalty=penalty, top_p=top_p,
                                       max_new_tokens=config.max_new_tokens,
                                       max_context_tokens=config.max_context_tokens, seed=config.seed)
        rows.append(_row((temperature, penalty, top_p), generate(histories, settings), turns, judge, real_rate))
    best = min(rows, key=lambda row: row.score)  # ties keep the earliest setting in grid order
    if config.characters:
        best = _characters(base, best, rows, histories, turns, config, generate, judge, real_rate)
    return rows, best, len(turns)


def _characters(base, best: Row, rows: list[Row], histories: list, turns: list, config: TuneConfig,
                generate: Generator, judge, real_rate: float | None) -> Row:
    """Flip each in-character switch in turn at the best sampling setting, keeping a flip only where the score
    drops; the trials are appended to `rows`, and the best row (its `changes` the switches kept) is returned."""
    from tqdm import tqdm

    sampling = (best.temperature, best.repetition_penalty, best.top_p)
    bar = tqdm(total=SWITCH_TRIALS, desc="in-character switches", unit="setting", file=sys.stderr)
    for name, values in CHARACTER_SWITCHES:
        for value in values:
            if value == getattr(base, name):
                continue
            changes = {**best.changes, name: value}
            settings = dataclasses.replace(base, temperature=sampling[0], repetition_penalty=sampling[1],
                                           top_p=sampling[2], max_new_tokens=config.max_new_tokens,
                                           max_context_tokens=config.max_context_tokens, seed=config.seed, **changes)
            row = _row(sampling, generate(histories, settings), turns, judge, real_rate, changes)
            rows.append(row)
            bar.update()
            if row.score < best.score:
                best = row
    bar.close()
    return best


def format_table(rows: list[Row], best: Row) -> str:
    """The scan as an aligned text table, best first; the chosen setting is starred."""
    lines = [f"  {'temperature':>11} {'rep_penalty':>11} {'top_p':>6} {'style_dist':>10} {'style_gap':>9} "
             f"{'separable':>9} {'off_context':>11} {'score':>7}  changes"]
    for row in sorted(rows, key=lambda r: r.score):
        off = "-" if row.off_context is None else f"{row.off_context:.3f}"
        mark = "*" if row is best else " "
        lines.append(f"{mark} {row.temperature:>11.2f} {row.repetition_penalty:>11.3f} {row.top_p:>6.2f} "
                     f"{row.style_distance:>10.3f} {row.style_gap:>9.3f} {row.separability:>9.3f} {off:>11} "
                     f"{row.score:>7.3f}  {describe(row.changes)}")
    return "\n".join(lines)


def describe(changes: dict) -> str:
    """In-character switches as `name=value` (JSON spelling), or "-" for none."""
    return ", ".join(f"{name}={json.dumps(value)}" for name, value in changes.items()) or "-"


def save_best(run_dir: Path, rows: list[Row], best: Row, config: TuneConfig, turns: int) -> Path:
    """Write the best setting as the run's defaults (generation.json), the scan table beside it."""
    from talkalike.decode.config import load_generation_config, save_generation_config

    chosen = dataclasses.replace(load_generation_config(run_dir), temperature=best.temperature,
                                 repetition_penalty=best.repetition_penalty, top_p=best.top_p, **best.changes)
    record = {"tuning": {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "score": SCORE,
        "held_out_turns": turns,
        "config": dataclasses.asdict(config),
        "table": [dataclasses.asdict(row) for row in rows],
    }}
    return save_generation_config(run_dir, chosen, extra=record)


def cmd_tune_generation(args) -> int:
    """`talkalike tune-generation RUN [--limit N]`: scan, print the table, save the best to RUN/generation.json."""
    home = resolve_home(args.home)
    run_dir = resolve_run(home, args.run)
    chosen = {"limit": args.limit, "temperatures": args.temperature, "repetition_penalties": args.repetition_penalty,
              "top_ps": args.top_p, "characters": False if args.sampling_only else None}
    config = TuneConfig(**{key: tuple(v) if isinstance(v, list) else v for key, v in chosen.items() if v is not None})
    switches = SWITCH_TRIALS if config.characters else 0
    say(f"tuning {run_dir.name}: {len(config.grid())} settings, then {switches} in-character switches, x up to "
        f"{config.limit} held-out turns")
    rows, best, turns = tune(run_dir, home, config)
    path = save_best(run_dir, rows, best, config, turns)
    print(format_table(rows, best))
    print(f"best: temperature {best.temperature}, repetition_penalty {best.repetition_penalty}, top_p {best.top_p}"
          + (f", {describe(best.changes)}" if best.changes else "") + f" (score {best.score:.3f}) -> {path}")
    from talkalike import console

    console.done(f"{len(rows)} settings tried, best score {best.score:.3f}", f"talkalike chat {run_dir.name}")
    return 0
