"""The clean stage: drop what a person did not type as a chat message, keep everything they did, byte for byte.

Runs between the store and the privacy pass inside `talkalike dataset`. Try it with

    from talkalike.prepare.clean import clean, CleanConfig
    kept, dropped = clean(messages)            # messages: Message objects, e.g. one chat from Store.messages()
    print(dropped)                             # Counter({'media': 120, 'link_only': 14, 'system': 3, ...})

Rules, each counted under its own reason in `dropped`:
- `media`, `deleted`, `system`: entries of those kinds (the parser's `Message.kind`) are dropped.
- `empty`: a text message with nothing but whitespace.
- `link_only`: a message that is nothing but one or more links.
- `code`: pasted code. A message counts as code when it has a ``` fence, or has at least `code_min_lines` non-empty
  lines of which at least half look like code (end in `;` `{` `}`, start with `def`/`import`/`class`/`return`/`#include`
  /`function`/`const`..., open a Python block, assign, are indented, or are HTML/XML tags). Bulleted lists and
  ordinary multi-line texts are not code.
- `long_paste`: a message longer than max(`long_min_chars`, `long_factor` x that sender's median text-message length
  within the messages given). 500 chars / 10x keeps Daniel's 900-character stories and drops a pasted article.
Links inside a kept message are replaced with `link_placeholder` ("[LINK]"); everything else of a kept message (emoji,
laughter, punctuation, spelling, language, newlines) stays exactly as written.

Input and output are plain `Message` objects in their given order; pass one chat at a time (the dataset stage does),
because the long-paste rule compares a message with its sender's usual length in the same call.
"""

import re
import statistics
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

from talkalike.message import Message

# Reasons a message is dropped: the keys of CleanResult.dropped and of stats.json's dropped.clean.
MEDIA, DELETED, SYSTEM, EMPTY, LINK_ONLY, CODE, LONG_PASTE = (
    "media", "deleted", "system", "empty", "link_only", "code", "long_paste")

# A link: a scheme or a bare www., up to whitespace; trailing punctuation belongs to the sentence, not the link.
LINK = re.compile(r"(?:https?://|www\.)[^\s<>\"]*[^\s<>\".,;:!?)\]}'’”]", re.IGNORECASE)
_CODE_LINE = re.compile(
    r"""^\s*(?:
        (?:def|class|import|from\s+\S+\s+import|return|function|const|let|var|public|private|static|package|
           \#include|\#!|for\s*\(|if\s*\(|while\s*\(|else\b|try\s*[:{]|except\b|catch\s*\(|SELECT\s|INSERT\s|
           CREATE\s|@\w+|console\.|print\(|System\.out)\S*
      | (?:for|if|elif|while|with|else|try|except|finally)\b.*:\s*$   # a Python block opens
      | [\w.\[\]]+\s*[-+*/%|&]?=\s*\S             # an assignment
      | </?[a-zA-Z][\w-]*(?:\s[^>]*)?/?>        # an HTML/XML tag
      | .*[;{}]\s*$                             # a statement or a block ends here
      | .*\)\s*(?:=>|->)\s*.*                   # arrow functions, annotated defs
      | \s*[}\])];?\s*$                         # a closing bracket alone on its line
    )""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class CleanConfig:
    """Which messages the clean stage drops; works with no arguments."""

    drop_kinds: tuple[str, ...] = (MEDIA, DELETED, SYSTEM)  # not typed by the person: placeholders and events
    drop_link_only: bool = True  # a bare link teaches nothing but a URL shape, and may leak where someone was
    link_placeholder: str | None = "[LINK]"  # None keeps links as written (the privacy pass then makes them [URL_n])
    drop_code: bool = True  # pasted code is nobody's texting style
    code_min_lines: int = 3  # two lines are a normal message; code pastes are longer
    long_min_chars: int = 500  # never call a message a paste below this: long but typed messages are style too
    long_factor: float = 10.0  # ...and only when it is this many times the sender's median length


@dataclass(frozen=True)
class CleanResult:
    """Kept messages and, per reason, how many were dropped; unpacks as `kept, dropped = clean(...)`."""

    messages: list[Message]
    dropped: Counter
    links_replaced: int = 0  # links inside kept messages that became the placeholder

    def __iter__(self) -> Iterator:
        return iter((self.messages, self.dropped))


def is_link_only(text: str) -> bool:
    """True when the text is nothing but links (and whitespace)."""
    return ("://" in text or "www." in text.lower()) and not LINK.sub("", text).strip()


def looks_like_code(text: str, min_lines: int = 3) -> bool:
    """True for a ``` fenced block, or >= min_lines non-empty lines of which at least half look like code."""
    if "```" in text:
        return True
    if text.count("\n") < min_lines - 1:
        return False
    lines = [line for line in text.split("\n") if line.strip()]
    if len(lines) < min_lines:
        return False
    code = sum(1 for line in lines if _CODE_LINE.match(line) or _indented_code(line))
    return code * 2 >= len(lines)


def _indented_code(line: str) -> bool:
    # People rarely indent chat messages and editors always indent code; an indented list of words is still no code.
    return line.startswith(("\t", "  ")) and any(c in line for c in "=();{}[]<>")


def median_lengths(messages: Iterable[Message]) -> dict[str | None, float]:
    """Each sender's median length (in characters) of text messages."""
    lengths: dict[str | None, list[int]] = {}
    for m in messages:
        if m.kind == "text":
            lengths.setdefault(m.sender, []).append(len(m.text))
    return {sender: statistics.median(values) for sender, values in lengths.items()}


def clean(messages: Iterable[Message], config: CleanConfig | None = None) -> CleanResult:
    """Drop non-messages, links-only, code and long pastes; replace links in kept text; count each drop."""
    config = config or CleanConfig()
    messages = list(messages)
    medians = median_lengths(messages)
    limits = {sender: max(config.long_min_chars, config.long_factor * med) for sender, med in medians.items()}
    dropped: Counter = Counter()
    kept: list[Message] = []
    links = 0
    for m in messages:
        if m.kind in config.drop_kinds:
            dropped[m.kind] += 1
            continue
        text = m.text
        if not text.strip():
            dropped[EMPTY] += 1
            continue
        has_link = "://" in text or "www." in text or "WWW." in text  # cheap prefilter before the regex
        if has_link and config.drop_link_only and is_link_only(text):
            dropped[LINK_ONLY] += 1
            continue
        if config.drop_code and ("\n" in text or "```" in text) and looks_like_code(text, config.code_min_lines):
            dropped[CODE] += 1
            continue
        if len(text) > limits.get(m.sender, config.long_min_chars):
            dropped[LONG_PASTE] += 1
            continue
        if has_link and config.link_placeholder is not None:
            text, n = LINK.subn(config.link_placeholder, text)
            if n:
                links += n
                m = replace(m, text=text)
        kept.append(m)
    return CleanResult(kept, dropped, links)
