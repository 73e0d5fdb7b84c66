"""How a conversation becomes model text: the bubble separator, chat templates, and the loss mask.

Shared by the dataset (inspect), train (what carries loss), generate (the prompt and where a turn stops) and evaluate
(perplexity on persona tokens). Everything goes through the tokenizer's own `apply_chat_template`, so any base model
with a chat template renders the way it was trained; a base without one gets PLAIN_TEMPLATE.

Layouts:
- "chat" (default): the base model's chat template; else Gemma's turn format for a tokenizer that has Gemma's turn
  tokens; else PLAIN_TEMPLATE.
- "original": the original project's layout, `<s><person1>…</s><person2>…</s>`, where <person2> is the persona.

A conversation may open with a system message saying who the persona is talking to (`contact_line`); every layout
renders it (the original one by leaving it out), and it never carries loss.
"""

import os
from dataclasses import dataclass

from jinja2.exceptions import TemplateError

# People send several short messages in a row; the twin must too. The messages of one turn are joined with this
# separator in the dataset, and the chat stage splits the model's output on it back into separate messages.
# It is plain text (no new special token), so any tokenizer can learn it, and it never occurs in real chats.
BUBBLE_MARK = "<|msg|>"
BUBBLE_SEP = f"\n{BUBBLE_MARK}\n"

# Gemma's turn format. Gemma base checkpoints (the embedded model among them) ship <start_of_turn>/<end_of_turn> as
# special tokens but, as GGUF files, no template; they get this one so a turn ends on one dedicated token. Gemma has
# no system role: as in the official Gemma 3 template, a system message's text opens the first user turn.
GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] | trim ~ '\n\n' %}{% set turns = messages[1:] %}"
    "{% else %}{% set system = '' %}{% set turns = messages %}{% endif %}"
    "{% for message in turns %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<start_of_turn>{{ role }}\n{% if loop.first %}{{ system }}{% endif %}{{ message['content'] | trim }}<end_of_turn>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

# For a base model without a chat template: speaker tags, and the tokenizer's end-of-sequence token to end a turn,
# so generation stops at the end of the persona's turn with no extra vocabulary. A system message is a <|system|> block.
PLAIN_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

# The original report's layout: person1 is the other side, person2 the persona, each turn closed by </s>. It has no
# place for a system message, so one is left out: the original recipe renders exactly as it did.
ORIGINAL_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages if message['role'] != 'system' %}"
    "{% if message['role'] == 'assistant' %}<person2>{% else %}<person1>{% endif %}"
    "{{ message['content'] }}{{ eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<person2>{% endif %}"
)

CONTACT_NAMES_SHOWN = 5  # a big group's line names its most active members and counts the rest: the line stays short


def join_bubbles(messages: list[str]) -> str:
    """One turn's messages as one content string."""
    return BUBBLE_SEP.join(messages)


def split_bubbles(text: str) -> list[str]:
    """A turn's content back into its separate messages (empty pieces dropped)."""
    pieces = (piece.strip() for piece in text.split(BUBBLE_MARK))
    return [piece for piece in pieces if piece]


def contact_line(persona: str, others: list[str], group: str | None = None) -> dict:
    """The system message saying who the persona is talking to; `others` most active first, `group` the chat's name.

    contact_line("Noa", ["Daniel"]) -> "Noa is texting with Daniel."
    contact_line("Lucía", ["Ana", "Tomás", "Pablo"], "Amigos") -> 'Lucía is in the group chat "Amigos" with Ana,
    Tomás and Pablo.'
    """
    names = list(others[:CONTACT_NAMES_SHOWN])
    if len(others) > CONTACT_NAMES_SHOWN:
        names.append(f"{len(others) - CONTACT_NAMES_SHOWN} others")
    people = ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else "".join(names)
    where = f'is in the group chat "{group}"' if group else "is texting"
    return {"role": "system", "content": f"{persona} {where}" + (f" with {people}." if people else ".")}


def chat_template(tokenizer, layout: str = "chat") -> str:
    """The Jinja chat template used for this tokenizer and layout."""
    if layout == "original":
        return ORIGINAL_TEMPLATE
    assert layout == "chat", f"unknown layout {layout!r}"
    if tokenizer.chat_template:
        return tokenizer.chat_template
    # A lookup per token, not get_vocab(): building Gemma's 262k-entry vocabulary dict costs half a second a call.
    turn_ids = tokenizer.convert_tokens_to_ids(["<start_of_turn>", "<end_of_turn>"])
    if all(i is not None and i != tokenizer.unk_token_id for i in turn_ids):
        return GEMMA_TEMPLATE
    return PLAIN_TEMPLATE


