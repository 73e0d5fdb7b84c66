"""Each message opens in the script the persona would open it in: a bias on a message's first token.

A small tuned model drifts toward its majority language: on the sample, the twin wrote Hebrew in 19% of its messages
and Noa in 29%. The persona's own replies in memory say, for the script the incoming message is written in, how
often one of their messages opens in their other script (Hebrew, Arabic, Cyrillic, ...) rather than in Latin letters.
At each message's first token, the sampler rescales the two scripts' probability mass, at the sampling temperature, to
that share. Every other token (emoji, digits, punctuation) keeps its own mass. Greedy rows are left alone, and so is a
persona who writes in one script.

    steer = Steer.of(twin)                         # None: nothing to steer (one script, no memory)
    share = steer.share(history)                   # for this conversation's latest message
    steer.apply(logits, [share], [1.0], [reply])   # in place, on rows whose reply is at a message's start

Habits get the same kind of care at every token (`keep_mass`): a temperature under 1 makes replies coherent but
sharpens each draw toward the majority, plain text, and the sample's twin put an emoji in 20% of its messages at
temperature 0.5 against Noa's 38%, and laughed in 14% against her 27%. The tokens that write an emoji, and those that
write a laugh ("haha", "lol", "jaja"), are drawn with their temperature-1 odds, where a trained model's odds are its
training data's: as often as the persona uses them, and in the persona's own mix (at 0.5 the twin wrote "lol" three
times as often as Noa and her "💀" a third as often). The choice among the other tokens stays sharpened.
"""

import functools
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Any

from talkalike.decode.config import HABIT_SCALES

LATIN = "LATIN"
MIN_MESSAGES = 20  # persona messages opening in a letter needed for a share of their own; else the overall share
MIN_SHARE = 0.02  # a second script opening fewer of the persona's messages than this is not steered toward
MAX_SHIFT = 4.0  # a script's mass is scaled by at most e^4 either way: a nudge toward the persona's mix
# keep_mass and the steer on a CUDA device as one Triton kernel each (benchmarks/gpu_sampler.py times both ways);
# each has matched the torch ops on a GPU (tests/test_gpu.py)
FUSED_HABITS = True
FUSED_STEER = True
BYTE_STAND_INS = re.compile("[\u00a1-\u0143]")  # how a byte-level BPE spells the bytes outside printable ASCII


def script(text: str) -> str | None:
    """The script of the first letter in `text` ("LATIN", "HEBREW", "CYRILLIC", ...); None without a letter."""
    for ch in text:
        if ch.isalpha():
            name = unicodedata.name(ch, "")
            return name.split(" ", 1)[0] if name else None
    return None


def main_script(text: str) -> str | None:
    """The script most of `text`'s letters are written in; None without a letter."""
    counts = Counter(script(ch) for ch in text if ch.isalpha())
    counts.pop(None, None)
    return counts.most_common(1)[0][0] if counts else None


def opening_shares(pairs: list[tuple[str, str]]) -> tuple[str, dict[str, tuple[float, float]]] | None:
    """From (incoming message, persona's reply messages) pairs: the persona's other script, and for each incoming
    script ("other", "latin", "any") the share of their messages that open in it among those opening in it or in
    Latin letters, as (the turn's first message, its later ones): people often answer in the message's language and
    switch after (on the sample, Noa opened 11% of her first messages in Hebrew and 26% of her later ones). None when
    the persona opens messages in one script only."""
    openings = Counter(s for _, messages in pairs for s in map(script, messages) if s)
    others = [(n, s) for s, n in openings.items() if s != LATIN]
    total = sum(openings.values())
    if not others or not total:
        return None
    count, other = max(others)
    if count / total < MIN_SHARE:
        return None
    # (incoming script, 0 for the turn's first message or 1 for a later one) -> [opening in `other`, in either]
    tallies = {(key, later): [0, 0] for key in ("other", "latin", "any") for later in (0, 1)}
    for incoming, messages in pairs:
        key = "other" if main_script(incoming) == other else "latin"
        for position, opened in enumerate(map(script, messages)):
            if opened in (other, LATIN):
                for k in (key, "any"):
                    tallies[k, min(position, 1)][0] += opened == other
                    tallies[k, min(position, 1)][1] += 1

    def share(*counts: list[int]) -> float | None:
        hits, n = sum(c[0] for c in counts), sum(c[1] for c in counts)
        return hits / n if n >= MIN_MESSAGES else None

    overall = share(tallies["any", 0], tallies["any", 1])
    shares = {}
    for key in ("other", "latin", "any"):  # too few messages: the key's share over both positions, else overall
        whole = share(tallies[key, 0], tallies[key, 1])
        whole = overall if whole is None else whole
        shares[key] = tuple(whole if (part := share(tallies[key, later])) is None else part for later in (0, 1))
    return other, shares


