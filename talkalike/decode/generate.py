"""Generation: one streaming function feeds the terminal chat, the web page, the OpenAI-compatible API and evaluation.

`stream_reply(twin, history, config)` yields ("text", chunk) and ("end_message",) events: the persona's turn, split
into the separate messages the person would send (template.BUBBLE_MARK between them), stopping at the end of the turn.
The separator and the stop text never reach the user. `reply` collects one turn; `generate_batch` decodes many
held-out contexts at once (left padding) for evaluation.

The decode loop is ours rather than `model.generate()` per token: one prefill, then one token at a time against a
KV cache, in `torch.inference_mode`, sampling with the original's temperature and repetition penalty.
benchmarks/decode_cpu.py measures it against plain `generate()`.

    twin = Twin.from_run(run_dir, home)
    for event in stream_reply(twin, [{"role": "user", "content": "hi"}], twin.defaults):
        ...
"""

import dataclasses
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from talkalike.decode.engines.gemma_cpu import cpu_decode_dtype, physical_cores, use_gemv  # noqa: F401 (re-exported)
from talkalike.errors import TalkalikeError
from talkalike.template import BUBBLE_MARK, BUBBLE_SEP, chat_template, render_prompt, stop_strings

Event = tuple  # ("text", chunk) or ("end_message",)


@dataclass(frozen=True)
class GenerationConfig:
    """Sampling settings; a run's generation.json overrides these defaults and CLI flags override both."""

    temperature: float = 0.5  # the original's chat script sampled at 0.5; 0 means greedy
    repetition_penalty: float = 1.025  # the original's value: just enough to stop "haha haha haha" loops
    top_p: float = 1.0  # the original used no nucleus cut-off
    max_new_tokens: int = 200  # the original's cap; a WhatsApp turn is far shorter
    # The dataset's window (`talkalike dataset --max-tokens`): the model never saw a longer history in training,
    # and a shorter prompt keeps CPU prefill fast. The oldest turns are dropped to fit.
    max_context_tokens: int = 1024
    seed: int | None = None  # fixed for reproducible samples (evaluation, tests); None draws fresh randomness


GENERATION_FILE = "generation.json"


def load_generation_config(run_dir: Path | None) -> GenerationConfig:
    """The run's tuned defaults (generation.json, written by `tune-generation`), else the original's."""
    if run_dir is None or not (Path(run_dir) / GENERATION_FILE).is_file():
        return GenerationConfig()
    path = Path(run_dir) / GENERATION_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise TalkalikeError(f"{path} is not valid JSON ({error}); fix it or delete it to use the defaults") from None
    # Only the sampling fields are settings; anything else in the file (the tuning table, scores) is a record.
    names = {f.name for f in dataclasses.fields(GenerationConfig)}
    return GenerationConfig(**{key: value for key, value in data.items() if key in names})


def save_generation_config(run_dir: Path, config: GenerationConfig, extra: dict | None = None) -> Path:
    """Write the run's sampling defaults atomically; `extra` (e.g. the tuning table) is stored beside them."""
    path = Path(run_dir) / GENERATION_FILE
    data = dataclasses.asdict(config) | (extra or {})
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def with_overrides(config: GenerationConfig, **overrides: Any) -> GenerationConfig:
    """`config` with every override that is not None (CLI flags left unset keep the run's value)."""
    return dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@dataclass
