"""The twin: a loaded model, what it takes to prompt it, and the engine that decodes it (engines/, picked once).

    twin = load_twin("dana", None, home)                 # what `chat` and `serve` talk to
    twin = Twin.from_run(run_dir, home)                  # adapter switchable, for eval and --compare
"""

import contextlib
import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from talkalike.decode.config import GenerationConfig, load_generation_config
from talkalike.decode.turns import stop_token_ids
from talkalike.errors import TalkalikeError
from talkalike.files import say
from talkalike.message import EMOJI_CORE_RE
from talkalike.run import Run

# Under 1 message in 100 over several lines: this persona breaks a line by sending another message. (Both samples'
# personas wrote 1 such message in over a thousand; people who format lists or addresses write them far more.)
LINE_BREAK_SHARE = 0.01


@dataclass
class Twin:
    """A loaded model and everything needed to prompt and decode it."""

    model: Any  # a transformers causal LM (a PeftModel when tuned), or engines.gemma_cpu's merged Gemma
    tokenizer: Any
    vocab_size: int
    max_positions: int | None  # the model's own context limit
    stop_ids: frozenset[int]  # token ids that end the persona's turn
    device: Any
    layout: str = "chat"
    name: str = "base"  # the run's name, or the base model's
    persona: str = "twin"  # shown in front of the persona's messages
    run_dir: Path | None = None
    has_adapter: bool = False  # a PEFT adapter that `use_adapter=False` switches off, for base-vs-tuned
    defaults: GenerationConfig = field(default_factory=GenerationConfig)
    engines: dict = field(default_factory=dict, repr=False)  # built on the first reply, by "graphs allowed"
    memory: Any = None  # the run's talkalike.memory.Memory (past exchanges recalled into each prompt), if any
    # Whom the persona talks to, most frequent first, when the run was trained with the contact line; None: no line
    contacts: list[str] | None = None
    max_messages: int = 0  # the persona's 90th percentile of messages per turn (from memory); 0: no cap known
    # Whether the persona writes line breaks inside a message (from memory). Someone who doesn't sends a new message
    # instead, so there a line break the twin writes starts one (turns.Splitter), and counts toward the cap.
    line_breaks: bool = True
    # On a GPU with room for it: the base with the adapter merged into plain weights (model.load_merged), which the
    # fastest engines decode; the tuned replies come from it, the base's from `model` with the adapter off.
    merged_model: Any = field(default=None, repr=False)
    own: frozenset | None = field(default=None, repr=False)  # own_tokens(), once computed
    emoji: frozenset | None = field(default=None, repr=False)  # own_emoji(), once computed

    @classmethod
    def of(cls, model, tokenizer, layout: str = "chat", **fields) -> "Twin":
        """A twin over a loaded transformers model: vocabulary, positions, stop ids and device read from it once."""
        config = model.config
        return cls(model=model, tokenizer=tokenizer, layout=layout, vocab_size=config.vocab_size,
                   max_positions=getattr(config, "max_position_embeddings", None),
                   stop_ids=stop_token_ids(tokenizer, layout, model.generation_config.eos_token_id),
                   device=next(model.parameters()).device, **fields)

    @classmethod
    def from_run(cls, run_dir: Path, home: Path, dtype: Any = None, merge: bool = False) -> "Twin":
        """A run folder's base model with its adapter, tokenizer, layout and tuned sampling defaults.

        `dtype` None: bf16 on a CPU with native bf16 (the batched evaluation's choice), else fp32; the chat and
        serve commands ask for fp32 on CPU (`load_twin`). `merge`: on a GPU with room for it, also the merged
        model (`merged_model`), so that single-stream tuned replies take the fastest engine."""
        import torch

        from talkalike.model import load_run

        if dtype is None and not torch.cuda.is_available():
            dtype = cpu_decode_dtype(batched=True)
        model, tokenizer, run = load_run(run_dir, home, dtype=dtype)
        twin = cls.of(model, tokenizer, has_adapter=True, **_run_fields(run))
        twin.prepare(dtype)
        if merge and twin.device.type == "cuda" and _room_to_merge(model):
            from talkalike.model import load_merged

            twin.merged_model = load_merged(run_dir, home)
        return twin

    @classmethod
    def merged(cls, run_dir: Path, home: Path) -> "Twin | None":
        """The CPU chat's fast twin: the adapter merged once and cached in the run folder, memory-mapped fp32
        weights decoded by engines.gemma_cpu (no transformers model, no peft); no base switch. None when the
        base is not a Gemma 3 text model (the caller then loads the usual way)."""
        import torch

        from talkalike.decode.engines import gemma_cpu

        run = Run.open(run_dir)
        try:
            gemma = gemma_cpu.load_merged(run.dir, home)
        except OSError as error:  # e.g. a read-only run folder: no cache, so the usual (slower) start
            print(f"note: cannot cache the merged weights in {run.dir} ({error}); loading the adapter instead",
                  file=sys.stderr)
            return None
        if gemma is None:
            return None
        torch.set_num_threads(physical_cores())
        return cls.of_gemma(gemma, gemma_cpu.load_tokenizer(run.tokenizer_dir), **_run_fields(run))

    @classmethod
    def of_gemma(cls, gemma, tokenizer, layout: str = "chat", **fields) -> "Twin":
        """A twin over engines.gemma_cpu's merged Gemma (a CPU model with no transformers config)."""
        import torch

        return cls(model=gemma, tokenizer=tokenizer, layout=layout, vocab_size=gemma.cfg["vocab_size"],
                   max_positions=gemma.cfg.get("max_position_embeddings"),
                   stop_ids=stop_token_ids(tokenizer, layout, gemma.cfg.get("eos_token_id")),
                   device=torch.device("cpu"), **fields)

    @classmethod
    def from_base(cls, base: str | None, home: Path, dtype: Any = None) -> "Twin":
        """A base model alone (no adapter), with the conversational layout."""
        import torch

        from talkalike.model import EMBEDDED, load_base, load_tokenizer

        name = Path(base).name if base and Path(base).is_dir() else (base or EMBEDDED)
        if dtype is None and not torch.cuda.is_available():
            dtype = cpu_decode_dtype()  # fp32: the embedded weights' own dtype, so nothing is converted
        twin = cls.of(load_base(base, home, dtype=dtype), load_tokenizer(base, home), name=name, persona=name)
        twin.prepare(dtype)
        return twin

    def prepare(self, dtype: Any = None) -> None:
        """Eval mode, decode dtype and thread count; call once."""
        import torch

        self.model.eval()
        if self.device.type == "cpu":
            torch.set_num_threads(physical_cores())
            dtype = dtype or cpu_decode_dtype()
            from talkalike.model import causal_lm

            head = getattr(causal_lm(self.model), "lm_head", None)
            if head is not None:
                head.register_forward_pre_hook(_plain_strides)
        if dtype is not None:
            self.model.to(dtype)

    def engine(self, length: int, use_adapter: bool = True):
        """The engine for a reply of `length` positions (prompt + reply): picked and built on first need, then
        reused; rebuilt only for a longer reply than it holds."""
        from talkalike.decode import engines

        # A captured CUDA graph would replay whichever adapter state it was captured with: the base runs eagerly.
        # Tuned replies from a merged copy decode as a plain model would.
        graphs = use_adapter or not self.has_adapter
        key = "merged" if use_adapter and self.merged_model is not None else graphs
        built = self.engines.get(key)
        if built is None or built.max_len < length:
            max_len = max(length, self.defaults.max_context_tokens)
            target = self if key != "merged" else dataclasses.replace(
                self, model=self.merged_model, has_adapter=False, merged_model=None, engines={})
            built = self.engines[key] = engines.build(engines.pick(target, max_len, graphs), target, max_len)
        return built

    def own_tokens(self) -> frozenset[int] | None:
        """Every token of the persona's replies in memory, the message separator's and the turn's stop tokens;
        None without a memory. Computed once (a tokenizer pass over the replies)."""
        from talkalike.template import BUBBLE_SEP

        if self.memory is None:
            return None
        if self.own is None:
            ids = set(self.stop_ids) | set(self.tokenizer.encode(BUBBLE_SEP, add_special_tokens=False))
            for encoded in self.tokenizer(self.memory.replies(), add_special_tokens=False)["input_ids"]:
                ids.update(encoded)
            self.own = frozenset(ids)
        return self.own

    def own_emoji(self) -> frozenset[str] | None:
        """The emoji the persona has written in their replies in memory (core characters, as
        language.emoji_tokens has them); None without a memory."""
        if self.memory is None:
            return None
        if self.emoji is None:
            self.emoji = frozenset(found for reply in self.memory.replies() for found in EMOJI_CORE_RE.findall(reply))
        return self.emoji

    def adapter(self, use_adapter: bool = True):
        """A context in which the model runs with or without its adapter."""
        if self.has_adapter and not use_adapter:
            return self.model.disable_adapter()
        return contextlib.nullcontext()


