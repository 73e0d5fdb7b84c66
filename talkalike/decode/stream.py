"""One streaming function feeds the terminal chat, the web page and the OpenAI-compatible API.

`stream_reply(twin, history, config)` yields ("text", chunk) and ("end_message",) events (turns.py): the persona's
turn, split into the messages the person would send, stopping at the end of the turn. `reply` collects one turn.
A `Usage` passed in is filled in as the reply runs: its tokens and why it ended, for the APIs' usage and
finish_reason.
`tokens` is the one token loop, over any engine (engines/): prefill once, then one step per token, sampling with
the run's repetition penalty, temperature and top-p (sampling.py).

    twin = Twin.from_run(run_dir, home)
    for event in stream_reply(twin, [{"role": "user", "content": "hi"}], twin.defaults):
        ...
"""

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from talkalike.decode.config import GenerationConfig
from talkalike.decode.engines import Engine
from talkalike.decode.language import MessageStart, Steer, foreign_emoji, habit_columns
from talkalike.decode.sampling import Sampler, outside, word_classes
from talkalike.decode.turns import (
    Event,
    Splitter,
    collect_messages,
    fit_prompt,
    message_cap,
    separator_ids,
    turn_stops,
    vocabulary,
)
from talkalike.decode.twin import Twin


@dataclass
class Usage:
    """What one reply took, counted with the tokenizer while it streams (read it once the events have ended)."""

    prompt_tokens: int = 0  # the prompt as fitted to the context window, not the whole history sent
    completion_tokens: int = 0
    finish_reason: str = "stop"  # "length" when max_new_tokens cut the turn before it ended


def tokens(engine: Engine, prompt_ids: list[int], max_new_tokens: int, sample: Callable, stops: set[int]
           ) -> Iterator[int]:
    """Token ids after the prompt until a stop id or max_new_tokens; `sample(logits, seen) -> token tensor`, with
    `seen` [1, n] the ids so far (prompt included)."""
    import torch

    assert len(prompt_ids) + max_new_tokens <= engine.max_len, "the engine's cache is too short for this reply"
    # On a GPU the host learns token t through a pinned buffer and an event while the device already runs step
    # t+1: streaming and the stop check then cost no device idle time. On a CPU the host is the device.
    late = engine.device.type == "cuda"
    if late:
        host = torch.empty(1, dtype=torch.long, pin_memory=True)
        ready = torch.cuda.Event()
    with torch.inference_mode():
        seen = torch.tensor([prompt_ids], device=engine.device)
        token = sample(engine.prefill(prompt_ids), seen).view(1)
        for _ in range(max_new_tokens):
            if late:
                host.copy_(token, non_blocking=True)
                ready.record()
            else:
                token_id = int(token)
                if token_id in stops:
                    return
                yield token_id
            seen = torch.cat([seen, token.view(1, 1)], dim=1)
            following = sample(engine.step(token), seen).view(1)
            if late:
                ready.synchronize()
                token_id = int(host[0])
                if token_id in stops:
                    return
                yield token_id
            token = following


def stream_reply(twin: Twin, history: list[dict], config: GenerationConfig | None = None,
                 use_adapter: bool = True, usage: Usage | None = None, draw: "Draw | None" = None
                 ) -> Iterator[Event]:
    """The persona's next turn as events: ("text", chunk) while a message grows, ("end_message",) after each one.
    `draw` is where the reply's token ids come from (default `draw_alone`; serve's batch, live.py, is another)."""
    from talkalike.prepare.privacy import mask_stream

    # Chat, serve and the API all show what this yields: personal data the model writes is masked first.
    return mask_stream(_stream_reply(twin, history, config, use_adapter, usage or Usage(), draw or draw_alone))


# draw(twin, prompt_ids, config, use_adapter) -> the reply's token ids, ending at a stop id or max_new_tokens
# (the history answered, for language steering, comes last)
Draw = Callable[[Twin, list[int], GenerationConfig, bool, list[dict] | None], Iterator[int]]


def draw_alone(twin: Twin, prompt_ids: list[int], config: GenerationConfig, use_adapter: bool,
               history: list[dict] | None = None) -> Iterator[int]:
    """One reply's token ids on the twin's engine, sampled with the config's settings."""
    engine = twin.engine(len(prompt_ids) + config.max_new_tokens, use_adapter)
    sampler, blocked = reply_sampler(twin, engine.device, prompt_ids, config, history)
    temperature = [config.temperature]
    start = len(prompt_ids)
    with twin.adapter(use_adapter):
        yield from tokens(engine, prompt_ids, config.max_new_tokens,
                          lambda logits, seen: sampler(logits, seen, temperature, [seen[0, start:]], blocked),
                          twin.stop_ids)


def reply_sampler(twin: Twin, device, prompt_ids: list[int], config: GenerationConfig,
                  history: list[dict] | None = None):
    """(the Sampler of one reply to `history`, the [vocab] mask of tokens it may not use or None): every rule that
    keeps a reply in character (decode/sampling.py, decode/language.py) on `device`."""
    steer, shares = Steer.for_reply(twin, device, config, history)
    sampler = Sampler(config, twin.vocab_size, rows=1, device=device,
                      separator_ids=separator_ids(twin.tokenizer), steer=steer, shares=shares,
                      habits=habit_columns(twin, device, config),
                      words=word_classes(twin.tokenizer, twin.vocab_size, device, config),
                      starts=MessageStart.of(twin.tokenizer), banned=foreign_emoji(twin, device, config))
    return sampler, outside(vocabulary(twin, [prompt_ids], config), twin.vocab_size, device)


