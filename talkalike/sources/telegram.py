"""Telegram Desktop JSON exports (`result.json`) read into the same records as WhatsApp.

Telegram Desktop writes one chat ("Export chat history", JSON) as `{"name", "type", "messages": [...]}` and the whole
account ("Export Telegram data") as `{"chats": {"list": [chat, ...]}, "left_chats": {"list": [...]}}`.
`parse` reads the first; `parse_all` reads both.
Try it: `talkalike parse path/to/result.json | head`.
"""

import json
from collections import Counter
from datetime import datetime

from talkalike.errors import TalkalikeError
from talkalike.message import Message, ParsedExport

# Telegram shows a deleted account's messages under this name; keeping them as ordinary messages keeps the other
# side of a conversation whose partner left Telegram.
DELETED_ACCOUNT = "Deleted Account"

# Keys whose presence marks a message as carrying media (Telegram leaves the placeholder or the file path in them).
MEDIA_KEYS = ("photo", "file", "media_type", "poll", "location_information", "contact_information", "game_title",
              "invoice_information", "place_name")

# Service actions in readable words; an action not listed here is spelled out from its name (`join_group_by_link`).
ACTIONS = {
    "create_group": "created group",
    "migrate_to_supergroup": "converted the group to a supergroup",
    "migrate_from_group": "converted the group to a supergroup",
    "invite_members": "added",
    "remove_members": "removed",
    "join_group_by_link": "joined the group via an invite link",
    "edit_group_title": "changed the group name to",
    "edit_group_photo": "changed the group photo",
    "delete_group_photo": "removed the group photo",
    "pin_message": "pinned a message",
    "phone_call": "called",
    "group_call": "started a video chat",
    "clear_history": "cleared the history",
    "set_messages_ttl": "changed the auto-delete timer",
    "screenshot_taken": "took a screenshot",
}


class _Malformed(Exception):
    """A field of the wrong type: the caller names the message it is in."""


def _field(entry: dict, key: str, types: type | tuple, default=None):
    """entry[key] when it has one of `types` (or is missing or null: `default`); a wrong type is _Malformed."""
    value = entry.get(key)
    if value is None:
        return default
    if not isinstance(value, types) or isinstance(value, bool):  # no field read here is a boolean
        raise _Malformed(f"its `{key}` is {_kind(value)}")
    return value


