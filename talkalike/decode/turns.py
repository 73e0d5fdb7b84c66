"""The turn rules: which history fits the prompt, where the persona's turn ends and how it splits into messages.

A reply streams as events: ("text", chunk) while a message grows and ("end_message",) after each one. The separator
between messages (template.BUBBLE_MARK) and the text that ends the turn never reach the user. Every decoder (the
single stream, eval's batches) stops on `stop_token_ids` and on `ends_turn`, and splits text with `Splitter`.
"""

from typing import TYPE_CHECKING

from talkalike.errors import TalkalikeError
from talkalike.memory import recall_limit, recall_turns
from talkalike.template import BUBBLE_MARK, BUBBLE_SEP, chat_template, contact_line, render_prompt, stop_strings

if TYPE_CHECKING:
    from talkalike.decode.config import GenerationConfig
    from talkalike.decode.twin import Twin

Event = tuple  # ("text", chunk) or ("end_message",)
STOP_TAIL = 8  # tokens decoded to look for a stop string that a model wrote as text
# The conversation's latest turns that stay in a tight prompt before recalled exchanges give way: the message being
# answered and the exchange before it decide what a reply is about, so memory never crowds them out.
RECENT_TURNS = 3


def normalize_history(history: list[dict]) -> list[dict]:
    """Alternating user/assistant turns: consecutive messages of one side become one turn joined by the separator."""
    turns: list[dict] = []
    for message in history:
        role, content = message["role"], message["content"]
        if role not in ("user", "assistant"):
            raise TalkalikeError(f"unknown role {role!r}: a history holds 'user' and 'assistant' messages")
        if turns and turns[-1]["role"] == role:
            turns[-1] = {"role": role, "content": turns[-1]["content"] + BUBBLE_SEP + content}
        else:
            turns.append({"role": role, "content": content})
    # The chat templates insist the conversation opens with the other person; a leading persona turn is context we
    # cannot render, so it goes first, like any turn older than the window.
    while turns and turns[0]["role"] == "assistant":
        turns.pop(0)
    return turns


def prompt_messages(twin: "Twin", history: list[dict], config: "GenerationConfig") -> tuple[list, list, list]:
    """(system line, recalled turns, conversation turns): the three parts of a prompt, as training renders them.

    A history that opens with a system message keeps it (held-out rows carry the one they were built with);
    otherwise the run's contact line (`--as NAME` picks the name) when the run was trained with one."""
    system = [history[0]] if history and history[0]["role"] == "system" else []
    turns = normalize_history(history[len(system):])
    if turns and turns[-1]["role"] != "user":
        raise TalkalikeError("the history must end with the other person's message for the twin to answer it")
    if not system and twin.contacts is not None:
        others = [config.contact] if config.contact else twin.contacts[:1]
        system = [contact_line(twin.persona, others)] if others else []
    limit = recall_limit(history)  # a training row's turn recalls only from earlier conversations
    return system, recall_turns(twin.memory, turns, config.memories, limit.get("before"), limit.get("besides")), turns


def fit_messages(twin: "Twin", history: list[dict], config: "GenerationConfig") -> list[dict]:
    """The prompt's messages for `history`, dropping the oldest turns until prompt + reply fit the context window:
    first the conversation's oldest exchanges down to its RECENT_TURNS latest turns, then recalled ones, then older
    recent turns; the message being answered always stays."""
    return _fit(twin, history, config)[0]


def fit_prompt(twin: "Twin", history: list[dict], config: "GenerationConfig") -> list[int]:
    """Prompt ids for `history` (fit_messages rendered, with the persona's turn opened)."""
    return _fit(twin, history, config)[1]


def _fit(twin: "Twin", history: list[dict], config: "GenerationConfig") -> tuple[list[dict], list[int]]:
    """(messages, prompt ids) that fit: each candidate is rendered once, and the one that fits is returned as is."""
    system, recalled, turns = prompt_messages(twin, history, config)
    limit = min(config.max_context_tokens, twin.max_positions or config.max_context_tokens)
    budget = limit - config.max_new_tokens
    while True:
        messages = system + recalled + turns
        ids = render_prompt(messages, twin.tokenizer, twin.layout)
        if len(ids) <= budget:
            return messages, ids
        if len(turns) > RECENT_TURNS or (len(turns) > 1 and not recalled):
            # Drop the oldest exchange: a user turn and the persona's answer, so the history opens with the user.
            turns = turns[2:] if len(turns) > 2 else turns[1:]
        elif recalled:
            recalled = recalled[2:]
        else:
            raise TalkalikeError(
                f"the last message alone is {len(ids)} tokens, more than the {budget} the context window leaves "
                f"for history ({limit} - {config.max_new_tokens} for the reply); send a shorter message"
            )


def turn_stops(tokenizer, layout: str = "chat") -> list[str]:
    """The text that ends the persona's turn: template.stop_strings, plus the opening of the other side's next turn
    (a model that skips the end-of-turn marker and starts writing the other person's part has still finished)."""
    stops = stop_strings(tokenizer, layout)
    mine, theirs = "\u2063a\u2063", "\u2063b\u2063"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": mine}, {"role": "user", "content": theirs}],
        chat_template=chat_template(tokenizer, layout), tokenize=False)
    between = text.split(mine, 1)[1].split(theirs, 1)[0]
    for stop in stops:
        between = between.replace(stop, "")
    opener = between.strip()
    return stops + [opener] if opener else stops