def _memory_shares(memory):
    """opening_shares over a memory's exchanges, computed once per memory."""
    from talkalike.template import split_bubbles

    if not hasattr(memory, "opening_shares"):
        rows = memory.connection.execute("SELECT context, reply FROM exchanges").fetchall()
        memory.opening_shares = opening_shares([(context, split_bubbles(reply)) for context, reply in rows])
    return memory.opening_shares


@functools.lru_cache(maxsize=4)
def token_groups(tokenizer, vocab: int, other: str) -> tuple:
    """Per token id: 1 if its text opens in Latin letters, 2 if in `other`, 0 otherwise (special and byte tokens
    included), as a tuple; read once per tokenizer."""
    special = set(tokenizer.all_special_ids)
    pieces = tokenizer.convert_ids_to_tokens(list(range(min(vocab, len(tokenizer)))))
    groups = []
    for i, piece in enumerate(pieces):
        piece = piece or ""
        if i in special or piece.startswith("<") and piece.endswith(">"):
            groups.append(0)  # special and byte-fallback tokens (<0xD7>) open nothing
            continue
        opened = script(piece)
        if opened is None or opened == LATIN and not piece.replace("\u2581", "").replace("\u0120", "").isascii():
            # A byte-level BPE (Llama 3, Qwen) spells other scripts in Latin-1 stand-ins: read what the token writes.
            opened = script(tokenizer.decode([i]))
        groups.append(1 if opened == LATIN else 2 if opened == other else 0)
    return tuple(groups) + (0,) * (vocab - len(groups))


@functools.lru_cache(maxsize=4)
def _token_masks(tokenizer, vocab: int, other: str, device):
    """token_groups as a [vocab, 2] float tensor on `device` (Latin, `other`), built once, not at every reply."""
    import torch

    groups = torch.tensor(token_groups(tokenizer, vocab, other), dtype=torch.long, device=device)
    return torch.stack([groups == 1, groups == 2], dim=1).float()


class MessageStart:
    """Whether a reply so far ends where a message starts: nothing written yet, or the separator's last tokens
    (`tail`) just written. For a device tensor the answer is a 0-dim tensor, so that a GPU's stream never waits for
    the host; a host list or a CPU tensor gives a bool.

        start = MessageStart.of(tokenizer)
        start(reply_ids)
    """

    def __init__(self, tail: list[int]):
        self.tail = list(tail)
        self._tails: dict = {}  # the tail as a tensor, per device

    @classmethod
    def of(cls, tokenizer) -> "MessageStart":
        """After the message separator's last two tokens, one shared instance per tokenizer."""
        from talkalike.template import BUBBLE_SEP

        return message_start(tokenizer.encode(BUBBLE_SEP, add_special_tokens=False)[-2:])

    def columns(self, to_sub) -> "MessageStart":
        """The same over a restricted head's columns (`to_sub`: id -> column)."""
        return message_start([int(to_sub[t]) for t in self.tail])

    def __call__(self, reply):
        import torch

        n = len(self.tail)
        if not torch.is_tensor(reply):
            return not reply or list(reply[-n:]) == self.tail
        if reply.numel() == 0:
            return True
        if reply.numel() < n:
            return False
        tail = self._tails.get(reply.device)
        if tail is None:  # made once per device: a host list copied to a GPU at every token would wait for it
            tail = self._tails[reply.device] = torch.tensor(self.tail, device=reply.device)
        start = (reply[-n:] == tail).all()
        return bool(start) if reply.device.type == "cpu" else start