def _kind(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true or false"}.get(type(value), "a number")


def plain_text(text: str | list | None) -> str:
    """Telegram's `text` as plain text: a string, or a list of strings and entities ({"type", "text"}) joined."""
    if text is None:
        return ""
    if isinstance(text, str):
        return text
    if not isinstance(text, list):
        raise _Malformed(f"its `text` is {_kind(text)}, not a string or a list")
    parts = []
    for part in text:
        if isinstance(part, str):
            parts.append(part)
        elif isinstance(part, dict) and isinstance(part.get("text", ""), str):
            parts.append(part.get("text", ""))
        else:
            raise _Malformed(f"its `text` list holds {'null' if part is None else _kind(part)}, not text")
    return "".join(parts)


def _media_text(entry: dict, caption: str) -> str:
    """A placeholder naming the media (a sticker keeps its emoji), followed by the caption on its own line."""
    if "photo" in entry:
        what = "photo"
    elif entry.get("media_type"):
        what = _field(entry, "media_type", str)
    elif "poll" in entry:
        poll = entry["poll"]
        what = "poll: " + str(poll.get("question", "")) if isinstance(poll, dict) else "poll"
    elif "location_information" in entry or "place_name" in entry:
        what = "location"
    elif "contact_information" in entry:
        what = "contact"
    else:
        what = "file"
    emoji = _field(entry, "sticker_emoji", str)
    if emoji:
        what += " " + emoji
    placeholder = f"<{what} omitted>"
    return f"{placeholder}\n{caption}" if caption else placeholder


def _service_text(entry: dict) -> str:
    """A service event in words: "Dana added Maya, Noa"."""
    actor = _field(entry, "actor", str) or _field(entry, "from", str) or ""
    action = _field(entry, "action", str, "service")
    words = ACTIONS.get(action, action.replace("_", " "))
    details = []
    if action == "phone_call" and entry.get("discard_reason") == "missed":
        words = "called (missed)"
    title = _field(entry, "title", str)
    if title:
        details.append(f"«{title}»")
    members = _field(entry, "members", list, [])
    if any(m is not None and not isinstance(m, str) for m in members):
        raise _Malformed("its `members` list holds something other than names")
    if action == "remove_members" and members == [actor]:
        return f"{actor} left the group"  # Telegram writes leaving as removing oneself
    if members:
        listed = ", ".join(m for m in members if m)
        details.append(f"with {listed}" if action == "create_group" else listed)
    if "duration_seconds" in entry:
        details.append(f"({_field(entry, 'duration_seconds', (int, float))} s)")
    caption = plain_text(entry.get("text"))
    return " ".join(part for part in (actor, words, *details, caption) if part)


def _message(entry: dict, where: str) -> Message:
    """One entry of `messages` as a Message; a malformed entry is a clear error naming its place."""
    try:
        return _read_message(entry)
    except _Malformed as error:
        raise TalkalikeError(f"{where} is malformed: {error}; is this an unmodified Telegram export?") from None
    except (KeyError, TypeError, ValueError, OverflowError) as error:
        raise TalkalikeError(f"{where} has no readable date ({error}); is this an unmodified Telegram export?") from None


def _read_message(entry: dict) -> Message:
    date = entry["date"]
    if not isinstance(date, str):
        raise _Malformed(f"its `date` is {_kind(date)}, not a date string")
    time = datetime.fromisoformat(date).replace(tzinfo=None)
    edited = bool(entry.get("edited"))
    if entry.get("type") == "service":
        return Message(time, None, _service_text(entry), "system", edited)
    text = plain_text(entry.get("text"))
    sender = _field(entry, "from", str)
    if sender is None:
        sender = DELETED_ACCOUNT if entry.get("from_id") else None
    if sender is None:
        return Message(time, None, text, "system", edited)
    if any(key in entry for key in MEDIA_KEYS):
        return Message(time, sender, _media_text(entry, text), "media", edited)
    return Message(time, sender, text, "text", edited)


def _chat(chat: dict, name: str, where: str) -> ParsedExport:
    """One chat object ({"name", "type", "messages"}) as a ParsedExport."""
    entries = chat.get("messages")
    if not isinstance(entries, list):
        raise TalkalikeError(f"{where} has no message list; export the chat from Telegram Desktop as JSON.")
    chat_type = str(chat.get("type", "chat"))
    chat_name = chat.get("name") or ("Saved Messages" if chat_type == "saved_messages" else name)
    if not isinstance(chat_name, str):
        raise TalkalikeError(f"{where}'s `name` is {_kind(chat_name)}, not a name; is this an unmodified Telegram export?")
    messages = [_message(entry, f"{where}, message {_id(entry, i)}") for i, entry in enumerate(entries)
                if isinstance(entry, dict)]
    notes = []
    skipped = len(entries) - len(messages)
    if skipped:
        notes.append(f"{skipped} entries of the message list were not objects and were left out")
    return ParsedExport(name=str(chat_name), source="telegram", format=f"telegram desktop json, {chat_type}",
                        messages=messages, unparsed=[], notes=notes)


def _id(entry: dict, i: int) -> str:
    """A message's id for an error, short even when a hostile file makes it huge."""
    value = entry.get("id", i + 1)
    return str(value)[:20] if isinstance(value, (int, str)) else str(i + 1)


def _load(text: str) -> dict:
    """The export's JSON object, or a clear error saying why it is not one."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise TalkalikeError(f"this is not valid JSON (line {error.lineno}: {error.msg}); "
                             "expected a Telegram Desktop `result.json`.") from None
    except RecursionError:
        raise TalkalikeError("this JSON is nested too deeply to be a Telegram Desktop export.") from None
    except ValueError as error:  # an integer of more digits than Python converts (over 4,300)
        raise TalkalikeError(f"this JSON cannot be read ({error}); expected a Telegram Desktop `result.json`.") from None
    if not isinstance(data, dict) or not ("messages" in data or "chats" in data):
        raise TalkalikeError("this JSON is not a Telegram Desktop export (no `messages` or `chats`); "
                             "export it from Telegram Desktop with Format: Machine-readable JSON.")
    return data


def parse_all(text: str, name: str, date_order: str | None = None) -> list[ParsedExport]:
    """Every chat in a `result.json`: one for a chat export, one per chat for a whole-account export."""
    data = _load(text)
    if "messages" in data:
        return [_chat(data, name, "the chat")]
    chats = data["chats"].get("list") if isinstance(data["chats"], dict) else None
    if not isinstance(chats, list):
        raise TalkalikeError("this Telegram export has no `chats.list`; export chats with message history.")
    # Groups the user has since left are still their own history, written under `left_chats`.
    left = data.get("left_chats")
    if isinstance(left, dict) and isinstance(left.get("list"), list):
        chats = chats + left["list"]
    chats = [chat for chat in chats if isinstance(chat, dict)]
    parsed = [_chat(chat, f"{name} {i + 1}", f"chat {i + 1}") for i, chat in enumerate(chats)]
    if not parsed:
        raise TalkalikeError("this Telegram export holds no chats; tick 'Personal chats' or groups when exporting.")
    # Two contacts may share a display name; their chats must not merge into one in the store.
    seen = Counter(p.name for p in parsed)
    for chat, p in zip(chats, parsed, strict=True):
        if seen[p.name] > 1:
            p.notes.append(f"another chat in this export is also called {p.name!r}; this one is stored by its id")
            p.name = f"{p.name} #{_id(chat, -1) if 'id' in chat else '?'}"
    return parsed


def parse(text: str, name: str, date_order: str | None = None) -> ParsedExport:
    """One chat's `result.json` as a ParsedExport; `date_order` is unused (Telegram writes ISO dates)."""
    chats = parse_all(text, name, date_order)
    if len(chats) > 1:
        raise TalkalikeError(f"this Telegram export holds {len(chats)} chats; `talkalike import` takes them all, "
                             "each as its own chat.")
    return chats[0]
