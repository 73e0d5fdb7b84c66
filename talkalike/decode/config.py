"""Sampling settings: the original's defaults, a run's generation.json over them and CLI flags over both.

    config = with_overrides(load_generation_config(run_dir), temperature=0.3)
"""

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from talkalike.errors import TalkalikeError
from talkalike.files import write_json

GENERATION_FILE = "generation.json"


@dataclass(frozen=True)
class GenerationConfig:
    """Sampling settings; a run's generation.json overrides these defaults and CLI flags override both."""

    temperature: float = 0.5  # the original's chat script sampled at 0.5; 0 means greedy
    repetition_penalty: float = 1.025  # the original's value: just enough to stop "haha haha haha" loops
    top_p: float = 1.0  # the original used no nucleus cut-off
    max_new_tokens: int = 200  # the original's cap; a WhatsApp turn is far shorter
    # The dataset's window (`talkalike dataset --max-tokens`): the model never saw a longer history in training,
    # and a shorter prompt keeps CPU prefill fast. The oldest turns are dropped to fit.
    max_context_tokens: int = 1024
    seed: int | None = None  # fixed for reproducible samples (evaluation, tests); None draws fresh randomness
    # Past exchanges recalled into the prompt (talkalike.memory), as in training; 0 turns memory off. Three fit a
    # chat prompt's budget and cover a question's topic without crowding out the conversation itself.
    memories: int = 3
    contact: str | None = None  # whom the persona is talking to (`--as NAME`); None: the run's most frequent contact
    # Staying in character, from the persona's own statistics: a small model loops ("im so excited" twice in one
    # turn) and runs on for more messages than the person ever sends.
    no_repeat_ngram: int = 3  # no run of this many tokens twice inside the reply's messages; 0 = off
    max_messages: int | None = None  # messages per turn at most; None: the persona's 90th percentile; 0 = no cap
    # Only tokens the persona has used (their replies in memory) or that the prompt holds: no whole tokens of the
    # base model's web text. Off by default: on the sample it brought the style distance from 0.30 to 0.25 and
    # messages closer to the persona's length, but doubled 3-word repeats (7% -> 15%) and cut Hebrew messages
    # (22% -> 19%), with the AUC unchanged (BENCHMARKS.md, "Following the conversation").
    own_words: bool = False
    # No emoji the persona has never written (their replies in memory): people keep to a few of their own, and a
    # small model sends its web text's favourites. On the group sample Lucía's 24 emoji messages use five emoji, 😂
    # once; 55% of her twin's emoji messages held others (🤣, 😁, 💪🏼), and it sent an emoji in 8.4% of its messages
    # against her 4.5% (the base 2.1%). A persona who never sends an emoji gets a twin that sends none.
    own_emoji: bool = True
    # Each message opens in the persona's other script (Hebrew, Cyrillic, ...) as often as theirs do after a message
    # like the one answered (decode/language.py): a small model drifts toward its majority language. On the sample's
    # 2-epoch twin: Hebrew messages 21% -> 25% (Noa 29%), real-vs-generated AUC 0.81 -> 0.77 (BENCHMARKS.md,
    # "Language steering"). A persona who writes one script is not steered.
    steer_language: bool = True
    # The tokens that write an emoji, and those that write a laugh, are drawn with their temperature-1 odds, where the
    # trained model's odds are the persona's: below 1 the draw sharpens toward plain text and the likeliest habit.
    # On the sample's twin at 0.5, messages with an emoji 20% -> 32-35% (Noa 38%), with laughter 14% -> 24% (Noa
    # 27%) (BENCHMARKS.md, "Habits at their temperature-1 rate"; decode/language.py).
    keep_habits: bool = True
    # With keep_habits, each habit class's mass is then multiplied by its scale at every sampled token: the trained
    # model's own odds can still miss the persona's rate (Noa's twin put an emoji in 31% of its messages at
    # temperature 1 against her 38.5%). `talkalike train` measures the twin on its own training turns and writes
    # the scales that bring each rate to the persona's (evaluate/calibrate.py); 1.0 leaves the class as it is.
    emoji_scale: float = 1.0
    laughter_scale: float = 1.0
    # The first token of each message after the turn's first is drawn at this temperature (None: the reply's own).
    # A message's first word is where a persona's habits show most ("ok", "wait", "חחחח", "כן"), and a temperature
    # under 1 sharpens it toward the likeliest one: at 0.5 the sample's twin opened 20% of its later messages with
    # "ok" and 12% with "the", Noa 8% and 3%. The turn's first message answers the message in front of it, so it
    # opens at `temperature`: drawn at 1 too, the twin's sampled answers to the facts probe held the fact 34% of the
    # time instead of 49% (BENCHMARKS.md, "A message's first word at temperature 1").
    opener_temperature: float | None = 1.0


# Each habit class (decode/language.habit_token_ids) and the field holding its calibrated mass scale
HABIT_SCALES = {"emoji": "emoji_scale", "laughter": "laughter_scale"}


def _read(run_dir: Path | None) -> dict:
    """generation.json's content ({} when there is none)."""
    if run_dir is None or not (Path(run_dir) / GENERATION_FILE).is_file():
        return {}
    path = Path(run_dir) / GENERATION_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise TalkalikeError(f"{path} is not valid JSON ({error}); fix it or delete it to use the defaults") from None
    if not isinstance(data, dict):
        raise TalkalikeError(f"{path} holds no settings object; fix it or delete it to use the defaults")
    return data


def load_generation_config(run_dir: Path | None) -> GenerationConfig:
    """The run's defaults (generation.json, written by `train`'s habit calibration and `tune-generation`), else the
    original's."""
    data = _read(run_dir)
    # Only the sampling fields are settings; anything else in the file (the tuning table, scores) is a record.
    names = {f.name for f in dataclasses.fields(GenerationConfig)}
    config = GenerationConfig(**{key: value for key, value in data.items() if key in names})
    for name in HABIT_SCALES.values():
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise TalkalikeError(f"{Path(run_dir) / GENERATION_FILE}: {name} must be a number above 0, not {value!r}")
    return config


def save_generation_config(run_dir: Path, config: GenerationConfig, extra: dict | None = None) -> Path:
    """Write the run's sampling defaults atomically; `extra` (e.g. the tuning table) is stored beside them, and the
    records already there (the habit calibration's, an earlier tuning's) stay unless `extra` replaces them."""
    names = {f.name for f in dataclasses.fields(GenerationConfig)}
    kept = {key: value for key, value in _read(run_dir).items() if key not in names}
    return write_json(Path(run_dir) / GENERATION_FILE, dataclasses.asdict(config) | kept | (extra or {}))


def with_overrides(config: GenerationConfig, **overrides: Any) -> GenerationConfig:
    """`config` with every override that is not None (CLI flags left unset keep the run's value)."""
    return dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