class Twin:
    """A loaded model and everything needed to prompt it: tokenizer, layout, run name, tuned defaults."""

    model: Any
    tokenizer: Any
    layout: str = "chat"
    name: str = "base"  # the run's name, or the base model's
    persona: str = "twin"  # shown in front of the persona's messages
    run_dir: Path | None = None
    has_adapter: bool = False  # a PEFT adapter that `use_adapter=False` switches off, for base-vs-tuned
    defaults: GenerationConfig = field(default_factory=GenerationConfig)
    _graph_decoder: Any = field(default=None, repr=False)  # built on the first CUDA reply

    @classmethod
    def from_run(cls, run_dir: Path, home: Path, dtype: Any = None) -> "Twin":
        """A run folder's base model with its adapter, tokenizer, layout and tuned sampling defaults.

        `dtype` None: bf16 on a CPU with native bf16 (the batched evaluation's choice), else fp32; the chat and
        serve commands ask for fp32 on CPU (`load_twin`)."""
        import torch
        from peft import PeftModel
        from transformers import AutoTokenizer

        from talkalike.model import load_base

        # model.load_run's steps, but the base loads straight into the decode dtype: on CPU that reads the
        # weights once instead of loading fp32 and converting.
        run_dir = Path(run_dir)
        run_info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        quantized = bool(run_info.get("quantized")) and torch.cuda.is_available()
        if dtype is None and not torch.cuda.is_available():
            dtype = cpu_decode_dtype(batched=True)
        base = load_base(run_info["base"]["id"], home, quantize_4bit=quantized, dtype=dtype)
        model = PeftModel.from_pretrained(base, str(run_dir / "adapter"))
        tokenizer = AutoTokenizer.from_pretrained(str(run_dir / "tokenizer"))
        twin = cls(model=model, tokenizer=tokenizer, has_adapter=True, **_run_fields(run_dir, run_info))
        twin.prepare(dtype)
        return twin

    @classmethod
    def merged(cls, run_dir: Path, home: Path) -> "Twin | None":
        """The CPU chat's fast twin: the adapter merged once and cached in the run folder, memory-mapped fp32
        weights decoded by talkalike.decode.engines.gemma_cpu (no transformers model, no peft); no base switch. None when the
        base is not a Gemma 3 text model (the caller then loads the usual way)."""
        from talkalike.decode.engines import gemma_cpu as cpudecode

        run_dir = Path(run_dir)
        run_info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        try:
            decoder = cpudecode.load_merged(run_dir, home)
        except OSError as error:  # e.g. a read-only run folder: no cache, so the usual (slower) start
            print(f"note: cannot cache the merged weights in {run_dir} ({error}); loading the adapter instead",
                  file=sys.stderr)
            return None
        if decoder is None:
            return None
        twin = cls(model=decoder, tokenizer=cpudecode.load_tokenizer(run_dir / "tokenizer"),
                   **_run_fields(run_dir, run_info))
        twin.prepare()
        return twin

    @classmethod
    def from_base(cls, base: str | None, home: Path, dtype: Any = None) -> "Twin":
        """A base model alone (no adapter), with the conversational layout."""
        from talkalike.model import EMBEDDED, load_base, load_tokenizer

        name = Path(base).name if base and Path(base).is_dir() else (base or EMBEDDED)
        if dtype is None and not _cuda():
            dtype = cpu_decode_dtype()  # fp32: the embedded weights' own dtype, so nothing is converted
        twin = cls(model=load_base(base, home, dtype=dtype), tokenizer=load_tokenizer(base, home), name=name,
                   persona=name)
        twin.prepare(dtype)
        return twin

    def prepare(self, dtype: Any = None, gemv: bool = True) -> None:
        """Eval mode, decode dtype, thread count and (on CPU) the single-token matrix-vector path; call once."""
        import torch

        if getattr(self.model, "own_decoder", False) is True:  # talkalike.decode.engines.gemma_cpu: nothing to convert
            torch.set_num_threads(physical_cores())
            return
        self.model.eval()
        if self.device.type == "cpu":
            torch.set_num_threads(physical_cores())
            dtype = dtype or cpu_decode_dtype()
        if dtype is not None:
            self.model.to(dtype)
        if self.device.type == "cpu":
            # mv pays off in bf16 only: fp32 F.linear already reaches MKL's matrix-vector kernel.
            use_gemv(self.model, gemv and dtype == torch.bfloat16)

    def graph_decoder(self, length: int):
        """The GPU decoder (talkalike/fastdecode.py) with a cache of at least `length` tokens; built once, reused."""
        from talkalike.decode.engines.cuda_graph import GraphDecoder

        if self._graph_decoder is None or self._graph_decoder.max_cache_len < length:
            self._graph_decoder = GraphDecoder(self.model, max_cache_len=max(length, self.defaults.max_context_tokens))
        return self._graph_decoder

    @property
    def cache_kwarg(self) -> str:
        """The forward() argument that takes the KV cache: `cache` in recent transformers, `past_key_values` before
        (the old name still works there, with a deprecation warning on every chat start)."""
        import inspect

        core = self.model.get_base_model() if self.has_adapter else self.model
        return "cache" if "cache" in inspect.signature(type(core).forward).parameters else "past_key_values"

    @property
    def device(self):
        """Where the model's weights live."""
        return next(self.model.parameters()).device