def _stream_reply(twin: Twin, history: list[dict], config: GenerationConfig | None, use_adapter: bool,
                  usage: Usage, draw: Draw = draw_alone) -> Iterator[Event]:
    config = config or twin.defaults
    prompt_ids = fit_prompt(twin, history, config)
    usage.prompt_tokens = len(prompt_ids)
    splitter = Splitter(turn_stops(twin.tokenizer, twin.layout), message_cap(twin, config), twin.line_breaks)
    text = Detokenizer(twin.tokenizer)
    written = 0
    # The token source is closed as soon as the turn ends (a stop string, the message cap) or the reader leaves.
    with contextlib.closing(draw(twin, prompt_ids, config, use_adapter, history)) as token_ids:
        for token_id in token_ids:
            written += 1
            usage.completion_tokens = written
            delta = text.add(token_id)
            if delta:
                yield from splitter.feed(delta)
                if splitter.done:
                    return
        yield from splitter.feed(text.rest())
        # The token loop ran out with neither a stop token nor the end of the turn: max_new_tokens cut the reply.
        if written == config.max_new_tokens and not splitter.done:
            usage.finish_reason = "length"
        yield from splitter.finish()


class Detokenizer:
    """The reply's text as its tokens arrive, exactly as decoding the whole reply after each token would give it,
    for a few tokens' work per token instead of the whole reply's.

    What decoding the whole reply does: byte-level tokens can split a character (an emoji, a Hebrew letter), so
    text that ends in U+FFFD waits for the next token, and new text is shown only while the decoded reply extends
    what was shown. Here only a window of the latest tokens is decoded, and new text is the window's text past
    that of its first tokens (the diff cancels a decoder's stripped leading space). The window starts where
    shown text ended: there the text decoded so far is final, unless a byte-fallback token (`<0x..>`, which
    combines with the byte tokens after it) ends it; such a start is skipped. A tokenizer whose decode rewrites
    spaces across tokens (clean_up_tokenization_spaces), or a window whose text stops extending what was shown,
    decodes the whole reply every token, as before. (tokenizers' DecodeStream raises on the latter and ignores
    byte-fallback groups, so it would not match the whole-reply text.)"""

    WINDOW = 16  # tokens decoded at most per step before the window's start moves up

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.start = 0  # the window's first token
        self.read = 0  # tokens whose text has been shown
        self.previous = 0  # `read` at the show before the last one: where the window may move to
        self.prefix = ""  # decode(ids[start:read])
        self.whole = bool(tokenizer.clean_up_tokenization_spaces)  # decode the whole reply, as before
        self.shown: list[str] = []  # every piece returned, for the switch to `whole`

    def add(self, token_id: int) -> str:
        """The new text that `token_id` completes ("" while a character or a word is still incomplete)."""
        self.ids.append(token_id)
        if self.whole:
            return self._add_whole()
        window = self._decode(self.start)
        if window.endswith("\ufffd"):
            return ""
        if not window.startswith(self.prefix):
            self.whole = True
            return self._add_whole()
        delta = window[len(self.prefix):]
        self.previous, self.read, self.prefix = self.read, len(self.ids), window
        if len(self.ids) - self.start > self.WINDOW and self.previous > self.start and \
                not _byte_token(self.tokenizer, self.ids[self.previous - 1]):
            prefix = self._decode(self.previous)
            if prefix:  # an empty one could not show a decoder's stripped leading space
                self.start, self.prefix = self.previous, prefix
        self.shown.append(delta)
        return delta

    def rest(self) -> str:
        """The text after the last shown piece once the reply has ended (a trailing U+FFFD included)."""
        if self.whole:
            decoded, text = self._decode(0), "".join(self.shown)
            return decoded[len(text):] if decoded.startswith(text) else ""
        window = self._decode(self.start)
        return window[len(self.prefix):] if window.startswith(self.prefix) else ""

    def _add_whole(self) -> str:
        decoded, text = self._decode(0), "".join(self.shown)
        if decoded.endswith("\ufffd") or not decoded.startswith(text):
            return ""
        self.shown.append(decoded[len(text):])
        return self.shown[-1]

    def _decode(self, start: int) -> str:
        return self.tokenizer.decode(self.ids[start:], skip_special_tokens=False)


def _byte_token(tokenizer, token_id: int) -> bool:
    """Whether the token is a byte-fallback token (`<0xE2>`): its text depends on the byte tokens next to it."""
    token = tokenizer.convert_ids_to_tokens(token_id)
    return isinstance(token, str) and len(token) == 6 and token.startswith("<0x") and token.endswith(">")


def reply(twin: Twin, history: list[dict], config: GenerationConfig | None = None,
          use_adapter: bool = True) -> list[str]:
    """The persona's next turn as a list of messages."""
    return collect_messages(stream_reply(twin, history, config, use_adapter))
