"""The dataset stage: everything imported -> train.jsonl / eval.jsonl where the persona is the assistant.

    talkalike dataset --me Noa --out ~/noa-ds      # build
    talkalike inspect ~/noa-ds -n 2                # look at rendered samples, trained tokens marked

Pipeline: Store.messages -> clean -> privacy -> segment -> samples -> split -> write. Each line of the JSONL files is one
conversation (or one window of a long one) in the conversational shape TRL, axolotl and LLaMA-Factory read as is:
{"messages": [{"role": "system"|"user"|"assistant", "content": ...}], "chat", "start", "end", "id", "with"}, where the
system message is the contact line (talkalike.template.contact_line) made from "with". The folder is written under a
temporary name and renamed when complete, so a dataset is never half-written.
"""

import json
import math
import os
import re
import shutil
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from datetime import timedelta
from itertools import groupby
from pathlib import Path

from talkalike import console
from talkalike.errors import TalkalikeError
from talkalike.files import say, write_json, write_jsonl
from talkalike.memory import MEMORY_FILE, Memory
from talkalike.prepare.segment import Conversation, keep_usable, segment
from talkalike.template import BUBBLE_MARK, contact_line, join_bubbles

# Why a conversation yields no sample after segmenting; counted in stats.json under dropped.samples.
LEADING_PERSONA_TURN = "leading_persona_turn"  # with openers=False: templates need the user first (build_messages)
TRAILING_USER_TURN = "trailing_user_turn"  # nothing answers it, so it would only cost tokens
NO_PERSONA_REPLY = "no_persona_reply"  # the persona only opened the conversation

OPENER = ""  # the user message before a conversation the persona opens (see build_messages)
KNOWN_NAMES_SHOWN = 20  # an unknown --me lists this many names, most active first
TURN_OVERHEAD = 4  # tokens a chat template spends around each message (role tags, end-of-turn)

# Too little to learn from: below either floor `dataset` warns and `train` refuses without --force. They are floors,
# not targets (the sample chat has 3,017 of Noa's messages in 307 conversations):
# - 20 conversations: the latest 20% held out are then 4 conversations, about 10 of the persona's turns in the sample
#   chat, the fewest the next-reply ranking (the real reply among 10 candidates) can rank at all; and the 16 left to
#   train on make about 2 optimizer steps of the default preset, which are still its 2 warm-up steps.
# - 100 of the persona's messages (about 40 turns at the sample's 2.3 messages a turn): fewer, and the style
#   measures that training should move (emoji and laughter rates, messages per turn, length percentiles) shift by
#   several points with each single message, so neither the twin nor its evaluation has a style to go by.
MIN_CONVERSATIONS = 20
MIN_PERSONA_MESSAGES = 100


@dataclass
class DatasetConfig:
    """How `talkalike dataset` builds the set; every field has a default, the persona must be set to build."""

    persona: str = ""  # the sender to imitate; any participant of any chat
    chats: list[str] | None = None  # None: every imported chat (the original used one; many chats was its wish)
    gap_minutes: float = 60.0  # the original splits conversations after an hour of silence
    eval_share: float = 0.2  # the original used 80/20
    layout: str = "chat"  # "chat": the base model's chat template; "original": <s><person1>…</s><person2>…</s>
    max_tokens: int = 1024  # longer conversations are cut into windows; fits the embedded model's training length
    openers: bool = True  # keep conversations the persona opens, after an empty user message (see build_messages)
    carry_share: float = 0.25  # share of a window's budget given to history carried over from the previous window
    privacy: bool = True  # personal data is pseudonymised before it reaches any model
    scrub_names: bool = False  # third-party names too, only on request (names carry style and context)
    region: str | None = None  # default phone region; None: inferred from the chat's own numbers
    base: str | None = None  # count tokens with this model's tokenizer; None: the len(text)/2.5 estimate
    # Each sample opens with a system line naming who the persona is talking to: people write differently to their
    # mother and to their friends, and with the line the twin learns that, and chat/serve can say who it talks to.
    contact: bool = True

    @property
    def gap(self) -> timedelta:
        """The silence that starts a new conversation."""
        return timedelta(minutes=self.gap_minutes)


def estimate_tokens(text: str) -> int:
    """Cheap token estimate that errs long: 2.5 characters a token.

    Measured with the embedded Gemma 3 tokenizer on the sample chat: long English sentences take 4.3 characters a
    token, short Hebrew/English/emoji bursts 2.5. Counting every text as the dense kind keeps windows within the
    trainer's max_length.
    """
    return len(text) * 2 // 5 + 1