def _apply(tokenizer, messages: list[dict], template: str, add_generation_prompt: bool) -> str:
    try:
        return tokenizer.apply_chat_template(
            messages, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except TemplateError:
        if not messages or messages[0]["role"] != "system":
            raise
    # Some templates (Mistral's older ones among them) refuse a system role. Do what Gemma's official template does:
    # the system text opens the first user message. Folded on every call, so rendering stays prefix-stable; a
    # template that still raises has another complaint, and that error is the one to see.
    return tokenizer.apply_chat_template(
        _fold_system(messages), chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def _fold_system(messages: list[dict]) -> list[dict]:
    """The system message's text moved to the start of the first user message.

    With no user message next, it opens an empty one: as a conversation the persona opens is rendered in training
    (its first user message is empty), so a prompt for an opener matches.
    """
    system, rest = messages[0], messages[1:]
    if not rest or rest[0]["role"] != "user":
        rest = [{"role": "user", "content": ""}, *rest]
    return [rest[0] | {"content": f"{system['content'].strip()}\n\n{rest[0]['content']}"}, *rest[1:]]


@dataclass(frozen=True)
class Rendered:
    """A rendered sample: its text, its token ids, and 1 on exactly the tokens that carry loss."""

    text: str
    input_ids: list[int]
    mask: list[int]


def render_sample(messages: list[dict], tokenizer, layout: str = "chat", all_turns: bool = False) -> Rendered:
    """Render a conversation; the mask covers each assistant turn's content and its end-of-turn marker.

    With `all_turns` every token carries loss, as in the original project. Never trained, in either mode: a leading
    system message (the contact line), which conditions the reply, and recalled turns (marked "memory", at the head
    right after any system message: talkalike.memory), context the model reads, copies of turns trained elsewhere.
    """
    template = chat_template(tokenizer, layout)
    text = _apply(tokenizer, messages, template, add_generation_prompt=False)
    head = 1 if messages and messages[0]["role"] == "system" else 0
    recalled = next((i for i in range(head, len(messages)) if not messages[i].get("memory")), len(messages))
    memory_end = len(_apply(tokenizer, messages[:recalled], template, add_generation_prompt=False)) \
        if recalled > head else 0
    system = _system_span(tokenizer, messages, template, text) if head else (0, 0)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or i < recalled:
            continue
        # Rendering is prefix-stable for every template we use: the turn's span starts where the prompt for it
        # ends and stops where the conversation up to it ends (content + end-of-turn marker).
        start = len(_apply(tokenizer, messages[:i], template, add_generation_prompt=True)) if i else 0
        end = len(_apply(tokenizer, messages[: i + 1], template, add_generation_prompt=False))
        assert text.startswith(_apply(tokenizer, messages[: i + 1], template, False)), "template is not prefix-stable"
        spans.append((start, end))
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoding["input_ids"])
    if all_turns:
        return Rendered(text, ids, [int(start >= memory_end and not (end > system[0] and start < system[1]))
                                    for start, end in encoding["offset_mapping"]])
    mask = []
    span_index = 0
    for token_start, token_end in encoding["offset_mapping"]:
        while span_index < len(spans) and token_start >= spans[span_index][1]:
            span_index += 1
        inside = span_index < len(spans) and spans[span_index][0] <= token_start < spans[span_index][1]
        mask.append(1 if inside and token_end > token_start else 0)
    return Rendered(text, ids, mask)


def render_reply(history: list[dict], reply: str, tokenizer, layout: str = "chat") -> tuple[list[int], int]:
    """(token ids, where the reply's trained tokens start): `history` plus `reply` as the persona's next turn, rendered
    as training renders it; the reply's tokens (its content and end-of-turn marker, the trailing run of the loss
    mask) run to the end of the ids. Eval scores candidates so and preference tuning compares replies so."""
    rendered = render_sample(history + [{"role": "assistant", "content": reply}], tokenizer, layout)
    mask = rendered.mask
    start = len(mask)
    while start > 0 and mask[start - 1]:
        start -= 1
    assert start < len(mask), "the reply turn carries no loss tokens"
    return rendered.input_ids, start


def _system_span(tokenizer, messages: list[dict], template: str, text: str) -> tuple[int, int]:
    """Where the leading system message's text sits in `text`: where it differs from a rendering without that text.

    Templates put it in different places (its own block, inside the first user turn, or nowhere), so it is found by
    rendering, not by searching for it.
    """
    without = _apply(tokenizer, [messages[0] | {"content": ""}, *messages[1:]], template, add_generation_prompt=False)
    start = len(os.path.commonprefix([text, without]))
    return start, start + len(text) - len(without)


def render_prompt(messages: list[dict], tokenizer, layout: str = "chat") -> list[int]:
    """Token ids of the history followed by an opened assistant (persona) turn."""
    text = _apply(tokenizer, messages, chat_template(tokenizer, layout), add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def stop_strings(tokenizer, layout: str = "chat") -> list[str]:
    """The text that closes the persona's turn in this template, plus the end-of-sequence token."""
    probe = "\u2063probe\u2063"
    rendered = _apply(
        tokenizer,
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": probe}],
        chat_template(tokenizer, layout),
        add_generation_prompt=False,
    )
    closing = rendered.split(probe, 1)[1].strip()
    stops = [closing] if closing else []
    if tokenizer.eos_token and tokenizer.eos_token not in stops:
        stops.append(tokenizer.eos_token)
    return stops


def turn_end_ids(tokenizer, layout: str = "chat") -> list[int]:
    """The ids of the single tokens that close the persona's turn in this template (e.g. Gemma's <end_of_turn>)."""
    ids = []
    for stop in stop_strings(tokenizer, layout):
        token_id = tokenizer.convert_tokens_to_ids(stop)
        if token_id is not None and token_id != tokenizer.unk_token_id and token_id not in ids:
            ids.append(token_id)
    return ids