def _run_fields(run_dir: Path, run_info: dict) -> dict:
    """A run's Twin fields besides the model: layout, names and tuned sampling defaults."""
    return {"layout": run_info.get("layout", "chat"), "name": run_dir.name,
            # The persona's name as the dataset stage recorded it (dataset.json, copied into run.json).
            "persona": (run_info.get("dataset_info") or {}).get("persona") or run_info.get("persona") or run_dir.name,
            "run_dir": run_dir, "defaults": load_generation_config(run_dir)}


def load_twin(run: str | None, base: str | None, home: Path, switchable: bool = True) -> Twin:
    """The twin the chat and serve commands talk to: a run folder (tuned, adapter switchable) or a base model alone.

    `switchable=False` (the chat without --compare) takes the fast path on CPU: the adapter merged and cached once,
    decoded without transformers or peft (Twin.merged), which is most of a second-start's cold start."""
    from talkalike.home import resolve_run

    if run and base:
        raise TalkalikeError("give a run or --base MODEL, not both (a run already names its base in run.json)")
    if run:
        run_dir = resolve_run(home, run)
        if not switchable and not _cuda():
            twin = Twin.merged(run_dir, home)
            if twin is not None:
                return twin
        return Twin.from_run(run_dir, home, dtype=None if _cuda() else cpu_decode_dtype())
    if base:
        return Twin.from_base(base, home)
    raise TalkalikeError("name a run to talk to (e.g. `talkalike chat dana`), or a base model with --base MODEL")


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


def fit_prompt(twin: Twin, history: list[dict], config: GenerationConfig) -> list[int]:
    """Prompt ids for `history`, dropping the oldest turns until prompt + reply fit the context window."""
    turns = normalize_history(history)
    if turns and turns[-1]["role"] != "user":
        raise TalkalikeError("the history must end with the other person's message for the twin to answer it")
    limit = config.max_context_tokens
    max_positions = getattr(twin.model.config, "max_position_embeddings", None)
    if max_positions:
        limit = min(limit, max_positions)
    budget = limit - config.max_new_tokens
    while True:
        ids = render_prompt(turns, twin.tokenizer, twin.layout)
        if len(ids) <= budget:
            return ids
        if len(turns) <= 1:
            raise TalkalikeError(
                f"the last message alone is {len(ids)} tokens, more than the {budget} the context window leaves "
                f"for history ({limit} - {config.max_new_tokens} for the reply); send a shorter message"
            )
        # Drop the oldest exchange: a user turn and the persona's answer, so the history still opens with the user.
        turns = turns[2:] if len(turns) > 2 else turns[1:]


class _Splitter:
    """Turns the reply text as it grows into message events; holds back whatever may still become a separator or
    a stop string, so neither ever reaches the user."""

    def __init__(self, stops: list[str]):
        self.marks = [BUBBLE_MARK] + [s for s in stops if s]
        self.stops = [s for s in stops if s]
        self.pending = ""  # text received but not yet shown
        self.open = False  # whether the current message has shown any text
        self.done = False  # a stop string was seen: the turn is over

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
            at, mark = min(found)
            self._show(self.pending[:at].rstrip(), events)
            self._close(events)
            self.pending = self.pending[at + len(mark):]
            if mark != BUBBLE_MARK:
                self.done = True
                return events
        # Hold back a tail that could be the start of a mark, and trailing whitespace (it may precede a separator).
        hold = max((n for mark in self.marks for n in range(1, len(mark)) if self.pending.endswith(mark[:n])),
                   default=0)
        shown = self.pending[: len(self.pending) - hold].rstrip()
        self._show(shown, events)
        self.pending = self.pending[len(shown):]
        return events

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