# ---------------------------------------------------------------- samples


def build_messages(conversation: Conversation, persona: str, group: bool, dropped: Counter,
                   openers: bool = True) -> list[dict]:
    """A conversation as alternating user/assistant messages, persona = assistant; [] when nothing is left to learn.

    Consecutive turns of other people merge into one user message. In group chats every user message line starts with
    "Name: ", e.g. "Dana: hi<sep>Avi: what's up", so the twin sees who said what. Chat templates such as Gemma's
    reject an assistant turn before any user turn, so a conversation the persona opens starts with an empty user
    message (OPENER): openers are one persona turn in seven in the sample chat, and the twin learns to start a
    conversation from an empty prompt. With `openers=False` that first turn is dropped instead. A trailing user turn
    is dropped, since nothing answers it.
    """
    rows: list[tuple[str, list[str]]] = []
    for turn in conversation.turns:
        role = "assistant" if turn.sender == persona else "user"
        bubbles = [f"{turn.sender}: {text}" for text in turn.messages] if group and role == "user" else turn.messages
        if rows and rows[-1][0] == role:
            rows[-1][1].extend(bubbles)
        else:
            rows.append((role, list(bubbles)))
    if rows and rows[0][0] == "assistant":
        if openers:
            rows.insert(0, ("user", [OPENER]))
        else:
            rows.pop(0)
            dropped[LEADING_PERSONA_TURN] += 1
    if rows and rows[-1][0] == "user":
        rows.pop()
        dropped[TRAILING_USER_TURN] += 1
    if not rows:
        dropped[NO_PERSONA_REPLY] += 1
        return []
    return [{"role": role, "content": join_bubbles(bubbles)} for role, bubbles in rows]


def others_in(conversation: Conversation, persona: str) -> list[str]:
    """The conversation's other speakers, most messages first (the first to speak wins a tie)."""
    written = Counter()
    for turn in conversation.turns:
        if turn.sender != persona:
            written[turn.sender] += len(turn.messages)
    return [name for name, _ in written.most_common()]


def windows(messages: list[dict], costs: list[int], max_tokens: int, carry: int) -> list[list[dict]]:
    """Cut alternating user/assistant messages into windows of at most `max_tokens`, each ending with the persona.

    A window after the first starts with the most recent (user, assistant) pairs of the one before, up to `carry`
    tokens, so the persona's replies keep their context (those carried replies are trained once more, a small price).
    One pair longer than `max_tokens` stays whole (the trainer truncates it).
    """
    assert len(messages) % 2 == 0 and len(messages) == len(costs)
    if sum(costs) <= max_tokens:
        return [messages]
    out = []
    start, done = 0, 0  # done: messages already trained on in an earlier window
    while done < len(messages):
        end, total = start, 0
        while end < len(messages) and (end < done + 2 or total + costs[end] + costs[end + 1] <= max_tokens):
            total += costs[end] + costs[end + 1]
            end += 2
        out.append(messages[start:end])
        done = end
        start, carried = end, 0
        while start - 2 >= 0 and carried + costs[start - 2] + costs[start - 1] <= carry:
            start -= 2
            carried += costs[start] + costs[start + 1]
    return out


@dataclass
class Sample:
    """One JSONL line and the conversation it came from (windows of one conversation share `conversation`)."""

    row: dict
    conversation: int


def split(samples: list[Sample], conversations: list[Conversation], eval_share: float) -> tuple[list, list]:
    """Time-ordered split by conversation: the latest `eval_share` of conversations go to eval, the rest to train."""
    used = sorted({s.conversation for s in samples}, key=lambda i: (conversations[i].start, conversations[i].chat))
    n_eval = round(len(used) * eval_share)
    if eval_share > 0 and len(used) >= 2:
        n_eval = min(max(n_eval, 1), len(used) - 1)  # both sides non-empty whenever there are two conversations
    held_out = set(used[len(used) - n_eval:]) if n_eval else set()
    order = {index: rank for rank, index in enumerate(used)}
    ordered = sorted(samples, key=lambda s: order[s.conversation])  # stable: windows stay in order
    train = [s.row for s in ordered if s.conversation not in held_out]
    evaluation = [s.row for s in ordered if s.conversation in held_out]
    return train, evaluation


# ---------------------------------------------------------------- style statistics