def message_start(tail: list[int]) -> MessageStart:
    """The MessageStart of `tail`, one instance per tail: its tail reaches each device once, not at every reply."""
    return _message_start(tuple(tail))


@functools.lru_cache(maxsize=16)
def _message_start(tail: tuple[int, ...]) -> MessageStart:
    return MessageStart(list(tail))


@dataclass
class Steer:
    """The persona's opening-script shares and the vocabulary's script groups, on the decoding device."""

    other: str
    shares: dict[str, tuple[float, float]]  # incoming script -> (a turn's first message, its later ones)
    masks: Any  # [vocab, 2] float: column 0 the Latin tokens, column 1 the `other` script's
    start_tail: list[int]  # the message separator's last tokens: a new message starts right after them

    @classmethod
    def of(cls, twin, device) -> "Steer | None":
        """The twin's steer, from the persona's replies in its memory; None when there is nothing to steer."""
        import torch

        if twin.memory is None:
            return None
        found = _memory_shares(twin.memory)
        if found is None:
            return None
        other, shares = found
        masks = _token_masks(twin.tokenizer, twin.vocab_size, other, torch.device(device))
        return cls(other=other, shares=shares, masks=masks, start_tail=MessageStart.of(twin.tokenizer).tail)

    @classmethod
    def for_reply(cls, twin, device, config, history: list[dict] | None) -> tuple["Steer | None", list | None]:
        """(steer, [share]) for one reply to `history` when config.steer_language is on, else (None, None)."""
        steer = cls.of(twin, device) if config.steer_language else None
        return (steer, [steer.share(history or [])]) if steer is not None else (None, None)

    def share(self, history: list[dict]) -> tuple[float, float]:
        """The share of messages opening in the other script, for the conversation's latest incoming message: (the
        turn's first message, its later ones)."""
        incoming = next((m.get("content") or "" for m in reversed(history) if m.get("role") == "user"), "")
        return self.shares["other" if main_script(incoming) == self.other else "latin"]

    def at_start(self, reply):
        """MessageStart over the separator's tail (a bool, or a 0-dim device tensor for a device reply)."""
        return message_start(self.start_tail)(reply)

    def columns(self, keep, to_sub) -> "Steer":
        """The same steer over a restricted head's columns (`keep`: the token ids the head computes, `to_sub`: id ->
        column), whose replies hold column numbers."""
        return Steer(self.other, self.shares, self.masks[keep], [int(to_sub[t]) for t in self.start_tail])

    def apply(self, logits, shares: list[float | None], temperatures: list[float], replies: list,
              scales: list | None = None) -> None:
        """Rescale, in place in `logits` [rows, vocab], each sampled row at a message start to its share (a pair:
        the turn's first message, the later ones; or one share for every message); `replies` are each row's ids so
        far, host lists or device tensors (then the start is a device-side condition).
        `scales`: each row's temperature at this token where it differs from `temperatures` (a message's opener,
        Sampler), numbers or 0-dim device tensors."""
        import torch

        for row, (share, temperature, reply) in enumerate(zip(shares, temperatures, replies, strict=True)):
            start = self.at_start(reply) if share is not None and temperature > 0 else False
            if start is False:
                continue
            temperature = temperature if scales is None else scales[row]
            if isinstance(share, tuple):  # a reply's length is known on the host, on a GPU too
                share = share[0] if len(reply) == 0 else share[1]
            line = logits[row]
            if line.is_cuda and FUSED_STEER and line.is_contiguous():  # one kernel (engines/triton_sampler.py)
                from talkalike.decode.engines.triton_sampler import steer_fused

                steer_fused(line, self.masks, share, temperature, start, MAX_SHIFT)
                continue
            probs = torch.softmax(line / temperature, dim=-1)
            latin, other = (probs @ self.masks).clamp_min(1e-12).unbind()
            both = latin + other
            shifts = torch.stack([((1 - share) * both / latin).log(), (share * both / other).log()])
            shifts = shifts.clamp(-MAX_SHIFT, MAX_SHIFT).nan_to_num(0.0) * temperature
            if start is not True:  # a device-side condition: no shift unless it holds
                shifts = shifts * start
            line.add_(self.masks @ shifts)


