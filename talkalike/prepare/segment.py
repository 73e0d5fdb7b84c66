"""Conversations and turns: the segment stage between privacy and the dataset.

A chat's messages become conversations (a new one starts after `GAP` of silence) made of turns (consecutive messages of
one sender, with the boundaries between those messages kept). Conversations the persona cannot learn from are dropped
and counted. Used by `talkalike dataset`; try it with

    from talkalike.prepare.segment import segment, keep_usable
    conversations = segment(messages, chat="Noa")
    kept, dropped = keep_usable(conversations, persona="Noa")
"""

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from talkalike.message import Message

GAP = timedelta(minutes=60)  # the original splits conversations after an hour of silence

# Why a conversation is dropped; the keys appear in stats.json under dropped.segment.
NO_PERSONA = "no_persona_message"  # nothing to learn: the persona never speaks
ONE_TURN = "fewer_than_2_turns"  # a monologue has no reply to learn


@dataclass(frozen=True, slots=True)
class Turn:
    """Consecutive messages of one sender; each message is kept separate because people send bursts of short ones."""

    sender: str
    messages: tuple[str, ...]
    start: datetime
    end: datetime


@dataclass(frozen=True, slots=True)
class Conversation:
    """Turns of one chat with no silence longer than the gap between them."""

    chat: str
    turns: tuple[Turn, ...]
    start: datetime
    end: datetime

    def senders(self) -> set[str]:
        """Everyone who speaks in this conversation."""
        return {turn.sender for turn in self.turns}


def segment(messages: Iterable[Message], chat: str = "", gap: timedelta = GAP) -> list[Conversation]:
    """Cut one chat's messages (in time order) into conversations of turns; a silence longer than `gap` starts a new one."""
    conversations: list[Conversation] = []
    turns: list[Turn] = []
    sender: str | None = None
    bodies: list[str] = []
    first = last = None  # the current turn's first and last message times
    for message in messages:
        # A silence of exactly `gap` still continues the conversation; a negative step (a clock change in the export)
        # never splits one.
        if last is not None and message.time - last > gap:
            turns.append(Turn(sender, tuple(bodies), first, last))
            conversations.append(Conversation(chat, tuple(turns), turns[0].start, last))
            turns, sender, bodies, first = [], None, [], None
        if message.sender != sender or first is None:
            if first is not None:
                turns.append(Turn(sender, tuple(bodies), first, last))
            sender, bodies, first = message.sender, [], message.time
        bodies.append(message.text)
        last = message.time
    if first is not None:
        turns.append(Turn(sender, tuple(bodies), first, last))
        conversations.append(Conversation(chat, tuple(turns), turns[0].start, last))
    return conversations


def keep_usable(conversations: Iterable[Conversation], persona: str) -> tuple[list[Conversation], Counter]:
    """Drop conversations without a persona message or with fewer than 2 turns; return the rest and drop counts."""
    kept: list[Conversation] = []
    dropped: Counter = Counter()
    for conversation in conversations:
        if not any(turn.sender == persona for turn in conversation.turns):
            dropped[NO_PERSONA] += 1
        elif len(conversation.turns) < 2:
            dropped[ONE_TURN] += 1
        else:
            kept.append(conversation)
    return kept, dropped