def stop_token_ids(tokenizer, layout: str, model_eos: int | list[int] | None = None) -> frozenset[int]:
    """Token ids that end the persona's turn: end-of-sequence (the tokenizer's and the model's own) and single-token
    stop strings (<end_of_turn>)."""
    ids = set()
    for token_id in (tokenizer.eos_token_id, model_eos):
        if isinstance(token_id, int):
            ids.add(token_id)
        elif token_id:
            ids.update(token_id)
    for stop in stop_strings(tokenizer, layout):
        encoded = tokenizer.encode(stop, add_special_tokens=False)
        if len(encoded) == 1:
            ids.add(encoded[0])
    return frozenset(ids)


def separator_ids(tokenizer) -> list[int]:
    """The token ids of the message separator's mark (not its newlines, which a looping reply repeats too)."""
    return tokenizer.encode(BUBBLE_MARK, add_special_tokens=False)


def vocabulary(twin: "Twin", prompts: list[list[int]], config: "GenerationConfig") -> list[int] | None:
    """The token ids a reply may use (config.own_words), sorted: the persona's own (Twin.own_tokens) and every token of
    `prompts`, so that names and words of the conversation itself can be answered with. None: the whole vocabulary
    (own_words off, or a twin without memory to learn the persona's words from)."""
    own = twin.own_tokens() if config.own_words else None
    return None if own is None else sorted(own.union(*map(set, prompts)))


def message_cap(twin: "Twin", config: "GenerationConfig") -> int:
    """Messages per turn at most: the config's, else the persona's own 90th percentile (0: no cap)."""
    return config.max_messages if config.max_messages is not None else twin.max_messages


def ends_turn(tokenizer, tokens: list[int], text_stops: list[str]) -> bool:
    """Whether the reply so far has written a stop string as text (looking at its last STOP_TAIL tokens)."""
    tail = tokenizer.decode(tokens[-STOP_TAIL:], skip_special_tokens=False)
    return any(stop in tail for stop in text_stops)


class Splitter:
    """Turns the reply text as it grows into message events; holds back whatever may still become a separator or
    a stop string, so neither ever reaches the user."""

    def __init__(self, stops: list[str], max_messages: int = 0, line_breaks: bool = True):
        # Marks that close a message: the separator's, and a line break when the persona writes none inside one
        # (Twin.line_breaks); any other mark (a stop string) ends the turn.
        self.closing = (BUBBLE_MARK,) if line_breaks else (BUBBLE_MARK, "\n")
        self.marks = [*self.closing] + [s for s in stops if s]
        # Every proper prefix of a mark, and where one can start: feed() then checks the few characters at the end
        # of what it holds instead of trying each prefix of each mark (it runs once per token).
        self.prefixes = {mark[:n] for mark in self.marks for n in range(1, len(mark))}
        self.longest = max(map(len, self.prefixes), default=0)
        self.firsts = {mark[0] for mark in self.marks}
        self.max_messages = max_messages  # the turn ends at the separator after this many messages (0: no cap)
        self.sent = 0  # messages closed so far
        self.pending = ""  # text received but not yet shown
        self.open = False  # whether the current message has shown any text
        self.done = False  # a stop string (or the message cap) was seen: the turn is over

    def feed(self, text: str) -> list[Event]:
        """Events for `text`, the next piece of the reply."""
        events: list[Event] = []
        if self.done:
            return events
        self.pending += text
        while True:
            found = [(self.pending.find(s), s) for s in self.marks if s in self.pending]
            if not found:
                break
            # the first mark; of two at one place the longer (a stop string that begins with a line break)
            at, _, mark = min((at, -len(mark), mark) for at, mark in found)
            self._show(self.pending[:at].rstrip(), events)
            self._close(events)
            self.pending = self.pending[at + len(mark):]
            if mark not in self.closing or (self.max_messages and self.sent >= self.max_messages):
                self.done = True
                return events
        # Hold back a tail that could be the start of a mark, and trailing whitespace (it may precede a separator).
        hold = self._partial_mark()
        shown = self.pending[: len(self.pending) - hold].rstrip()
        self._show(shown, events)
        self.pending = self.pending[len(shown):]
        return events

    def _partial_mark(self) -> int:
        """The length of the longest end of `pending` that is the start of a mark (0: none)."""
        tail = self.pending[-self.longest:] if self.longest else ""
        if not any(first in tail for first in self.firsts):
            return 0
        return max((n for n in range(1, len(tail) + 1) if tail[-n:] in self.prefixes), default=0)

    def finish(self) -> list[Event]:
        """Events for the end of the reply; a half-written separator or stop at the very end is dropped."""
        events: list[Event] = []
        if not self.done:
            tail = self.pending
            for mark in self.marks:
                for n in range(len(mark) - 1, 0, -1):
                    if tail.endswith(mark[:n]):
                        tail = tail[:-n]
                        break
            self._show(tail.rstrip(), events)
            self._close(events)
        self.pending, self.done = "", True
        return events

    def _show(self, text: str, events: list[Event]) -> None:
        if not self.open:
            text = text.lstrip()
        if text:
            events.append(("text", text))
            self.open = True

    def _close(self, events: list[Event]) -> None:
        if self.open:
            events.append(("end_message",))
            self.open = False
            self.sent += 1


def collect_messages(events) -> list[str]:
    """The separate messages of one turn, from stream_reply's events."""
    messages, current = [], []
    for event in events:
        if event[0] == "text":
            current.append(event[1])
        elif event[0] == "end_message":
            messages.append("".join(current))
            current = []
    if current:
        messages.append("".join(current))
    return messages


def split_reply(text: str, stops: list[str], max_messages: int = 0, line_breaks: bool = True) -> list[str]:
    """A whole generated text cut at the first stop string (or after `max_messages`) and split into messages (at
    line breaks too unless `line_breaks`)."""
    splitter = Splitter(stops, max_messages, line_breaks)
    return collect_messages(splitter.feed(text) + splitter.finish())