# Emoji: the pictographic blocks, dingbats and flags; enough to compare speakers, not a full Unicode emoji parser.
EMOJI = re.compile("[\U0001F000-\U0001FAFF\u2600-\u27BF\u2B00-\u2BFF\U0001F1E6-\U0001F1FF]")
# Written laughter in English, Hebrew, Spanish and Portuguese ("haha", "lol", "חחח", "jajaja", "kkkk"); laughing emoji
# count as emoji, not here.
LAUGHTER = re.compile(r"(?i)\b(?:a?ha(?:ha)+h?|he(?:he)+|ja(?:ja)+j?|je(?:je)+|k{3,}|lo+l+|lmf?ao+|rofl|xd+)\b"
                      r"|\bחח\b|ח{3,}")
HEBREW = re.compile("[\u05D0-\u05EA]")
LATIN = re.compile("[A-Za-z\u00C0-\u024F]")
PERCENTILES = (10, 50, 90, 99)


def language_of(text: str) -> str:
    """A message's script: hebrew, english (Latin letters), mixed (both), other (letters of neither), none."""
    hebrew, latin = bool(HEBREW.search(text)), bool(LATIN.search(text))
    if hebrew and latin:
        return "mixed"
    if hebrew:
        return "hebrew"
    if latin:
        return "english"
    return "other" if any(c.isalpha() for c in text) else "none"


@dataclass
class SpeakerStats:
    """Style counters of one sender over the kept conversations."""

    lengths: list[int] = field(default_factory=list)
    per_turn: list[int] = field(default_factory=list)
    emoji: int = 0
    laughter: int = 0
    languages: Counter = field(default_factory=Counter)

    @property
    def messages(self) -> int:
        """How many messages this sender wrote."""
        return len(self.lengths)

    @property
    def chars(self) -> int:
        """How many characters this sender wrote."""
        return sum(self.lengths)

    def add_turn(self, messages: tuple[str, ...]) -> None:
        """Count one turn's messages."""
        self.per_turn.append(len(messages))
        for text in messages:
            self.lengths.append(len(text))
            self.emoji += EMOJI.search(text) is not None
            self.laughter += LAUGHTER.search(text) is not None
            self.languages[language_of(text)] += 1

    def to_json(self) -> dict:
        """Rates are shares of messages; lengths are characters."""
        n = self.messages or 1
        lengths, per_turn = sorted(self.lengths), sorted(self.per_turn)
        return {
            "messages": self.messages,
            "turns": len(per_turn),
            "message_length": {f"p{p}": _percentile(lengths, p) for p in PERCENTILES}
            | {"mean": round(sum(lengths) / n, 1)},
            "messages_per_turn": {"mean": round(sum(per_turn) / (len(per_turn) or 1), 2),
                                  "p50": _percentile(per_turn, 50), "p90": _percentile(per_turn, 90)},
            "emoji_rate": round(self.emoji / n, 4),
            "laughter_rate": round(self.laughter / n, 4),
            "languages": {k: round(v / n, 4) for k, v in self.languages.most_common()},
        }


