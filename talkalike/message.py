"""The plain records that flow out of the import stage: `Message`, and what parsing one export yields."""

import re
from dataclasses import dataclass, field
from datetime import datetime

KINDS = ("text", "media", "deleted", "system")

# Emoji: pictographs, dingbats and symbols, with skin tones, variation selectors and zero-width-joiner sequences kept
# as one emoji, so "🏃‍♀️" counts once, as a person would see it.
EMOJI_CORE = "[\U0001F000-\U0001FAFF\u2600-\u27BF\u2B00-\u2BFF\u2300-\u23FF\u203C\u2049\u3030\u303D]"
_EMOJI_TAIL = "[\U0001F3FB-\U0001F3FF\uFE0F\u20E3]*"
EMOJI_RE = re.compile(f"{EMOJI_CORE}{_EMOJI_TAIL}(?:\u200D{EMOJI_CORE}{_EMOJI_TAIL})*")
EMOJI_CORE_RE = re.compile(EMOJI_CORE)  # one emoji's characters each (a ZWJ sequence's parts, a skin tone)

# Laughter markers across the languages of the chats we see; the first matching kind names a message's laughter.
LAUGHTER = {
    "haha": re.compile(r"\b(?:[ah]*ha){2,}h*\b|\b(?:he){2,}\b|\bhihi+\b", re.IGNORECASE),
    "חחח": re.compile("ח{3,}|(?<![\u0590-\u05FF])(?:חח|ה{3,})(?![\u0590-\u05FF])"),
    "lol": re.compile(r"\blo+l+\b|\blmf?ao+\b|\brofl\b", re.IGNORECASE),
    "jaja": re.compile(r"\b(?:ja){2,}\b|\bjej(?:ej)+\b", re.IGNORECASE),
    "kkk": re.compile(r"\bk{3,}\b|\brs(?:rs)+\b", re.IGNORECASE),
    "xd": re.compile(r"\bx+d+\b", re.IGNORECASE),
    "😂": re.compile("[\U0001F602\U0001F923\U0001F606\U0001F639]"),
}


@dataclass(frozen=True, slots=True)
class Message:
    """One entry of a chat: a message or a system event, in the chat's local time."""

    time: datetime  # naive local time, as the export shows it; seconds are 0 when the export has none
    sender: str | None  # None for system events without an author
    text: str  # exact body (multi-line kept); media/deleted/system entries keep their original text
    kind: str = "text"  # one of KINDS
    edited: bool = False  # the edited marker was present and has been removed from `text`

    def to_json(self) -> dict:
        """The `talkalike parse` shape: time, sender, text, kind, edited."""
        return {name: getattr(self, name) for name in self.__slots__} | {"time": self.time.strftime("%Y-%m-%dT%H:%M:%S")}


@dataclass(frozen=True, slots=True)
class Unparsed:
    """An input line that is neither a header nor a continuation, with why."""

    line_no: int  # 1-based, in the chat text file
    line: str
    reason: str


@dataclass
class ParsedExport:
    """Everything read from one export file, before it is stored."""

    name: str  # the chat's own name from the export ("WhatsApp Chat with Maya.txt" -> "Maya")
    source: str  # a key of talkalike.sources.SOURCES
    format: str  # the detected format, said in words ("android, d/m/y, 24h")
    messages: list[Message] = field(default_factory=list)
    unparsed: list[Unparsed] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # e.g. which day/month order was chosen and why
    date_order: str | None = None  # WhatsApp: the day/month order its dates were read in ("dmy", "mdy", "ymd")
    order_known: bool = True  # False when no date decided the order and the chronology only suggested it
