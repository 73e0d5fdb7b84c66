"""The facts probe: does the twin know what the persona knows (where they live, the pet's name, their job)?

A facts file is JSONL, one fact a line, each question phrased as the other person would ask it:

    {"question": "what's your cat called again?", "answers": ["Pita"], "topic": "pet"}

Each question is sent as a one-turn history; the twin answers greedily and a few times sampled, and the fact counts
as recalled when any reply contains any answer. `talkalike eval RUN --facts FILE` runs it tuned vs base, both with the
same recalled memories, and the base again with none (ALONE); without the flag eval uses facts.jsonl in the run's
dataset folder (`talkalike dataset --facts FILE` puts it there).
"""

import json
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from talkalike.errors import TalkalikeError

FACTS_FILE = "facts.jsonl"  # its name inside a dataset folder
ALONE = "base without memory"  # eval's third probe: the base model with no past exchanges recalled into its prompt
SAMPLES = 4  # replies per question: one greedy, the rest sampled (a fact the model holds at lower rank still shows)
HEBREW_RE = re.compile("[\u0590-\u05FF]")
FORMAT = 'write one fact a line as {"question": "...", "answers": ["..."], "topic": "..."}'

# histories and per-history temperatures (0 = greedy) -> the persona's reply to each, as its messages
GenerateFn = Callable[[list[list[dict]], list[float]], list[list[str]]]


@dataclass(frozen=True)
class Fact:
    """One question whose answer sits in the persona's own history, and the strings that count as answering it."""

    question: str
    answers: tuple[str, ...]
    topic: str = ""


def read_facts(path: str | Path) -> list[Fact]:
    """The facts of a JSONL file; a bad file is one TalkalikeError naming the line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise TalkalikeError(f"no facts file at {path}; {FORMAT}")
    facts = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                facts.append(_fact(line, f"{path}:{number}"))
    if not facts:
        raise TalkalikeError(f"{path} holds no facts; {FORMAT}")
    return facts


def _fact(line: str, where: str) -> Fact:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise TalkalikeError(f"{where} is not JSON ({error.msg}); write one fact a line") from None
    if not isinstance(record, dict):
        raise TalkalikeError(f"{where} is not a JSON object; write {{\"question\": ..., \"answers\": [...]}}")
    question, answers, topic = record.get("question"), record.get("answers"), record.get("topic", "")
    if not isinstance(question, str) or not question.strip():
        raise TalkalikeError(f"{where} has no \"question\" text")
    if (not isinstance(answers, list) or not answers
            or not all(isinstance(a, str) and a.strip() for a in answers)):
        raise TalkalikeError(f"{where}: \"answers\" must be a non-empty list of non-empty strings")
    if not isinstance(topic, str):
        raise TalkalikeError(f"{where}: \"topic\" must be a string")
    return Fact(question.strip(), tuple(a.strip() for a in answers), topic)


def write_facts(path: Path, facts: list[Fact]) -> Path:
    """The facts as JSONL (how `talkalike dataset --facts` stores a validated copy)."""
    from talkalike.files import write_jsonl

    return write_jsonl(path, [{"question": f.question, "answers": list(f.answers), "topic": f.topic} for f in facts])


def _normalise(text: str) -> str:
    # NFKC folds width and compatibility forms ("Ｐｉｔａ", ligatures); casefold is a no-op on Hebrew, which has no case
    return unicodedata.normalize("NFKC", text).casefold()


def contains_answer(reply: str, answer: str) -> bool:
    """Whether `reply` says `answer`: case-blind after NFKC; Hebrew as written, anywhere, other scripts as whole words.

    Hebrew glues prepositions and articles onto the next word ("בתל אביב", "לפיתה"), so a Hebrew answer is found
    inside words; elsewhere an answer must not run on into letters or digits, so "Ari" is not found in "variety".
    """
    reply, answer = _normalise(reply), _normalise(answer)
    if HEBREW_RE.search(answer):
        return answer in reply
    return re.search(rf"(?<![^\W_]){re.escape(answer)}(?![^\W_])", reply) is not None


def probe(generate_fn: GenerateFn, facts: list[Fact], samples: int = SAMPLES, temperature: float = 1.0) -> dict:
    """Ask each question as the other person's message and count the facts some reply states.

    `generate_fn(histories, temperatures)` returns one reply (its messages) per history; the first of each
    question's `samples` replies is greedy, the rest sampled at `temperature`.
    """
    from talkalike.evaluate.metrics import wilson_interval

    samples = max(samples, 1)
    answers = greedy_then_sampled(generate_fn, [[{"role": "user", "content": f.question}] for f in facts], samples,
                                  temperature)
    results = []
    for fact, texts in zip(facts, answers, strict=True):
        said = [any(contains_answer(text, answer) for answer in fact.answers) for text in texts]
        results.append({"question": fact.question, "answers": list(fact.answers), "topic": fact.topic,
                        "replies": texts, "hit": any(said), "greedy hit": said[0]})
    hits = sum(r["hit"] for r in results)
    n = len(results)
    return {
        "facts": n,
        "samples": samples,
        "recalled": hits / n if n else 0.0,
        "greedy recalled": sum(r["greedy hit"] for r in results) / n if n else 0.0,
        "interval": list(wilson_interval(hits, n)),
        "results": results,
    }


def greedy_then_sampled(generate_fn: GenerateFn, histories: list[list[dict]], samples: int, temperature: float
                        ) -> list[list[str]]:
    """Per history, `samples` replies as texts (messages on separate lines): the first greedy, the rest sampled at
    `temperature`, all in one generate_fn call."""
    rows = [history for history in histories for _ in range(samples)]
    replies = generate_fn(rows, [0.0 if k % samples == 0 else temperature for k in range(len(rows))]) if rows else []
    assert len(replies) == len(rows), "generate_fn must return one reply per history"
    return [["\n".join(reply) for reply in replies[k * samples: (k + 1) * samples]] for k in range(len(histories))]


def twin_generate_fn(twin, config, use_adapter: bool = True, batch_size: int = 64, threads=None) -> GenerateFn:
    """A GenerateFn over the batch decoder (talkalike.decode.batch), greedy and sampled rows in one batch."""
    from talkalike.decode.batch import decode_many

    def generate(histories: list[list[dict]], temperatures: list[float]) -> list[list[str]]:
        return decode_many(twin, histories, config, use_adapter=use_adapter, batch_size=batch_size,
                           temperatures=temperatures, threads=threads)

    return generate


def facts_for_run(explicit: str | None, dataset_dir: Path) -> Path | None:
    """The facts file eval uses: the one given, else facts.jsonl in the run's dataset folder, else none."""
    if explicit:
        return Path(explicit).expanduser()
    path = Path(dataset_dir) / FACTS_FILE
    return path if path.is_file() else None