def stop_token_ids(twin: Twin) -> set[int]:
    """Token ids that end the persona's turn: end-of-sequence and single-token stop strings (<end_of_turn>)."""
    tokenizer = twin.tokenizer
    ids = set()
    for token_id in (tokenizer.eos_token_id, getattr(twin.model.generation_config, "eos_token_id", None)):
        if isinstance(token_id, int):
            ids.add(token_id)
        elif token_id:
            ids.update(token_id)
    for stop in stop_strings(tokenizer, twin.layout):
        encoded = tokenizer.encode(stop, add_special_tokens=False)
        if len(encoded) == 1:
            ids.add(encoded[0])
    return ids


def _sample(logits, seen, config: GenerationConfig, generator):
    """Next token ids (one per row) from last-position logits, as HF's processors would choose them."""
    import torch

    logits = logits.float()
    if config.repetition_penalty != 1.0:
        # HF's RepetitionPenaltyLogitsProcessor: every token already in the sequence (prompt included) is damped.
        penalized = torch.where(logits > 0, logits / config.repetition_penalty, logits * config.repetition_penalty)
        logits = torch.where(seen, penalized, logits)
    if config.temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits / config.temperature
    if config.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative - sorted_logits.softmax(dim=-1) >= config.top_p  # keep the token that crosses top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _generator(config: GenerationConfig, device):
    import torch

    if config.seed is None:
        return None
    return torch.Generator(device=device).manual_seed(config.seed)


def _token_stream(twin: Twin, prompt_ids: list[int], config: GenerationConfig, stops: set[int],
                  graphs: bool = True) -> Iterator[int]:
    """The persona's tokens one at a time, until a stop token or max_new_tokens: prefill once, then decode with a
    KV cache. On CUDA this is where the GPU path takes over (static cache + CUDA graphs, talkalike/fastdecode.py)."""
    import torch
    from transformers import DynamicCache

    model, device = twin.model, twin.device
    generator = _generator(config, device)
    if getattr(model, "own_decoder", False) is True:  # talkalike.decode.engines.gemma_cpu's merged Gemma decoder
        yield from model.tokens(prompt_ids, config.max_new_tokens,
                                lambda logits, seen: _sample(logits, seen, config, generator), stops)
        return
    if graphs and device.type == "cuda":
        decoder = twin.graph_decoder(len(prompt_ids) + config.max_new_tokens)
        yield from decoder.tokens(prompt_ids, config.max_new_tokens,
                                  lambda logits, seen: _sample(logits, seen, config, generator), stops)
        return
    with torch.inference_mode():
        ids = torch.tensor([prompt_ids], device=device)
        seen = torch.zeros(1, model.config.vocab_size, dtype=torch.bool, device=device)
        seen[0, ids[0]] = True
        cache, kv = DynamicCache(config=model.config), twin.cache_kwarg
        # logits_to_keep=1: the prefill needs only the last position's logits, not prompt x 262k vocabulary.
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1, **{kv: cache})
        for _ in range(config.max_new_tokens):
            token = _sample(out.logits[:, -1], seen, config, generator)
            token_id = int(token)
            if token_id in stops:
                return
            yield token_id
            seen[0, token_id] = True
            out = model(input_ids=token.view(1, 1), use_cache=True, logits_to_keep=1, **{kv: cache})


def _adapter_switch(twin: Twin, use_adapter: bool):
    """A context in which the model runs with or without its adapter."""
    import contextlib

    if twin.has_adapter and not use_adapter:
        return twin.model.disable_adapter()
    return contextlib.nullcontext()


def stream_reply(twin: Twin, history: list[dict], config: GenerationConfig | None = None,
                 use_adapter: bool = True) -> Iterator[Event]:
    """The persona's next turn as events: ("text", chunk) while a message grows, ("end_message",) after each one."""
    config = config or twin.defaults
    prompt_ids = fit_prompt(twin, history, config)
    splitter = _Splitter(turn_stops(twin.tokenizer, twin.layout))
    stops = stop_token_ids(twin)
    tokens: list[int] = []
    text = ""
    # A captured CUDA graph would replay whichever adapter state it was captured with: the base path runs eagerly.
    graphs = use_adapter or not twin.has_adapter
    with _adapter_switch(twin, use_adapter):
        for token_id in _token_stream(twin, prompt_ids, config, stops, graphs):
            tokens.append(token_id)
            # Decode the whole reply each step: byte-level tokens can split a character (an emoji, a Hebrew
            # letter); a trailing U+FFFD means "wait for the next token".
            decoded = twin.tokenizer.decode(tokens, skip_special_tokens=False)
            if decoded.endswith("\ufffd") or not decoded.startswith(text):
                continue
            delta, text = decoded[len(text):], decoded
            yield from splitter.feed(delta)
            if splitter.done:
                return
        decoded = twin.tokenizer.decode(tokens, skip_special_tokens=False)
        yield from splitter.feed(decoded[len(text):] if decoded.startswith(text) else "")
        yield from splitter.finish()


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