@functools.lru_cache(maxsize=4)
def habit_token_ids(tokenizer, vocab: int) -> dict[str, tuple[int, ...]]:
    """The ids of the tokens whose text holds an emoji, and of those whose text is a laugh by itself ("haha", "lol",
    "חחח"; special tokens aside), read once per tokenizer. A byte-level vocabulary's pieces of one emoji's bytes, and
    a laugh spelled over several tokens, write none alone and are not counted."""
    from talkalike.message import EMOJI_CORE_RE, LAUGHTER

    laughs = [pattern for name, pattern in LAUGHTER.items() if not EMOJI_CORE_RE.search(name)]  # emoji laughs are emoji
    laughter = [i for i, text in _token_texts(tokenizer, vocab) if not EMOJI_CORE_RE.search(text) and text.strip()
                and any(p.fullmatch(text.strip()) for p in laughs)]
    return {"emoji": tuple(emoji_tokens(tokenizer, vocab)), "laughter": tuple(laughter)}


@functools.lru_cache(maxsize=4)
def emoji_tokens(tokenizer, vocab: int) -> dict[int, frozenset[str]]:
    """Each token whose text holds an emoji, with the emoji it writes (their core characters: "🤦", "♀", a skin
    tone), read once per tokenizer."""
    from talkalike.message import EMOJI_CORE_RE

    return {i: frozenset(found) for i, text in _token_texts(tokenizer, vocab) if (found := EMOJI_CORE_RE.findall(text))}


@functools.lru_cache(maxsize=2)
def _token_texts(tokenizer, vocab: int) -> list[tuple[int, str]]:
    """(id, the text it writes) of every token but the special ones, spaces for word markers."""
    special = set(tokenizer.all_special_ids)
    pieces = tokenizer.convert_ids_to_tokens(list(range(min(vocab, len(tokenizer)))))
    texts = []
    for i, piece in enumerate(pieces):
        if i in special or not piece:
            continue
        # A piece writes itself (its word marker a space) unless it holds a byte-level BPE's stand-ins for bytes
        # (U+00A1-U+0143: Llama 3 and Qwen spell emoji and Hebrew so); only those are decoded. Decoding all 262k
        # tokens one by one took 4 s at the first reply.
        text = piece.replace("\u2581", " ").replace("\u0120", " ")
        if BYTE_STAND_INS.search(text):
            text = tokenizer.decode([i])
        texts.append((i, text))
    return texts


def foreign_emoji(twin, device, config) -> "Any | None":
    """The ids of the tokens that write an emoji the persona never wrote (Twin.own_emoji), as one tensor on
    `device`, when config.own_emoji is on and the twin has a memory to read the persona's emoji from; else None.
    A byte-level vocabulary (Llama 3, Qwen) spells most emoji over several byte tokens, none an emoji alone: there
    only the emoji that have a token of their own are held back."""
    own = twin.own_emoji() if config.own_emoji else None
    return None if own is None else _foreign_tensor(twin.tokenizer, twin.vocab_size, own, device)


@functools.lru_cache(maxsize=8)
def _foreign_tensor(tokenizer, vocab: int, own: frozenset[str], device):
    # One tensor per persona and device: every reply's Sampler then holds the same one, and serve's rows stay of one
    # kind (sampling.Together draws a kind in one call).
    import torch

    ids = [i for i, found in emoji_tokens(tokenizer, vocab).items() if not found <= own]
    return torch.tensor(ids, dtype=torch.long, device=device) if ids else None


def habit_columns(twin, device, config) -> "list | None":
    """The habit classes' token ids, one tensor each on `device` in HABITS order (empty where the vocabulary writes
    none), when config.keep_habits is on, else None."""
    import torch

    if not config.keep_habits:
        return None
    return _habit_tensors(twin.tokenizer, twin.vocab_size, torch.device(device))


HABITS = tuple(HABIT_SCALES)  # habit_token_ids's classes, in the order of habit_columns and habit_scales


