"""How often the twin sends an emoji or a laugh, calibrated on the persona's own training turns.

The sampler draws the tokens that write an emoji, and those that write a laugh, with the trained model's
temperature-1 odds (GenerationConfig.keep_habits), where a model's odds are its training data's. A small model after
two passes is still not there: answering 128 of its own training turns, Noa's twin put an emoji in 30% of its
messages and a laugh in letters in 13%, where Noa's training replies have 41% and 22%. So after training, the twin
answers some of its own training turns as chat answers (its memory recalls only conversations from before the one
answered, as in training), and each habit's share of the twin's messages is set against the persona's share over
every training reply. Multiplying a class's mass at every token by c takes a message's chance to hold it from r to
about 1 - (1 - r)^c, so the class's scale is multiplied by c = log(1 - persona) / log(1 - twin), within
[1/MAX_SCALE, MAX_SCALE]. A gap within two standard errors of the two shares changes nothing: Lucía's 790 training
messages hold 27 with an emoji (3.4%), her twin's 246 held 14 (5.7%), while her held-out messages hold 4.5-5%;
scaled to 3.4%, her twin sent 2% on held-out turns. The scales go into the run's generation.json (emoji_scale,
laughter_scale), which chat, serve, the API and eval read; calibrating again starts from them. Held-out
conversations are never used: eval measures the result on those.

    record = calibrate_run(run_dir, home)    # `talkalike train` runs it last (--no-calibrate skips it)
"""

import dataclasses
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

from talkalike.decode.config import HABIT_SCALES
from talkalike.files import read_jsonl
from talkalike.memory import RECALL_LIMIT
from talkalike.message import EMOJI_RE, LAUGHTER
from talkalike.template import split_bubbles

TURNS = 128  # training turns answered: about 300 messages, a habit's share to within ~3 points
MAX_SCALE = 4.0  # a nudge toward the persona's rate, never a rewrite of the model's odds
RECORD = "habit calibration"  # its key in generation.json
# A message holds the habit of each token class (decode/language.habit_token_ids): an emoji, or a laugh in letters
# ("haha", "lol", "חחח"). Eval's laughter share also counts 😂, which the emoji scale moves.
WORD_LAUGHS = [pattern for name, pattern in LAUGHTER.items() if not EMOJI_RE.search(name)]
HABIT_TESTS = {
    "emoji": lambda message: bool(EMOJI_RE.search(message)),
    "laughter": lambda message: any(pattern.search(message) for pattern in WORD_LAUGHS),
}


def share(replies: list[list[str]], habit: str) -> tuple[float, int]:
    """(the share of the replies' messages that hold `habit`, the number of messages)."""
    messages = [m for reply in replies for m in reply]
    return (sum(map(HABIT_TESTS[habit], messages)) / len(messages) if messages else 0.0), len(messages)


def correction(twin: float, persona: float, twin_messages: int, persona_messages: int) -> float:
    """The factor on a habit's mass that takes the twin's share of messages holding it to the persona's: 1 when the
    gap is within two standard errors of the difference of the two shares (sampling noise, or a persona with too
    few messages to say)."""
    def smoothed(p: float, n: int) -> float:  # a share of 0 still has a noise and a finite factor
        return (p * n + 0.5) / (n + 1)

    ours, theirs = smoothed(twin, twin_messages), smoothed(persona, persona_messages)
    noise = math.sqrt(ours * (1 - ours) / max(twin_messages, 1) + theirs * (1 - theirs) / max(persona_messages, 1))
    if abs(twin - persona) <= 2 * noise:
        return 1.0
    target = min(max(persona, 1e-3), 0.999)
    return math.log1p(-target) / math.log1p(-ours)


def new_scales(generated: list[list[str]], persona: list[list[str]], current: dict[str, float]) -> dict:
    """Each habit's measured shares and its new scale (the current one times its correction, within bounds)."""
    found = {}
    for habit, old in current.items():
        twin, messages = share(generated, habit)
        target, persona_messages = share(persona, habit)
        scale = min(max(old * correction(twin, target, messages, persona_messages), 1 / MAX_SCALE), MAX_SCALE)
        found[habit] = {"twin": round(twin, 4), "persona": round(target, 4), "scale before": old,
                        "scale": round(scale, 4)}
    return found