def _percentile(ordered: list[int], p: int) -> int:
    return ordered[min(len(ordered) - 1, len(ordered) * p // 100)] if ordered else 0


def data_size(rows: list[dict]) -> tuple[int, int]:
    """(the persona's messages, conversations) in dataset rows; the windows of one conversation count once."""
    from talkalike.template import split_bubbles

    conversations = {str(row.get("id", i)).split("#")[0] for i, row in enumerate(rows)}
    messages = sum(len(split_bubbles(m["content"])) for row in rows for m in row["messages"] if m["role"] == "assistant")
    return messages, len(conversations)


def too_little_data(persona_messages: int, conversations: int) -> str | None:
    """Why a dataset is too small to learn from (MIN_PERSONA_MESSAGES, MIN_CONVERSATIONS), or None."""
    short = []
    if persona_messages < MIN_PERSONA_MESSAGES:
        short.append(f"{persona_messages} message{'s' * (persona_messages != 1)} from the persona (at least "
                     f"{MIN_PERSONA_MESSAGES} needed)")
    if conversations < MIN_CONVERSATIONS:
        short.append(f"{conversations} conversation{'s' * (conversations != 1)} (at least {MIN_CONVERSATIONS} needed)")
    if not short:
        return None
    return ("too little to learn from: " + " and ".join(short)
            + "; import more chats or a longer export")


def summary_lines(stats: dict, speakers: int = 6) -> list[str]:
    """A readable summary of stats.json for the terminal."""
    conv, samples, share = stats["conversations"], stats["samples"], stats["persona_share"]
    lines = [
        f"persona: {stats['persona']}",
        f"messages: {stats['messages_read']} read, {stats['messages_after_clean']} after cleaning",
        f"conversations: {conv['total']} ({conv['train']} train, {conv['eval']} eval, {conv['windowed']} cut into windows, "
        f"{conv['opened_by_persona']} opened by the persona)",
        f"samples: {samples['train']} train, {samples['eval']} eval; turns: {stats['turns']}",
        f"persona share: {share['tokens']:.0%} of tokens, {share['characters']:.0%} of characters",
    ]
    for step, counts in stats["dropped"].items():
        if counts:
            lines.append(f"dropped by {step}: "
                         + ", ".join(f"{why} {n}" for why, n in sorted(counts.items(), key=lambda kv: -kv[1])))
    privacy = stats.get("privacy", {})
    if privacy.get("enabled"):
        kinds = ", ".join(f"{kind} {n}" for kind, n in privacy["replaced"].items()) or "nothing found"
        lines.append(f"pseudonymised: {kinds}; links replaced by clean: {stats['links_replaced']}")
    else:
        lines.append("privacy pass: OFF (--no-privacy); personal data goes into the dataset as written")
    lines.append(f"{'speaker':<16} {'msgs':>7} {'p50 len':>7} {'p90 len':>7} {'msg/turn':>8} {'emoji':>6} "
                 f"{'laugh':>6}  languages")
    persona_first = sorted(stats["speakers"].items(), key=lambda kv: kv[0] != stats["persona"])  # stable otherwise
    for name, s in persona_first[:speakers]:
        languages = " ".join(f"{k} {v:.0%}" for k, v in list(s["languages"].items())[:3])
        label = (name + (" *" if name == stats["persona"] else ""))[:16]
        lines.append(f"{label:<16} {s['messages']:>7} {s['message_length']['p50']:>7} {s['message_length']['p90']:>7} "
                     f"{s['messages_per_turn']['mean']:>8.2f} {s['emoji_rate']:>6.1%} {s['laughter_rate']:>6.1%}  {languages}")
    return lines


# ---------------------------------------------------------------- the pipeline


def _check_persona(store, config: DatasetConfig) -> list[str]:
    if not store.chats():
        raise TalkalikeError("the store is empty: import a chat first, e.g. `talkalike import 'WhatsApp Chat with Noa.txt'`")
    people = store.people()  # most messages first: the likely personas lead the list
    names = sorted(person.name for person in people)
    shown = ", ".join(person.name for person in people[:KNOWN_NAMES_SHOWN])
    if len(people) > KNOWN_NAMES_SHOWN:
        shown += f" and {len(people) - KNOWN_NAMES_SHOWN} more (see `talkalike people`)"
    if not config.persona:
        raise TalkalikeError(f"say who to imitate with --me NAME; known names: {shown}")
    if config.persona not in names:
        close = [name for name in names if name.casefold() == config.persona.casefold()]
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise TalkalikeError(f"no sender named {config.persona!r} in the imported chats; {hint}known names: {shown}")
    if config.chats:
        known = {chat.name for chat in store.chats()}
        missing = [name for name in config.chats if name not in known]
        if missing:
            raise TalkalikeError(f"no chat named {', '.join(map(repr, missing))}; known chats: {', '.join(sorted(known))}")
    return names


def _token_counter(config: DatasetConfig, home: Path | None):
    if config.base is None:
        return estimate_tokens
    from talkalike.model import load_tokenizer

    tokenizer = load_tokenizer(config.base, home)
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def build_dataset(store, config: DatasetConfig, out_dir: Path, home: Path | None = None, progress: bool = False) -> dict:
    """Build train.jsonl, eval.jsonl, stats.json and dataset.json in `out_dir`; return the stats."""
    from talkalike.prepare import clean, privacy

    senders = _check_persona(store, config)
    out_dir = Path(out_dir)
    check_out(out_dir)
    count_tokens = _token_counter(config, home)

    counts = Counter()
    dropped = {"clean": Counter(), "segment": Counter(), "samples": Counter()}
    replaced = Counter()  # personal data pseudonymised, per kind
    regions: dict[str, list[str]] = {}  # the phone regions the privacy pass tried, per chat
    conversations: list[Conversation] = []
    samples: list[Sample] = []
    speakers: dict[str, SpeakerStats] = {}
    contacts: dict[str, Counter] = {}  # per contact (the other person, or the group): conversations, persona turns
    tokens = Counter()
    carry = int(config.max_tokens * config.carry_share)
    persona, labels = config.persona, {}  # as they reach the files: with personal data in them pseudonymised
    if config.privacy:
        pseudo = privacy.Pseudonymiser(store.connection, privacy.check_region(config.region))
        persona = pseudo.sender(config.persona)  # `--me "Noa 054-123-4567"`, an unsaved number
        pseudo.save()

    stream = store.messages(config.chats)
    if progress:
        from tqdm import tqdm

        stream = tqdm(stream, total=sum(c.messages for c in store.chats() if not config.chats or c.name in config.chats),
                      desc="messages", unit="msg", file=sys.stderr, mininterval=0.5, disable=None)
    for chat, rows in groupby(stream, key=lambda pair: pair[0]):
        messages = [message for _, message in rows]
        counts["messages"] += len(messages)
        group = len({m.sender for m in messages if m.sender is not None}) > 2
        counts["group_chats" if group else "two_person_chats"] += 1
        cleaned = clean.clean(messages)
        messages = cleaned.messages
        dropped["clean"].update(cleaned.dropped)
        counts["links_replaced"] += cleaned.links_replaced
        if config.privacy:
            # The chat's name goes into the rows' chat and id fields, stats.json and memory.db, and a group's into
            # its contact line: it is scanned like a message (`Vaad Bait 052-555-9876`, an unsaved contact's number).
            private = privacy.pseudonymise(
                messages, store, chat=chat, region=config.region, scrub_names=config.scrub_names, keep={config.persona},
                names=senders, title=chat,
            )
            messages, labels[chat], chat = private.messages, private.title, private.title
            if persona != config.persona:
                messages = [replace(m, sender=persona) if m.sender == config.persona else m for m in messages]
            replaced.update(private.counts)
            regions[chat] = list(private.regions)
        title = chat if group else None  # a group's name is in its contact line
        counts["messages_after_clean"] += len(messages)
        kept, segment_drops = keep_usable(segment(messages, chat, config.gap), persona)
        dropped["segment"].update(segment_drops)
        for conversation in kept:
            rows_out = build_messages(conversation, persona, group, dropped["samples"], config.openers)
            if not rows_out:
                continue
            counts["opened_by_persona"] += rows_out[0]["content"] == OPENER
            index = len(conversations)
            conversations.append(conversation)
            counts["turns"] += len(conversation.turns)
            for turn in conversation.turns:
                speakers.setdefault(turn.sender, SpeakerStats()).add_turn(turn.messages)
            others = others_in(conversation, persona)
            contact = contacts.setdefault(title or ", ".join(others), Counter())
            contact["conversations"] += 1
            contact["persona_turns"] += sum(turn.sender == persona for turn in conversation.turns)
            head = [contact_line(persona, others, title)] if config.contact else []
            costs = [count_tokens(m["content"]) + TURN_OVERHEAD for m in rows_out]
            for m, cost in zip(rows_out, costs, strict=True):
                tokens[m["role"]] += cost - TURN_OVERHEAD
            budget = config.max_tokens - sum(count_tokens(m["content"]) + TURN_OVERHEAD for m in head)
            parts = windows(rows_out, costs, budget, carry)
            base_id = f"{chat}@{conversation.start:%Y-%m-%dT%H:%M}"
            for k, part in enumerate(parts):
                row = {
                    "messages": head + part,
                    "chat": chat,
                    "start": conversation.start.isoformat(),
                    "end": conversation.end.isoformat(),
                    "id": base_id if len(parts) == 1 else f"{base_id}#{k + 1}",
                }
                if config.contact:
                    row["with"] = {"others": others, "group": title}
                samples.append(Sample(row, index))
            counts["windowed_conversations"] += len(parts) > 1
    if not samples:
        raise TalkalikeError(_nothing_left(counts, dropped, config))

    # What dataset.json and stats.json say: the pseudonymised names (a `--chat` name can hold a number too).
    config = replace(config, persona=persona, chats=[labels.get(c, c) for c in config.chats] if config.chats else None)
    train, evaluation = split(samples, conversations, config.eval_share)
    stats = _stats(config, counts, dropped, conversations, train, evaluation, speakers, tokens)
    stats["contacts"] = {name: dict(c) for name, c in sorted(contacts.items(), key=lambda kv: -kv[1]["persona_turns"])}
    stats["privacy"] = {"enabled": config.privacy, "replaced": dict(sorted(replaced.items())), "regions": regions}
    _write(out_dir, config, train, evaluation, stats)
    return stats


def _nothing_left(counts: Counter, dropped: dict, config: DatasetConfig) -> str:
    """Say which step removed what, so the user knows which setting to change."""
    steps = [f"{counts['messages']} messages read"]
    if dropped["clean"]:
        steps.append("clean dropped " + ", ".join(f"{n} {why}" for why, n in dropped["clean"].most_common()))
    if dropped["segment"]:
        steps.append("segment dropped " + ", ".join(f"{n} conversations ({why})" for why, n in dropped["segment"].items()))
    if dropped["samples"]:
        steps.append("samples dropped " + ", ".join(f"{n} {why}" for why, n in dropped["samples"].items()))
    return (f"no training sample left for {config.persona!r}: " + "; ".join(steps)
            + ". Check --me, --chat and --gap-minutes, or import more chats where this person speaks.")


def _stats(config, counts, dropped, conversations, train, evaluation, speakers, tokens) -> dict:
    total_tokens = sum(tokens.values()) or 1
    persona_chars = speakers[config.persona].chars if config.persona in speakers else 0
    all_chars = sum(s.chars for s in speakers.values()) or 1
    return {
        "persona": config.persona,
        "messages_read": counts["messages"],
        "messages_after_clean": counts["messages_after_clean"],
        "links_replaced": counts["links_replaced"],
        "chats": {"two_person": counts["two_person_chats"], "group": counts["group_chats"]},
        "conversations": {
            "total": len(conversations),
            "train": len({r["id"].split("#")[0] for r in train}),
            "eval": len({r["id"].split("#")[0] for r in evaluation}),
            "windowed": counts["windowed_conversations"],
            "opened_by_persona": counts["opened_by_persona"],
        },
        "samples": {"train": len(train), "eval": len(evaluation)},
        "turns": counts["turns"],
        "dropped": {step: dict(counter) for step, counter in dropped.items()},
        "persona_share": {
            "tokens": round(tokens["assistant"] / total_tokens, 4),
            "characters": round(persona_chars / all_chars, 4),
        },
        "tokens": {"assistant": tokens["assistant"], "user": tokens["user"],
                   "counted_with": config.base or "len(text)/2.5 estimate"},
        "speakers": {name: s.to_json() for name, s in sorted(speakers.items(), key=lambda kv: -kv[1].messages)},
        "eval_range": {
            "first": min((r["start"] for r in evaluation), default=None),
            "last": max((r["end"] for r in evaluation), default=None),
        },
    }


def check_out(out_dir: Path) -> None:
    """Refuse an --out that cannot become a dataset folder, before the long build rather than after it."""
    if out_dir.exists() and not out_dir.is_dir():
        raise TalkalikeError(f"--out {out_dir} exists and is not a folder; choose a new folder name for the dataset.")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "dataset.json").is_file():
        raise TalkalikeError(f"{out_dir} exists and is not a dataset folder; choose another --out")
    parent = out_dir.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise TalkalikeError(f"--out {out_dir} lies under {parent}, which is a file; choose a folder path.")
    # the dataset is written beside --out and renamed into place, so its parent must take new entries
    if not os.access(parent, os.W_OK | os.X_OK):
        raise TalkalikeError(f"cannot write a dataset into {parent} (permission denied); choose another --out.")


def _clean_stale(out_dir: Path) -> None:
    """Remove `.NAME.tmp-PID` / `.NAME.old-PID` folders that an interrupted build of this dataset left behind, when
    process PID is gone; a live PID may be another build writing right now."""
    for kind in ("tmp", "old"):
        for leftover in out_dir.parent.glob(f".{glob_escape(out_dir.name)}.{kind}-*"):
            pid = leftover.name.rpartition("-")[2]
            if leftover.is_dir() and pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(leftover, ignore_errors=True)


def glob_escape(name: str) -> str:
    """`name` with glob's special characters taken literally."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _write(out_dir: Path, config: DatasetConfig, train: list, evaluation: list, stats: dict) -> None:
    """Write everything under a temporary sibling name, then swap it in: readers never see a half-written dataset."""
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        _clean_stale(out_dir)
        _write_swap(out_dir, config, train, evaluation, stats)
    except OSError as error:
        raise TalkalikeError(f"cannot write the dataset to {out_dir} ({error.strerror or error}); nothing was "
                             "changed there. Free some space or choose another --out.") from None


def _write_swap(out_dir: Path, config: DatasetConfig, train: list, evaluation: list, stats: dict) -> None:
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write_jsonl(tmp / "train.jsonl", train)
        write_jsonl(tmp / "eval.jsonl", evaluation)
        # The persona's past exchanges, for recall (talkalike.memory): the training conversations only, so
        # evaluation never recalls the held-out conversations it is scored on.
        Memory.build(train, tmp / MEMORY_FILE).connection.close()
        write_json(tmp / "dataset.json", asdict(config) | {"bubble_separator": BUBBLE_MARK, "format": "messages"})
        write_json(tmp / "stats.json", stats)
        if out_dir.exists():
            out_dir.rename(old)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not out_dir.exists():
            old.rename(out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------- inspect


class PlainTokenizer:
    """One token per character, for `inspect` without --base: shows the documented plain template with no model.

    It offers just what talkalike.template uses: apply_chat_template, convert_tokens_to_ids, __call__ with offsets,
    bos/eos tokens.
    """

    bos_token = "<s>"  # the original project's markers, so the "original" layout reads as in its report
    eos_token = "</s>"
    chat_template = None  # -> talkalike.template.PLAIN_TEMPLATE

    def apply_chat_template(self, messages, chat_template, tokenize=False, add_generation_prompt=False) -> str:
        """Render with Jinja, as transformers does."""
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        assert not tokenize
        return ImmutableSandboxedEnvironment().from_string(chat_template).render(
            messages=messages, bos_token=self.bos_token, eos_token=self.eos_token,
            add_generation_prompt=add_generation_prompt,
        )

    unk_token_id = None

    def convert_tokens_to_ids(self, tokens: list[str]) -> list[None]:
        """No vocabulary: any character is a token, and no whole token such as <start_of_turn> exists."""
        return [None for _ in tokens]

    def __call__(self, text: str, add_special_tokens=False, return_offsets_mapping=False) -> dict:
        """Characters as ids, with their offsets."""
        out = {"input_ids": [ord(c) for c in text]}
        if return_offsets_mapping:
            out["offset_mapping"] = [(i, i + 1) for i in range(len(text))]
        return out


def highlight(text: str, offsets: list[tuple[int, int]], mask: list[int], colour: bool) -> str:
    """The text with the masked (trained) characters in colour, or between ⟦ ⟧ when not on a terminal."""
    trained = [False] * len(text)
    # offsets come from re-tokenising the rendered text, which may differ in length from the rendered ids
    for (start, end), m in zip(offsets, mask, strict=False):
        if m:
            trained[start:end] = [True] * (end - start)
    opening, closing = ("\033[1;32m", "\033[0m") if colour else ("⟦", "⟧")
    out, inside = [], False
    for char, flag in zip(text, trained, strict=True):
        if flag != inside:
            out.append(opening if flag else closing)
            inside = flag
        out.append(char)
    if inside:
        out.append(closing)
    return "".join(out)


def inspect_dataset(folder: Path, n: int, base: str | None, home: str | None) -> int:
    """Print the first `n` training samples of a dataset folder, rendered, with the trained tokens highlighted."""
    from talkalike.template import render_sample

    path = folder / "train.jsonl"
    if not path.is_file():
        raise TalkalikeError(f"no dataset at {folder}: build one with `talkalike dataset --me NAME --out {folder}`")
    info = json.loads((folder / "dataset.json").read_text(encoding="utf-8")) if (folder / "dataset.json").is_file() else {}
    layout = info.get("layout", "chat")
    if base is None:
        tokenizer = PlainTokenizer()
    else:
        from talkalike.home import resolve_home
        from talkalike.model import load_tokenizer

        tokenizer = load_tokenizer(base, resolve_home(home))
    colour = sys.stdout.isatty()
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i >= n:
                break
            row = json.loads(line)
            rendered = render_sample(row["messages"], tokenizer, layout=layout)
            offsets = tokenizer(rendered.text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
            trained = sum(rendered.mask)
            unit = "characters" if base is None else "tokens"
            print(f"── sample {i + 1}: {row['id']}  ({len(rendered.input_ids)} {unit}, {trained} trained)")
            print(highlight(rendered.text, offsets, rendered.mask, colour))
    return 0


# ---------------------------------------------------------------- CLI


def config_from_args(args) -> DatasetConfig:
    """The DatasetConfig that `talkalike dataset` arguments describe."""
    if not 0 <= args.eval_share < 1:
        raise TalkalikeError("--eval-share must be at least 0 and below 1, e.g. 0.2")
    if not math.isfinite(args.gap_minutes) or args.gap_minutes <= 0 or args.gap_minutes > 10 ** 7:
        raise TalkalikeError("--gap-minutes must be a positive number of minutes (at most 10,000,000), e.g. 60")
    if args.max_tokens < 16:
        raise TalkalikeError("--max-tokens must be at least 16, e.g. 1024")
    from talkalike.prepare.privacy import check_region

    return DatasetConfig(
        persona=args.me,
        chats=args.chat,
        gap_minutes=args.gap_minutes,
        eval_share=args.eval_share,
        layout=args.layout,
        max_tokens=args.max_tokens,
        privacy=not args.no_privacy,
        scrub_names=args.scrub_names,
        region=check_region(args.region),  # `il` means IL; `XX` is an error, not a silent fallback
        base=getattr(args, "base", None),
        contact=not args.no_contact,
    )


def _pii_mark(connection) -> int | None:
    """Where the privacy map (talkalike.prepare.privacy's `pii_map` table in the store) ends now; None: no map yet."""
    if connection.execute("SELECT 1 FROM sqlite_master WHERE name = 'pii_map'").fetchone() is None:
        return None
    return connection.execute("SELECT ifnull(max(rowid), 0) FROM pii_map").fetchone()[0]


def _pii_undo(connection, mark: int | None) -> None:
    """Forget the pseudonyms a failed build added to the map since `mark`."""
    if connection.execute("SELECT 1 FROM sqlite_master WHERE name = 'pii_map'").fetchone() is None:
        return
    if mark is None:
        connection.execute("DROP TABLE pii_map")
    else:
        connection.execute("DELETE FROM pii_map WHERE rowid > ?", (mark,))


def build_from_store(home: Path, config: DatasetConfig, out: Path) -> dict:
    """build_dataset on the data folder's store (`dataset`, and `update` rebuilding a run's dataset); a failed build
    leaves the store's privacy map as it found it."""
    from talkalike.store import ReadOnlyStore, Store

    check_out(out)
    try:
        store = Store.open(home)
    except ReadOnlyStore:  # a dataset can be built from a read-only store; only the privacy map is not saved
        say("note: the store is read-only, so new pseudonyms are not remembered for later builds")
        store = Store.open(home, readonly=True)
    mark = _pii_mark(store.connection)
    try:
        return build_dataset(store, config, out, home=home, progress=True)
    except (TalkalikeError, KeyboardInterrupt):
        _pii_undo(store.connection, mark)  # a build that fails leaves the store as it found it
        raise


def cmd_dataset(args) -> int:
    """`talkalike dataset`: build the dataset and print its summary."""
    from talkalike.evaluate import facts
    from talkalike.home import resolve_home, store_path

    config = config_from_args(args)
    home = resolve_home(args.home)
    if not store_path(home).exists():
        raise TalkalikeError("nothing imported yet: run `talkalike import 'WhatsApp Chat with NAME.txt'` first")
    known = facts.read_facts(args.facts) if args.facts else []  # a bad facts file stops before the long build
    console.detail("config: " + json.dumps(asdict(config), ensure_ascii=False))  # also saved as dataset.json
    out = Path(args.out).expanduser()
    stats = build_from_store(home, config, out)
    print("\n".join(summary_lines(stats)))
    if known:
        facts.write_facts(out / facts.FACTS_FILE, known)
    print(f"wrote {args.out}/train.jsonl, eval.jsonl, stats.json, dataset.json, memory.db" + (", facts.jsonl" if known else ""))
    persona_messages = stats["speakers"].get(stats["persona"], {}).get("messages", 0)
    too_little = too_little_data(persona_messages, stats["conversations"]["total"])
    if too_little:
        say(f"warning: {too_little}. `talkalike train` refuses this dataset without --force.")
    console.done(f"{stats['samples']['train']} train and {stats['samples']['eval']} eval samples",
                 f"talkalike train {args.out} --name NAME")
    return 0


def cmd_inspect(args) -> int:
    """`talkalike inspect`: rendered samples with the persona's trained tokens highlighted."""
    try:
        return inspect_dataset(Path(args.dir).expanduser(), args.n, args.base, args.home)
    except BrokenPipeError:
        # `talkalike inspect DIR | head` closed the pipe: that is the reader's choice, not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