def habit_scales(config) -> tuple[float, ...]:
    """Each habit class's mass multiplier (config.emoji_scale, config.laughter_scale), in HABITS order."""
    return tuple(getattr(config, field) for field in HABIT_SCALES.values())


@functools.lru_cache(maxsize=4)
def _habit_tensors(tokenizer, vocab: int, device) -> list:
    import torch

    found = habit_token_ids(tokenizer, vocab)
    return [torch.tensor(found[name], dtype=torch.long, device=device) for name in HABITS]


def keep_mass(logits, classes: list, temperatures, work=None) -> None:
    """Rewrite, in place in `logits` [rows, vocab], the columns of the habit classes (`classes`: disjoint id tensors)
    so that at the row's temperature each habit token is drawn with its temperature-1 odds against the rest of the
    vocabulary: each class holds together the probability it holds at temperature 1, and the choice inside it is the
    temperature-1 choice too (Noa's "lol", "haha", "💀" in her own proportions, not the likeliest one every time).
    `temperatures`: one number for every row, or a [rows, 1] tensor (1 for greedy rows, which this leaves alone).

    In closed form: with T the temperature and L_rest(x) the log-sum-exp of x over the other columns, a habit token's
    logit l becomes T l + T (L_rest(l / T) - L_rest(l)); at temperature T its weight is then e^l e^(L_rest(l / T)) /
    e^(L_rest(l)), its temperature-1 odds against the rest, whose own weights stay as they are. A class's mass moves
    by at most e^MAX_SHIFT either way (on the group sample, unbounded, the twin put an emoji in 16% of its messages,
    Lucía in 5%; bounded, 10%). Two passes over the vocabulary (its log-normaliser at 1 and at T). Device ops only:
    nothing waits for the host. `work`: a reused buffer shaped like `logits` (a fresh 262k-wide tensor per step
    costs page faults on a CPU).
    """
    import torch

    classes = [ids for ids in classes if ids.numel()]
    if not classes:
        return
    if logits.is_cuda and FUSED_HABITS:  # one kernel instead of some sixty (engines/triton_sampler.py)
        from talkalike.decode.engines.triton_sampler import keep_mass_fused

        keep_mass_fused(logits, classes, temperatures, MAX_SHIFT)
        return
    ids = torch.cat(classes) if len(classes) > 1 else classes[0]
    scale = temperatures[:, 0] if torch.is_tensor(temperatures) else temperatures
    work = torch.empty_like(logits) if work is None else work
    peak = logits.amax(-1, keepdim=True)
    whole_one = torch.sub(logits, peak, out=work).exp_().sum(-1).log() + peak[:, 0]
    whole_t = torch.sub(logits, peak, out=work).div_(temperatures).exp_().sum(-1).log() + peak[:, 0] / scale
    chosen = logits.index_select(1, ids)
    habits_one = torch.logsumexp(chosen, -1)
    habits_t = torch.logsumexp(chosen / temperatures, -1)

    def log_rest(whole, habits):  # log-sum-exp over the other columns, from the whole's and the habits'
        return whole + torch.log((-torch.expm1(habits - whole)).clamp_min(1e-12))

    shift = ((log_rest(whole_t, habits_t) - log_rest(whole_one, habits_one)) * scale).nan_to_num(0.0, 0.0, 0.0)
    moved = chosen * temperatures + shift[:, None]
    # A nudge, not a rewrite: each class's mass moves by at most e^MAX_SHIFT either way (a class the temperature
    # had all but silenced is not made as likely as the rest of the vocabulary says it is at 1).
    start = 0
    for size in [c.numel() for c in classes]:
        part = slice(start, start + size)
        start += size
        before = torch.logsumexp(chosen[:, part] / temperatures, -1)
        after = torch.logsumexp(moved[:, part] / temperatures, -1)
        change = (after - before).nan_to_num(0.0, 0.0, 0.0)
        excess = change - change.clamp(-MAX_SHIFT, MAX_SHIFT)
        moved[:, part] -= (excess * scale)[:, None]
    logits.index_copy_(1, ids, moved)