def training_turns(rows: list[dict], limit: int = TURNS) -> list[list[dict]]:
    """The histories of up to `limit` persona turns spread over the training rows; each marks its row, so that
    recall keeps to earlier conversations."""
    from talkalike.evaluate.evaluate import held_out_turns

    histories = []
    for turn in held_out_turns(rows, limit):
        row = rows[turn.row]
        history = [dict(m) for m in turn.context]
        history[-1][RECALL_LIMIT] = {"before": row.get("start") or None, "besides": row.get("id") or None}
        histories.append(history)
    return histories


def calibrate_run(run_dir: Path, home: Path, turns: int = TURNS,
                  generate: Callable[[list[list[dict]], object], list[list[str]]] | None = None) -> dict | None:
    """Answer up to `turns` training turns with the run's own settings, write the habit scales into its
    generation.json and return the record written (None when habits are not kept: nothing to calibrate).
    `generate(histories, config)` stands in for the twin in tests."""
    from talkalike.decode.config import load_generation_config, save_generation_config
    from talkalike.evaluate.evaluate import EvalConfig, dataset_dir
    from talkalike.run import Run

    run = Run.open(run_dir)
    config = load_generation_config(run.dir)
    if not config.keep_habits:
        return None
    rows = read_jsonl(dataset_dir(run) / "train.jsonl")
    persona = [split_bubbles(m["content"]) for row in rows for m in row["messages"] if m["role"] == "assistant"]
    histories = training_turns(rows, turns)
    if not histories or not persona:
        return None
    # eval's reply settings (a short history window, its reply length and seed), so the scales are measured as
    # eval measures the rates
    defaults = EvalConfig()
    sampling = dataclasses.replace(config, max_new_tokens=defaults.max_new_tokens,
                                   max_context_tokens=defaults.max_context_tokens, seed=defaults.seed)
    started = time.perf_counter()
    generated = (generate or _twin_generate(run.dir, home))(histories, sampling)
    current = {habit: getattr(config, field) for habit, field in HABIT_SCALES.items()}
    found = new_scales(generated, persona, current)
    record = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "training turns": len(histories),
              "messages": sum(map(len, generated)), "seconds": round(time.perf_counter() - started, 1), **found}
    scaled = dataclasses.replace(config, **{HABIT_SCALES[habit]: v["scale"] for habit, v in found.items()})
    save_generation_config(run.dir, scaled, extra={RECORD: record})
    return record


def _twin_generate(run_dir: Path, home: Path):
    """The run's twin answering histories as eval does (continuous batching, the adapter merged on a CPU)."""

    def generate(histories: list[list[dict]], config) -> list[list[str]]:
        import torch
        from tqdm import tqdm

        from talkalike.decode.batch import Threads, decode_many
        from talkalike.decode.twin import Twin
        from talkalike.evaluate.evaluate import EvalConfig, merged_adapter, prepare_for_eval

        twin = Twin.from_run(run_dir, home)
        settings = EvalConfig()
        prepare_for_eval(twin, settings)
        threads = Threads(torch.get_num_threads())
        threads.calibrate(twin)
        with merged_adapter(twin, True), tqdm(total=len(histories), desc="calibrating habits", unit="turn",
                                              file=sys.stderr) as bar:
            return decode_many(twin, histories, config, batch_size=settings.batch_size, progress=bar.update,
                               threads=threads)

    return generate


def summary(record: dict) -> str:
    """One line for the console: each habit's shares and scale."""
    parts = [f"{habit} {v['twin']:.0%} vs {v['persona']:.0%} -> scale {v['scale']:.2f}"
             for habit, v in record.items() if habit in HABIT_SCALES]
    return f"habits calibrated on {record['training turns']} training turns: " + ", ".join(parts)