def talk_as(twin: Twin, name: str | None, memories: int | None) -> None:
    """Point the twin at a contact (`--as NAME`) and set how many past exchanges it recalls (`--memories N`)."""
    if memories is not None and memories < 0:
        raise TalkalikeError(f"--memories takes 0 (off) or more, not {memories}")
    if name and twin.contacts is None:
        raise TalkalikeError(f"{twin.name} was trained without contact lines (`dataset --no-contact`), so --as has "
                             "no effect; leave it out")
    if name and name not in twin.contacts:
        known = ", ".join(twin.contacts[:8]) or "nobody yet"
        say(f"note: {twin.persona} never wrote to {name} in the training chats (known: {known}); replying as to "
            "someone new")
    twin.defaults = dataclasses.replace(twin.defaults, **{k: v for k, v in (("contact", name), ("memories", memories))
                                                          if v is not None})


def _room_to_merge(model) -> bool:
    """Whether the GPU holds a merged bf16 copy of `model` beside it: its weights, the engines' fused copies of
    q/k/v and gate/up (about 70% of a 7B model's), and a GiB for caches and activations."""
    import torch

    from talkalike.model import parameter_count

    free, _ = torch.cuda.mem_get_info()
    return free > parameter_count(model) * 2 * 1.7 + 2**30