def reply(twin: Twin, history: list[dict], config: GenerationConfig | None = None,
          use_adapter: bool = True) -> list[str]:
    """The persona's next turn as a list of messages."""
    return collect_messages(stream_reply(twin, history, config, use_adapter))


def split_reply(text: str, stops: list[str]) -> list[str]:
    """A whole generated text cut at the first stop string and split into messages."""
    splitter = _Splitter(stops)
    return collect_messages(splitter.feed(text) + splitter.finish())


def generate_batch(twin: Twin, histories: list[list[dict]], config: GenerationConfig | None = None,
                   use_adapter: bool = True, batch_size: int = 8) -> list[list[str]]:
    """The persona's next turn for many histories at once (left-padded batches), as lists of messages."""
    config = config or twin.defaults
    prompts = [fit_prompt(twin, history, config) for history in histories]
    # Similar lengths together waste the least padding; results go back in the caller's order.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[list[str]] = [[] for _ in prompts]
    text_stops = turn_stops(twin.tokenizer, twin.layout)
    stops = stop_token_ids(twin)
    with _adapter_switch(twin, use_adapter):
        for start in range(0, len(order), batch_size):
            chunk = order[start: start + batch_size]
            if getattr(twin.model, "own_decoder", False) is True:  # one conversation at a time by design
                tokens = [list(_token_stream(twin, prompts[i], config, stops)) for i in chunk]
            else:
                tokens = _decode_batch(twin, [prompts[i] for i in chunk], config, stops, text_stops)
            for i, row in zip(chunk, tokens):
                text = twin.tokenizer.decode(row, skip_special_tokens=False)
                results[i] = split_reply(text, text_stops)
    return results


def _decode_batch(twin: Twin, prompts: list[list[int]], config: GenerationConfig, stops: set[int],
                  text_stops: list[str]) -> list[list[int]]:
    """Generated token ids per prompt, decoding the batch together until every row has stopped."""
    import torch
    from transformers import DynamicCache

    model, device = twin.model, twin.device
    pad = twin.tokenizer.pad_token_id if twin.tokenizer.pad_token_id is not None else 0
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    # Left padding shifts each row; positions count real tokens only, so every row sees the positions it would alone.
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    generator = _generator(config, device)
    rows = len(prompts)
    out_tokens: list[list[int]] = [[] for _ in prompts]
    finished = [False] * rows
    with torch.inference_mode():
        seen = torch.zeros(rows, model.config.vocab_size, dtype=torch.bool, device=device)
        seen.scatter_(1, ids, mask.bool())
        cache, kv = DynamicCache(config=model.config), twin.cache_kwarg
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1,
                    **{kv: cache})
        for _ in range(config.max_new_tokens):
            tokens = _sample(out.logits[:, -1], seen, config, generator)
            for row, token_id in enumerate(tokens.tolist()):
                if finished[row]:
                    continue
                if token_id in stops:
                    finished[row] = True
                    continue
                out_tokens[row].append(token_id)
                tail = twin.tokenizer.decode(out_tokens[row][-8:], skip_special_tokens=False)
                if any(stop in tail for stop in text_stops):
                    finished[row] = True
            if all(finished):
                break
            seen[torch.arange(rows, device=device), tokens] = True
            mask = torch.cat([mask, torch.ones(rows, 1, dtype=mask.dtype, device=device)], dim=1)
            positions = positions[:, -1:] + 1
            out = model(input_ids=tokens.view(rows, 1), attention_mask=mask, position_ids=positions,
                        use_cache=True, logits_to_keep=1, **{kv: cache})
    return out_tokens