def _run_fields(run: Run) -> dict:
    """A run's Twin fields besides the model: layout, names, tuned sampling defaults, memory and contacts."""
    from talkalike.memory import Memory

    memory = Memory.open(run.dir)
    return {"layout": run.layout, "name": run.name, "persona": run.persona, "run_dir": run.dir,
            "defaults": load_generation_config(run.dir), "memory": memory, "contacts": run.contacts,
            "max_messages": memory.messages_per_turn(0.9) if memory is not None else 0,
            "line_breaks": memory is None or memory.line_break_share() >= LINE_BREAK_SHARE}


def load_twin(run: str | None, base: str | None, home: Path, switchable: bool = True, batched: bool = False) -> Twin:
    """The twin the chat and serve commands talk to: a run folder (tuned, adapter switchable) or a base model alone.

    `switchable=False` (the chat without --compare) takes the fast path on CPU: the adapter merged and cached once,
    decoded without transformers or peft (Twin.merged), which is most of a second-start's cold start. `batched`
    (serve: concurrent requests decode together): on a CPU, the batch dtype (cpu_decode_dtype)."""
    import torch

    from talkalike.home import resolve_run

    if run and base:
        raise TalkalikeError("give a run or --base MODEL, not both (a run already names its base in run.json)")
    if run:
        run_dir = resolve_run(home, run)
        cuda = torch.cuda.is_available()
        if not switchable and not cuda:
            twin = Twin.merged(run_dir, home)
            if twin is not None:
                return twin
        return Twin.from_run(run_dir, home, dtype=None if cuda else cpu_decode_dtype(batched), merge=cuda)
    if base:
        return Twin.from_base(base, home, dtype=None if torch.cuda.is_available() else cpu_decode_dtype(batched))
    raise TalkalikeError("name a run to talk to (e.g. `talkalike chat dana`), or a base model with --base MODEL")


def physical_cores() -> int:
    """Physical cores available to this process: decode is memory-bound, so hyper-threads only add contention."""
    cpus = os.sched_getaffinity(0)
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topology / "physical_package_id").read_text(), (topology / "core_id").read_text()))
        except OSError:
            return len(cpus)  # no sysfs topology (containers, macOS): count logical CPUs
    return len(cores)


def _plain_strides(module, args):
    """The head's input with the strides of a fresh tensor. A prefill's last position (`logits_to_keep=1`) is a view
    [1, 1, hidden] of the prompt's states whose outer stride is the prompt's; torch counts it contiguous, but on a CPU
    a bf16 matmul then takes the batched path and copies the whole 262k-row head first: 0.7 s of every prefill on the
    embedded model, against 0.02 s for the same product from a fresh tensor (fp32 is not affected)."""
    x = args[0]
    if x.dim() < 3:
        return None
    return (x.reshape(-1, x.shape[-1]).view(x.shape), *args[1:])


def cpu_decode_dtype(batched: bool = False):
    """The CPU decode dtype. One conversation (chat, chat --compare): float32, since its matrix-vector products are
    bound by memory and fp32 gets closer to that limit (the weights are fp32 on disk, so they map with no conversion,
    and a merged LoRA delta keeps its full precision). Batches (eval, tune-generation, serve's concurrent requests):
    bfloat16 where the CPU computes it natively (AVX512-BF16 / AMX), since matrix-matrix products are compute-bound
    (serve's batch steps of 8 rows: 2.3x faster than fp32 on the 270M model, its lone replies as fast); else
    float32."""
    import torch

    from talkalike.train.recipe import cpu_computes_bf16

    if not batched:
        return torch.float32
    return torch.bfloat16 if cpu_computes_bf16() else torch.float32
