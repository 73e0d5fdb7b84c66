"""The train stage: LoRA (QLoRA on a CUDA GPU) on a dataset folder, into a self-describing run folder.

    talkalike train ~/noa-ds --name noa                 # the embedded Gemma 3 270M, preset by machine
    talkalike train ~/noa-ds --base yam-peleg/Hebrew-Mistral-7B --preset original
    talkalike train --resume noa                        # continue after a crash or kill
    accelerate launch --config_file configs/accelerate/ddp.yaml -m talkalike train ~/noa-ds

TRL's SFTTrainer does the BFD packing (position ids restart per sample, so samples never attend to each other) and
turns our persona masks into labels. Our one addition is `compute_loss`: the LM head runs only where a label is
taken, which for Gemma's 262k-token vocabulary is most of the work saved. A run is trained inside
`runs/<name>.partial/` (checkpoints there make it resumable) and renamed to `runs/<name>/` only when complete.
"""

import json
import math
import os
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from talkalike import console
from talkalike.errors import TalkalikeError
from talkalike.files import read_jsonl, say, write_json
from talkalike.memory import MEMORY_FILE, Memory
from talkalike.prepare.dataset import data_size, too_little_data
from talkalike.run import RUN_FILE, Run
from talkalike.template import turn_end_ids
from talkalike.train.recipe import Recipe, epochs_for, parse_memory_budget, resolve_recipe

RUN_FILES = (RUN_FILE, "adapter", "tokenizer", "dataset_stats.json", "eval.jsonl", "metrics.jsonl", "loss.png")


def read_dataset(folder: Path) -> tuple[list[dict], list[dict], dict]:
    """train rows, eval rows and dataset.json of a `talkalike dataset` folder; a clear error if there is nothing."""
    if not folder.is_dir():
        raise TalkalikeError(f"no dataset folder at {folder}; build one with `talkalike dataset --me NAME --out DIR`.")

    def rows(name: str) -> list[dict]:
        return read_jsonl(folder / name) if (folder / name).is_file() else []

    train_rows = rows("train.jsonl")
    if not train_rows:
        raise TalkalikeError(f"{folder} has no training samples (train.jsonl is missing or empty); rebuild it "
                             "with `talkalike dataset`, perhaps with more chats.")
    info_path = folder / "dataset.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    return train_rows, rows("eval.jsonl"), info


def render_rows(rows: list[dict], tokenizer, layout: str, all_turns: bool, max_length: int, memory=None,
                memories: int = 0) -> tuple[list[dict], dict]:
    """Rows rendered with THIS tokenizer's template into {input_ids, assistant_masks}, and token counts; with a
    memory, each row opens with the `memories` past exchanges recalled for it (no loss on them)."""
    from talkalike.memory import with_recalled
    from talkalike.template import render_sample

    records, stats = [], {"samples": 0, "tokens": 0, "trained_tokens": 0, "truncated": 0, "dropped_untrained": 0}
    for row in rows:
        messages = with_recalled(row, memory, memories)
        rendered = render_sample(messages, tokenizer, layout=layout, all_turns=all_turns)
        ids, mask = rendered.input_ids[:max_length], rendered.mask[:max_length]
        stats["truncated"] += len(rendered.input_ids) > max_length
        if not any(mask):
            stats["dropped_untrained"] += 1  # e.g. the persona's reply lay beyond max_length
            continue
        records.append({"input_ids": ids, "assistant_masks": mask})
        stats["samples"] += 1
        stats["tokens"] += len(ids)
        stats["trained_tokens"] += sum(mask)
    return records, stats


def lora_config(recipe: Recipe, turn_end_ids: list[int] | None = None):
    """The PEFT LoRA config of a recipe (also applied to meta models by `plan`); with `recipe.train_turn_end`, the
    embedding rows of `turn_end_ids` train too (peft's trainable tokens; tied heads follow)."""
    from peft import LoraConfig

    tokens = list(turn_end_ids or []) if recipe.train_turn_end else []
    return LoraConfig(r=recipe.lora_r, lora_alpha=recipe.lora_alpha, lora_dropout=recipe.lora_dropout, bias="none",
                      target_modules=list(recipe.target_modules), task_type="CAUSAL_LM",
                      trainable_token_indices=tokens or None)


def apply_lora(model, recipe: Recipe, turn_end_ids: list[int] | None = None, adapter: Path | None = None):
    """Wrap a base model with the recipe's LoRA, or with the trained `adapter` as trainable to continue from it
    (`talkalike update`); a 4-bit model is prepared for k-bit training first."""
    from peft import PeftModel, get_peft_model

    from talkalike.train.qlora import prepare_kbit

    if getattr(model, "is_loaded_in_4bit", False):
        # Not peft's prepare_model_for_kbit_training: it up-casts the frozen embeddings and head to fp32.
        model = prepare_kbit(model, gradient_checkpointing=recipe.gradient_checkpointing)
    if adapter is not None:  # its own adapter_config.json (rank, targets, trained token rows) applies
        return PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
    return get_peft_model(model, lora_config(recipe, turn_end_ids))


# Changes that speed training up and leave its maths as it is (benchmarks/gpu_train.py measures each):
# - packed-attention: attention within each packed sample, no dense mask (train/packed.py)
# - liger: on a CUDA GPU, Liger's Triton kernels for RMSNorm and SwiGLU where liger-kernel is installed
# - lora-input-cast: under bf16 autocast, no fp32 copy of each LoRA input that autocast casts straight back
# - lean-lora: on a CUDA GPU, LoRA's branch keeps no dropped-out copy of its input for the backward (train/lean_lora.py)
# - lora-add: with lean-lora, the branch adds into the base layer's output inside its last matrix product (one rounding
#   of the sum instead of three: the loss agrees within noise, not to the bit; +5.8% tokens/s on an H100)
# - liger-rope: with liger, Liger's RoPE kernel inside training steps (one kernel for q and k in place, where
#   transformers' own takes a dozen and a copy of each for the attention kernel's layout)
# - lora-kernels: with lean-lora, dropout's mask drawn inside the branch's r-wide products by Triton kernels
#   (train/lora_kernels.py): no dropped-out copy or mask in memory (the same distribution, not torch's draws)
# - lean-recompute: with lean-lora and offloaded checkpoints, a layer run again for its backward skips its MLP's last
#   4-bit product, which only the layer's output (never read then) reads (train/lean_lora.py, skip_unread_outputs)
# - lora-base: with lora-add, a 4-bit base layer and its branch as one function whose input gradient is one tensor
#   (the branch's part added in place into the base's, where autograd adds two into a third)
# - flat-optimizer: each optimizer group's tensors as slices of one flat parameter, so a step is one launch a group
#   (train/flat_optim.py; the recipe's 8-bit AdamW launched 451 a step from Python)
# - nf4-kernel: with lora-base, NF4 weights de-quantized in one Triton launch each with bitsandbytes' arithmetic
#   (train/nf4.py), where bitsandbytes takes three from several Python layers
# - prefetch-checkpoints: each offloaded layer's backward starts copying the next layer's input back on a side
#   stream (train/qlora.py), where the copy ran on the GPU's own stream, 2 ms a layer on an H100
# - scaled-products: with lora-base, the backward scales x's side's r-wide product inside it (cuBLAS's alpha) and
#   writes B's gradient in fp32 from its product: 448 launches less a step for a 7B model, whose host holds it back
# - native-gqa: grouped-query layers hand keys and values to the varlen flash kernel unrepeated (train/packed.py),
#   where PyTorch 2.11 has no `enable_gqa` and each layer copied them to every query head, each pass
# All are on by default.
SPEEDUPS = ("packed-attention", "liger", "lora-input-cast", "lean-lora", "lora-add", "liger-rope", "lora-kernels",
            "lean-recompute", "lora-base", "flat-optimizer", "nf4-kernel", "prefetch-checkpoints", "scaled-products",
            "native-gqa")
# Speed-ups written but not on by default until a GPU has timed them (`speedups=` turns one on; benchmarks/gpu_train.py
# gives them the row ours-persona-untimed): none now
UNTIMED_SPEEDUPS: tuple[str, ...] = ()
# Those that run Triton kernels: left out where Triton is not installed
TRITON_SPEEDUPS = ("lora-kernels", "nf4-kernel")


def available_speedups(names) -> set:
    """The speed-ups of `names` this machine can run: those of `TRITON_SPEEDUPS` only where Triton is installed
    (PyTorch's CUDA wheels bring it on Linux, not everywhere)."""
    import importlib.util

    names = set(names)
    return names if importlib.util.find_spec("triton") is not None else names - set(TRITON_SPEEDUPS)


def _liger_layers(model, rope: bool = False):
    """Liger's fused RMSNorm and SwiGLU for this model's own layers (its loss kernels stay off: our masked head
    computes the loss); False where liger-kernel is not installed or does not know the architecture. With `rope`,
    also Liger's RoPE, returned as a swap to make during training steps (`rope_swapped`); else True.

    Liger also replaces the classes and RoPE function of the architecture's module for the whole process; those are
    put back at once, so models built later (a decoder compiled after training, say) are transformers' own. RoPE is
    a module function that every instance looks up at each call, so it is swapped only inside `rope_swapped`.
    """
    import importlib

    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
    except ImportError:
        return False
    module = importlib.import_module(type(model).__module__)
    before = dict(vars(module))
    swap = None
    try:
        _apply_liger_kernel_to_instance(model=model, rope=rope, rms_norm=True, swiglu=True, cross_entropy=False,
                                        fused_linear_cross_entropy=False)
    except Exception:  # an architecture Liger has no kernels for: train on with the model's own layers
        return False
    finally:
        liger_rope = vars(module).get("apply_rotary_pos_emb")
        if rope and liger_rope is not None and liger_rope is not before.get("apply_rotary_pos_emb"):
            swap = (module, "apply_rotary_pos_emb", liger_rope)
        for name, value in before.items():
            if getattr(module, name, None) is not value:
                setattr(module, name, value)
        for name in set(vars(module)) - set(before):
            delattr(module, name)
    return swap if rope else True


@contextmanager
def rope_swapped(swap):
    """Inside, the architecture's module applies RoPE with Liger's kernel (`swap` from `_liger_layers(rope=True)`;
    None: as it is). A training step's forward, backward and recomputation all run inside."""
    if swap is None:
        yield
        return
    module, name, function = swap
    own = getattr(module, name)
    setattr(module, name, function)
    try:
        yield
    finally:
        setattr(module, name, own)


TURN_END_LR_SCALE = 10  # the turn-end token rows' learning rate, as a multiple of the adapters'


def _trainer_class():
    """SFTTrainer whose loss projects only labelled positions through the LM head (defined lazily: TRL is heavy)."""
    import torch
    from trl import SFTTrainer

    from talkalike.train.headloss import frozen_head_loss_sum
    from talkalike.train.packed import sample_bounds
    from talkalike.train.qlora import deferred_head, head_loss_sum

    class PersonaTrainer(SFTTrainer):
        """SFTTrainer with the LM head (and its LoRA, if targeted) applied only where a label is taken."""

        def __init__(self, *args, token_counts: dict, rope_swap=None, flat_optimizer: bool = False, **kwargs):
            super().__init__(*args, **kwargs)
            self.token_counts = token_counts
            self.rope_swap = rope_swap
            self.flat_optimizer = flat_optimizer
            self.counted_parameters = None
            self.walked = (None, None, [])  # a model, unwrapped, and its trained tensors (see `_walked`)
            # Our loss is a sum over labelled tokens divided by the whole accumulated batch's count, so the
            # Trainer must count them and must not divide again by the accumulation steps.
            self.model_accepts_loss_kwargs = True
            self.loss_is_scaled_for_ga = True

        def create_optimizer(self, *args, **kwargs):
            optimizer = super().create_optimizer(*args, **kwargs)
            # A trained token row starts where the base left it, tens of nats from being predicted; at the
            # adapters' learning rate one epoch moved it a third of the way (BENCHMARKS.md, "CPU training").
            tokens = [p for name, p in self.model.named_parameters() if p.requires_grad and "trainable_tokens" in name]
            if tokens:
                ids = {id(p) for p in tokens}
                for group in optimizer.param_groups:
                    group["params"] = [p for p in group["params"] if id(p) not in ids]
                optimizer.add_param_group({"params": tokens, "weight_decay": 0.0,
                                           "lr": self.args.learning_rate * TURN_END_LR_SCALE})
            if self.flat_optimizer and self.accelerator.num_processes == 1 and not self.is_fsdp_enabled:
                from talkalike.train.flat_optim import flatten_groups

                flatten_groups(optimizer)  # one launch a group a step (DDP and FSDP keep their own tensors)
            return optimizer

        def training_step(self, *args, **kwargs):
            with rope_swapped(self.rope_swap):  # forward, backward and the checkpoints' recomputation
                return super().training_step(*args, **kwargs)

        def train(self, *args, **kwargs):
            with zeroing_trained_only(self.model):
                return super().train(*args, **kwargs)

        def _walked(self, model) -> tuple:
            """`model` unwrapped by accelerate, and its tensors that train, found once: Trainer finds them each
            micro-batch (unwrapping walks every module) and hands every parameter to the gradient clipping, walks
            that left an H100 idle for tens of ms of each 0.8 s step (BENCHMARKS.md, "GPU training")."""
            if self.walked[0] is not model:
                self.walked = (model, self.accelerator.unwrap_model(model),
                               [p for p in model.parameters() if p.requires_grad])
            return self.walked[1:]

        def _clip_grad_norm(self, model):
            """Trainer's clipping over the trained tensors alone: the frozen ones have no gradient, so the norm and
            the clipping are the same (where a distributed engine owns the gradients, Trainer's own)."""
            from accelerate.utils import DistributedType

            plain = self.accelerator.distributed_type in (DistributedType.NO, DistributedType.MULTI_GPU)
            if not plain or self.is_fsdp_enabled or getattr(self, "is_distributed_loading_by_transformers", False):
                return super()._clip_grad_norm(model)
            return self.accelerator.clip_grad_norm_(self._walked(model)[1], self.args.max_grad_norm)

        def floating_point_ops(self, inputs) -> int:
            """Trainer's estimate (6 x tokens x parameters but embeddings), the parameters counted once: Trainer
            counts them again after every micro-batch, a walk over every module that left an H100 idle for ~30 ms
            of each 0.8 s step (BENCHMARKS.md, "GPU training")."""
            name = getattr(self.model, "main_input_name", "input_ids")
            if name not in inputs or not hasattr(self.model, "num_parameters"):
                return 0
            if self.counted_parameters is None:
                self.counted_parameters = self.model.num_parameters(exclude_embeddings=True)
            return 6 * inputs[name].numel() * self.counted_parameters

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")
            # Padding-free packing hands over one row of packed samples. Position i predicts token i+1; the collator
            # already set the label of each sample's first token to -100, so no position predicts across a sample
            # boundary.
            assert labels.size(0) == 1, "padding-free packing gives a batch of one row"
            targets = labels[0, 1:]
            keep = torch.zeros_like(labels[0], dtype=torch.bool)
            keep[:-1] = targets != -100
            model_inputs = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "position_ids")}
            unwrapped = self._walked(model)[0]
            if labels.is_cuda and "position_ids" in model_inputs and _packed(unwrapped):
                # Where the row's samples start, read once for every layer (train/packed.py: varlen attention)
                model_inputs.update(sample_bounds(model_inputs["position_ids"]))
            # `logits_to_keep` as a boolean mask goes through the model's own forward (so DDP and a LoRA on lm_head
            # work) and keeps only the labelled positions. A 1-D mask: transformers before 5.21 (the GPU image's
            # 5.17) slices `hidden_states[:, logits_to_keep, :]`, where a 2-D one raises IndexError.
            chosen = targets[keep[:-1]]
            frozen = None if labels.is_cuda or self.is_fsdp_enabled else _frozen_plain_head(unwrapped)
            if frozen is not None:
                # Nothing trains the head but a few token rows: its loss gradient is taken while the logits exist
                # (train/headloss.py). On a CPU (compute-bound, memory to spare) recomputing chunks costs more.
                with deferred_head(unwrapped):
                    outputs = model(**model_inputs, logits_to_keep=keep, use_cache=False)
                hidden = outputs.logits.reshape(-1, outputs.logits.size(-1))
                loss_sum = frozen_head_loss_sum(hidden, targets=chosen, **frozen)
            elif self.is_fsdp_enabled or not labels.is_cuda:
                # FSDP gathers the head's shards only inside the model's forward.
                outputs = model(**model_inputs, logits_to_keep=keep, use_cache=False)
                logits = outputs.logits.reshape(-1, outputs.logits.size(-1)).float()
                loss_sum = torch.nn.functional.cross_entropy(logits, chosen, reduction="sum")
            else:
                # With the head deferred that forward returns hidden states, and the head (LoRA included) and the
                # cross-entropy run in checkpointed chunks: no rows x vocabulary tensor is ever whole.
                with deferred_head(unwrapped) as head:
                    outputs = model(**model_inputs, logits_to_keep=keep, use_cache=False)
                hidden = outputs.logits.reshape(-1, outputs.logits.size(-1))
                loss_sum = head_loss_sum(head, hidden, chosen)
            count = chosen.numel() if num_items_in_batch is None else num_items_in_batch
            loss = loss_sum / torch.as_tensor(count, device=loss_sum.device).clamp(min=1)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes  # DDP averages gradients over ranks
            if model.training:
                mask = inputs.get("attention_mask")
                self.token_counts["tokens"] += int(mask.sum() if mask is not None else labels.numel())
                self.token_counts["trained_tokens"] += int(chosen.numel())
            return (loss, {"loss": loss}) if return_outputs else loss

    return PersonaTrainer


@contextmanager
def zeroing_trained_only(model):
    """Inside, `model.zero_grad()` (set to none, as Trainer calls it after each optimizer step) clears the gradients
    of the tensors that trained when it began: torch's walks every module of a 7B model, which holds nothing else
    (frozen tensors get no gradient), while the GPU waits. Zeroing in place stays torch's."""
    trained = [p for p in model.parameters() if p.requires_grad]
    own = model.zero_grad

    def zero_grad(set_to_none: bool = True):
        if not set_to_none:
            return own(set_to_none)
        for param in trained:
            param.grad = None

    model.zero_grad = zero_grad
    try:
        yield
    finally:
        del model.zero_grad


def _checkpoints_callback(offload: bool, prefetch: bool, whole: int):
    """Once Trainer has turned checkpointing on (at train()), the last `whole` layers run whole and the checkpointed
    ones (with `offload`) keep their inputs in host memory."""
    from transformers import TrainerCallback

    from talkalike.train.qlora import keep_whole, use_offloaded_checkpoints

    class Checkpoints(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            keep_whole(model, whole)
            if offload:
                use_offloaded_checkpoints(model, prefetch=prefetch)

    return Checkpoints()


def memory_budget_gb(recipe: Recipe) -> float | None:
    """The recipe's GPU memory budget in GB (None: none): at most the first CUDA device's memory, which "auto" asks
    for (a bigger budget than the card would run out of memory; said on stderr)."""
    budget = recipe.memory_budget_gb
    if budget is None:
        return None
    import torch

    card = torch.cuda.get_device_properties(0).total_memory / 1e9
    if budget != "auto" and float(budget) > card:
        say(f"note: a memory budget of {float(budget):g} GB is more than this GPU has; using its {card:.1f} GB")
    return card if budget == "auto" else min(float(budget), card)


def whole_layers_within(model, recipe: Recipe) -> int:
    """How many of `model`'s decoder layers run whole within the recipe's memory budget (`talkalike.train.plan`'s
    estimate; 0 without a budget), said on stderr."""
    budget = memory_budget_gb(recipe)
    if budget is None:
        return 0
    from talkalike.train.plan import whole_layers

    config = model.config
    whole = whole_layers(config, recipe, budget)
    layers = config.get_text_config().num_hidden_layers
    say(f"memory budget {budget:.1f} GB: the last {whole} of {layers} layers run whole, the rest are recomputed "
        "for the backward")
    return whole


def _packed(model) -> bool:
    """Whether the model attends through train/packed.py's per-sample attention."""
    from talkalike.train.packed import NAME

    return getattr(model.get_base_model().config, "_attn_implementation", None) == NAME


def _frozen_plain_head(model) -> dict | None:
    """The LM head's frozen weight (and any trainable-token rows replacing some of its rows) when it may be deferred:
    a plain linear layer with no LoRA, no bias and no soft-capping between head and loss; else None."""
    import torch
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer
    from peft.utils.other import TrainableTokensWrapper

    head = model.get_base_model().get_output_embeddings()
    if isinstance(head, TrainableTokensWrapper):
        head = head.token_adapter
    parts = {}
    if isinstance(head, TrainableTokensLayer):
        if head.disable_adapters or len(head.active_adapters) != 1:
            return None
        name = head.active_adapters[0]
        parts = {"rows": head.trainable_tokens_delta[name], "row_ids": list(head.token_indices[name])}
        head = head.base_layer
    plain = (type(head) is torch.nn.Linear and head.bias is None and not head.weight.requires_grad
             and getattr(model.get_base_model().config, "final_logit_softcapping", None) is None)
    return {"weight": head.weight, **parts} if plain else None


def _head_adapter_accepted(model):
    """A context in which TRL accepts a LoRA on lm_head.

    TRL refuses one because its own fused head multiplies by `lm_head.weight` and would skip the adapter; our
    compute_loss calls the lm_head module itself, adapter included, so the refusal does not apply here. TRL is shown
    the base layer while it checks; nothing else changes.
    """
    from contextlib import contextmanager

    from peft.tuners.tuners_utils import BaseTunerLayer

    @contextmanager
    def accepted():
        head = model.get_output_embeddings()
        if not isinstance(head, BaseTunerLayer):
            yield
            return
        base = model.get_base_model()
        base.get_output_embeddings = head.get_base_layer
        try:
            yield
        finally:
            del base.get_output_embeddings

    return accepted()


def _records_dataset(records: list[dict]):
    """A datasets.Dataset of token records, fingerprinted from the records themselves.

    datasets otherwise fingerprints a new table by pickling it with dill, which fails on Python 3.12 with pyarrow 26
    ("Can't pickle <class 'MonthDayNano'>"), seen on the GPU machine.
    """
    import hashlib
    import json

    import datasets
    from datasets.table import InMemoryTable

    digest = hashlib.sha256(json.dumps(records, separators=(",", ":")).encode()).hexdigest()[:16]
    return datasets.Dataset(InMemoryTable.from_pylist(records), fingerprint=digest)


def make_trainer(model, tokenizer, train_records: list[dict], eval_records: list[dict], recipe: Recipe,
                 output_dir: Path, *, max_steps: int | None = None, callbacks: list | None = None,
                 turn_end_ids: list[int] | None = None,
                 token_counts: dict | None = None, adapter: Path | None = None, speedups=None):
    """Our training path for a loaded base model: LoRA + SFTTrainer with packing and the masked LM head; with
    `adapter`, that trained LoRA continues instead of a fresh one. `speedups` (default: all of `SPEEDUPS`) names the
    changes that leave the maths as it is; the GPU benchmark turns them off one at a time.

    The GPU benchmark calls this with a model built in memory; `train` calls it with a loaded base.
    """
    import datasets
    import torch
    from transformers import PrinterCallback, set_seed
    from trl import SFTConfig

    from talkalike.model import token_rows_in_place

    datasets.disable_progress_bars()  # per-map bars drown the training bar; our summary line says what was built
    has_eval = bool(eval_records)
    config = SFTConfig(
        output_dir=str(output_dir),
        num_train_epochs=recipe.epochs,
        max_steps=max_steps or -1,
        per_device_train_batch_size=recipe.batch_size,
        per_device_eval_batch_size=recipe.batch_size,
        gradient_accumulation_steps=recipe.grad_accum,
        gradient_checkpointing=recipe.gradient_checkpointing,
        learning_rate=recipe.learning_rate,
        warmup_steps=recipe.warmup_steps,
        weight_decay=recipe.weight_decay,
        lr_scheduler_type=recipe.lr_scheduler,
        optim=recipe.optim,
        bf16=recipe.bf16,  # autocast; on a CPU resolve_recipe allows it only with native bf16 instructions
        eval_strategy="epoch" if has_eval else "no",
        save_strategy="epoch",
        save_total_limit=recipe.save_total_limit,
        load_best_model_at_end=has_eval,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        prediction_loss_only=True,
        logging_steps=1,
        logging_first_step=True,
        # Trainer's filter reads every micro-batch's loss on the host to drop NaN and inf from the logged mean: a wait
        # for the whole backward pass, with the host's end-of-step work then left for an idle GPU. A NaN shows as one.
        logging_nan_inf_filter=False,
        report_to="none",
        disable_tqdm=True,  # our own bar shows tokens/s and ETA
        seed=recipe.seed,
        packing=recipe.packing,
        packing_strategy="bfd",
        padding_free=recipe.packing,
        max_length=recipe.max_length,
        completion_only_loss=False,  # our assistant_masks already hold the persona mask
        dataloader_pin_memory=torch.cuda.is_available(),
        use_cpu=not torch.cuda.is_available(),  # transformers only accepts bf16 without a GPU when told so
        # Every LoRA weight gets a gradient every step, but the LM head's runs after the model's forward (the
        # masked head above), so DDP's search for unused parameters would mark them ready twice (seen on 2 GPUs:
        # "Expected to mark a variable ready only once"); Trainer turns the search on for any PeftModel.
        ddp_find_unused_parameters=False,
    )
    speedups = available_speedups(SPEEDUPS if speedups is None else speedups)
    if recipe.packing and "packed-attention" in speedups:
        # SDPA computes every block of its dense mask over a packed row on a CPU, and on a GPU builds the mask and
        # goes through cuDNN's masked kernel (1 ms of host time a call, in a host-bound step); per-sample attention
        # skips the masked blocks, in one varlen flash call per layer on a GPU (train/packed.py).
        from talkalike.train.packed import use_packed_attention

        use_packed_attention(model, native_gqa="native-gqa" in speedups)
    rope_swap = None
    if torch.cuda.is_available() and "liger" in speedups:
        applied = _liger_layers(model, rope="liger-rope" in speedups)
        rope_swap = applied if isinstance(applied, tuple) else None
    set_seed(recipe.seed)  # LoRA's A matrices are drawn at random: seed them so reruns and resumes agree
    model = apply_lora(model, recipe, turn_end_ids, adapter)
    # The trained turn-end rows without peft's copy of the whole 262k-row table at every forward and its whole-table
    # gradient at every backward: the same loss and gradients (tests/test_model_rows.py).
    token_rows_in_place(model)
    if recipe.bf16 and "lora-input-cast" in speedups:
        # Under autocast, peft's cast of each LoRA input to the adapter's fp32 is undone at once by autocast's cast
        # back to bf16 for the matmul: two copies of the activations per adapted layer for the same product (8% of a
        # training step of the embedded model on a CPU; on a GPU two more launches per layer in a host-bound step).
        from peft.tuners.tuners_utils import BaseTunerLayer

        for module in model.modules():
            if isinstance(module, BaseTunerLayer):
                module.cast_input_dtype_enabled = False
    if torch.cuda.is_available() and "lean-lora" in speedups:
        # Per adapted projection, peft keeps the dropped-out input and its mask for the backward; the lean branch
        # draws the mask again instead (5% faster on an H200 at the default geometry, the same maths).
        from talkalike.train.lean_lora import use_lean_lora

        use_lean_lora(model, fused_add="lora-add" in speedups, kernels="lora-kernels" in speedups,
                      base="lora-base" in speedups, nf4="nf4-kernel" in speedups,
                      scaled="scaled-products" in speedups)
        if "lean-recompute" in speedups and recipe.gradient_checkpointing and recipe.offload_checkpoints:
            from talkalike.train.lean_lora import skip_unread_outputs

            skip_unread_outputs(model)
    callbacks = list(callbacks or [])
    if torch.cuda.is_available() and recipe.gradient_checkpointing:
        whole = whole_layers_within(model, recipe)
        if recipe.offload_checkpoints or whole:
            callbacks.append(_checkpoints_callback(recipe.offload_checkpoints, "prefetch-checkpoints" in speedups,
                                                   whole))
    if has_eval and recipe.early_stopping_patience:
        from transformers import EarlyStoppingCallback

        callbacks.append(EarlyStoppingCallback(early_stopping_patience=recipe.early_stopping_patience))
    trainer_class = _trainer_class()
    with _head_adapter_accepted(model):
        trainer = trainer_class(
            model=model,
            args=config,
            train_dataset=_records_dataset(train_records),
            eval_dataset=_records_dataset(eval_records) if has_eval else None,
            processing_class=tokenizer,
            callbacks=callbacks,
            token_counts=token_counts if token_counts is not None else {"tokens": 0, "trained_tokens": 0},
            rope_swap=rope_swap,
            flat_optimizer="flat-optimizer" in speedups,
        )
    trainer.remove_callback(PrinterCallback)  # it prints log dicts to stdout, which is for results; see metrics.jsonl
    # Packing decides how many rows (and so optimizer steps) an epoch holds: only now can a small chat's passes be set.
    per_step = recipe.batch_size * recipe.grad_accum * trainer.accelerator.num_processes
    trainer.args.num_train_epochs = epochs_for(recipe, math.ceil(len(trainer.train_dataset) / per_step))
    return trainer


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameters; 4-bit packed weights counted as the parameters they stand for."""
    from talkalike.model import parameter_count

    return sum(p.numel() for p in model.parameters() if p.requires_grad), parameter_count(model)


def _memory_gb() -> float:
    """Peak memory so far: CUDA allocations on a GPU, else the process's peak resident size."""
    import resource

    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _run_log_callback(metrics_path: Path, token_counts: dict, progress: bool):
    """A TrainerCallback writing metrics.jsonl at every log and drawing a progress bar with tokens/s and ETA."""
    from tqdm.auto import tqdm
    from transformers import TrainerCallback

    class RunLog(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if metrics_path.is_file():  # resuming: drop what was logged after the checkpoint we continue from
                lines = [line for line in metrics_path.read_text().splitlines()
                         if json.loads(line)["step"] <= state.global_step]
                metrics_path.write_text("".join(line + "\n" for line in lines))
                if lines:  # and keep counting tokens from where that checkpoint was
                    last = json.loads(lines[-1])
                    token_counts.update(tokens=last["tokens"], trained_tokens=last["trained_tokens"])
            self.start, self.tokens_at_start = time.perf_counter(), dict(token_counts)
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, unit="step", desc="training",
                            file=sys.stderr, disable=not progress or not state.is_world_process_zero)

        def rates(self) -> tuple[float, float]:
            elapsed = max(time.perf_counter() - self.start, 1e-9)
            return ((token_counts["tokens"] - self.tokens_at_start["tokens"]) / elapsed,
                    (token_counts["trained_tokens"] - self.tokens_at_start["trained_tokens"]) / elapsed)

        def on_step_end(self, args, state, control, **kwargs):
            tokens_per_s, _ = self.rates()
            self.bar.set_postfix_str(f"{tokens_per_s:.0f} tok/s", refresh=False)
            self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero:
                return
            tokens_per_s, trained_per_s = self.rates()
            record = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), **(logs or {}),
                      "tokens_per_s": round(tokens_per_s, 2), "trained_tokens_per_s": round(trained_per_s, 2),
                      "tokens": token_counts["tokens"], "trained_tokens": token_counts["trained_tokens"],
                      "memory_gb": round(_memory_gb(), 3)}
            if "loss" in record:
                self.bar.set_postfix_str(f"loss {record['loss']:.3f}, {tokens_per_s:.0f} tok/s", refresh=False)
            with metrics_path.open("a") as out:
                out.write(json.dumps(record) + "\n")

        def on_train_end(self, args, state, control, **kwargs):
            self.bar.close()

    return RunLog()


def plot_loss(metrics_path: Path, png: Path) -> None:
    """The loss curve (train, and eval where measured) of a metrics.jsonl as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    records = read_jsonl(metrics_path)
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("loss", "train loss"), ("eval_loss", "eval loss")):
        points = [(r["step"], r[key]) for r in records if key in r]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o" if key == "eval_loss" else None, label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (persona tokens)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def _oom_error(base: str | None, preset: str) -> TalkalikeError:
    base_arg = f" --base {base}" if base else ""
    return TalkalikeError(
        f"out of memory while training. See what fits with `talkalike plan{base_arg} --preset {preset}`, then try "
        "--preset original on a CUDA GPU (4-bit), a smaller --base, or a dataset with shorter windows "
        "(`talkalike dataset --max-tokens 512`); resume with `talkalike train --resume NAME`."
    )


def _is_oom(error: BaseException) -> bool:
    import torch

    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and ("out of memory" in str(error) or "can't allocate memory" in str(error)))


def train(dataset: str | os.PathLike | None, home: Path, *, base: str | None = None, preset: str | None = None,
          name: str | None = None, epochs: float | None = None, max_steps: int | None = None,
          all_turns: bool = False, resume: str | None = None, callbacks: list | None = None,
          progress: bool = True, force: bool = False, adapter: str | None = None,
          train_file: str | None = None, preference_pairs: int | None = None,
          memory_budget: float | str | None = None) -> Path:
    """Train a run folder `runs/<name>/` from a dataset folder, or finish an interrupted run (`resume=name`).

    `force` replaces an existing run of that name, only once the new one is complete (a failed retrain keeps the old
    run), and trains even on a dataset too small to learn from. `adapter` continues that trained adapter instead of
    a fresh LoRA, and `train_file` trains on its rows instead of the dataset's train.jsonl (`talkalike update`).
    `preference_pairs` overrides the recipe's preference tuning after the supervised passes (train/preference.py);
    `memory_budget` (GB or "auto") lets a CUDA GPU keep layers whole instead of recomputing them (the recipe's
    `memory_budget_gb`)."""
    import torch
    from transformers.trainer_utils import get_last_checkpoint

    from talkalike.home import runs_dir
    from talkalike.model import load_base, load_tokenizer
    from talkalike.template import chat_template

    runs = runs_dir(home)
    if resume:
        work = runs / f"{resume}.partial"
        if not (work / "resume.json").is_file():
            raise TalkalikeError(f"no interrupted run named {resume!r} (looked for {work}/resume.json).")
        request = json.loads((work / "resume.json").read_text())
    else:
        if dataset is None:
            raise TalkalikeError("give a dataset folder (`talkalike train DATASET_DIR`) or --resume RUN.")
        dataset_path = Path(dataset).expanduser().resolve()
        name = name or f"{dataset_path.name}-{datetime.now():%Y%m%d-%H%M%S}"
        request = {"dataset": str(dataset_path), "base": base, "preset": preset, "name": name, "epochs": epochs,
                   "max_steps": max_steps, "all_turns": all_turns, "force": force, "adapter": adapter,
                   "train_file": train_file, "preference_pairs": preference_pairs, "memory_budget": memory_budget}
        work = runs / f"{name}.partial"
    final = runs / request["name"]
    force = force or bool(request.get("force"))
    if final.exists() and not force:
        raise TalkalikeError(f"a run named {request['name']!r} already exists at {final}; choose another --name, or "
                             "replace it with --force.")
    train_rows, eval_rows, dataset_info = read_dataset(Path(request["dataset"]))
    if request.get("train_file"):
        train_rows = read_jsonl(Path(request["train_file"]))
    too_little = too_little_data(*data_size(train_rows + eval_rows))
    if too_little and not force:
        raise TalkalikeError(f"{too_little}; train anyway with --force.")
    if too_little:
        say(f"warning: {too_little}; training anyway (--force)")

    cuda = torch.cuda.is_available()
    recipe, notes = resolve_recipe(request["preset"], cuda, epochs=request["epochs"],
                                   persona_only_loss=False if request["all_turns"] else None,
                                   preference_pairs=request.get("preference_pairs"),
                                   memory_budget_gb=request.get("memory_budget"))
    for note in notes:
        say(f"note: {note}")
    if not eval_rows:
        say("note: the dataset has no eval.jsonl samples: no evaluation, no early stopping")

    tokenizer = load_tokenizer(request["base"], home)
    layout = dataset_info.get("layout", "chat")
    # Re-render with THIS model's template, whatever base the dataset was built for; setting it on the tokenizer
    # also saves it with the run and spares template lookups per sample.
    tokenizer.chat_template = chat_template(tokenizer, layout)
    all_turns = not recipe.persona_only_loss
    memory = Memory.open(Path(request["dataset"]))
    if recipe.memories and memory is None:
        say(f"note: {request['dataset']} has no {MEMORY_FILE} (built before memory existed): training without recall")
    train_records, train_stats = render_rows(train_rows, tokenizer, layout, all_turns, recipe.max_length, memory,
                                             recipe.memories)
    eval_records, eval_stats = render_rows(eval_rows, tokenizer, layout, all_turns, recipe.max_length, memory,
                                           recipe.memories)
    if not train_records:
        raise TalkalikeError("no training sample has a persona turn left after rendering; check --me in the dataset.")

    # Frozen weights in bf16 when computing in bf16: half the memory, and autocast need not cast them every step
    model = load_base(request["base"], home, quantize_4bit=recipe.quantize_4bit,
                      dtype=torch.bfloat16 if recipe.bf16 else None)
    base_info = model.talkalike_base
    work.mkdir(parents=True, exist_ok=True)
    say(f"run {request['name']}: training in {work} (continue an interrupted run with --resume {request['name']})")
    write_json(work / "resume.json", request)
    token_counts = {"tokens": 0, "trained_tokens": 0}
    metrics_path = work / "metrics.jsonl"
    log = _run_log_callback(metrics_path, token_counts, progress)
    trainer = make_trainer(model, tokenizer, train_records, eval_records, recipe, work / "checkpoints",
                           max_steps=request["max_steps"], callbacks=[log, *(callbacks or [])],
                           token_counts=token_counts, turn_end_ids=turn_end_ids(tokenizer, layout),
                           adapter=Path(request["adapter"]) if request.get("adapter") else None)
    if recipe.preference_pairs and trainer.accelerator.num_processes > 1:
        # The preference loop is a single process's (train/preference.py): asked for, that is an error before any
        # step; left to the preset, the run trains without it and says so.
        if request.get("preference_pairs"):
            raise TalkalikeError("preference tuning runs in one process: train without `accelerate launch`, or "
                                 "without --preference-pairs")
        note = (f"{trainer.accelerator.num_processes} processes: no preference tuning after the supervised passes "
                "(it runs in one process; train on one GPU for it)")
        say(f"note: {note}")
        notes.append(note)
        recipe = replace(recipe, preference_pairs=0)
    trainable, total = count_parameters(trainer.model)
    device = "cuda" if cuda else "cpu"
    dtype = "bf16" if recipe.bf16 else "fp32"
    resolved = {"preset": recipe.name, "layout": layout, "device": device, "dtype": dtype, **recipe.as_dict(),
                "epochs": trainer.args.num_train_epochs}
    say(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)")
    console.detail("config: " + json.dumps(resolved))  # also saved in run.json
    say(f"data: {train_stats['samples']} train samples, {train_stats['tokens']:,} tokens "
         f"({train_stats['trained_tokens']:,} trained); {eval_stats['samples']} eval samples")

    checkpoint = get_last_checkpoint(str(work / "checkpoints")) if resume and (work / "checkpoints").is_dir() else None
    if resume:
        say(f"resuming from {checkpoint}" if checkpoint else "no checkpoint yet: starting over")
    started = time.time()
    try:
        result = trainer.train(resume_from_checkpoint=checkpoint)
    except (RuntimeError, MemoryError) as error:
        if isinstance(error, MemoryError) or _is_oom(error):
            raise _oom_error(request["base"], recipe.name) from None
        raise

    preference = None
    if recipe.preference_pairs:
        preference = _preference_tuning(trainer, tokenizer, layout, train_rows, eval_rows, memory, recipe,
                                        metrics_path, progress, asked=bool(request.get("preference_pairs")))
    trainer.accelerator.wait_for_everyone()
    if trainer.is_fsdp_enabled:  # the sharded adapter is gathered by all processes, written by the main one
        trainer.save_model(str(work / "fsdp-adapter"))
    if not trainer.is_world_process_zero():
        return final  # under `accelerate launch` the main process alone writes the run folder
    out = work / "run"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    if trainer.is_fsdp_enabled:
        os.rename(work / "fsdp-adapter", out / "adapter")
    else:
        trainer.model.save_pretrained(str(out / "adapter"))  # the best eval-loss checkpoint when evaluating
    tokenizer.save_pretrained(str(out / "tokenizer"))
    eval_src = Path(request["dataset"]) / "eval.jsonl"
    if eval_src.is_file():
        shutil.copyfile(eval_src, out / "eval.jsonl")
    else:
        (out / "eval.jsonl").write_text("")
    if memory is not None:
        # chat, serve and eval recall from the run folder (and read the persona's script shares and messages per
        # turn there), whether or not training recalled too
        shutil.copyfile(memory.path, out / MEMORY_FILE)
    source_stats = Path(request["dataset"]) / "stats.json"
    dataset_stats = json.loads(source_stats.read_text()) if source_stats.is_file() else None
    write_json(out / "dataset_stats.json", {"train": train_stats, "eval": eval_stats, "dataset": dataset_stats})
    shutil.copyfile(metrics_path, out / "metrics.jsonl")
    plot_loss(out / "metrics.jsonl", out / "loss.png")
    run_info = {
        "name": request["name"], "base": base_info, "layout": layout, "preset": recipe.name,
        "all_turns": all_turns, "config": resolved, "dataset": request["dataset"], "dataset_info": dataset_info,
        "device": device, "dtype": dtype, "quantized": recipe.quantize_4bit,
        "started_from": request.get("adapter"), "train_file": request.get("train_file"),
        "trainable_params": trainable, "total_params": total, "notes": notes,
        "steps": trainer.state.global_step, "epochs_done": round(trainer.state.epoch or 0.0, 4),
        "train_loss": result.training_loss, "best_eval_loss": trainer.state.best_metric,
        "best_checkpoint_step": _checkpoint_step(trainer.state.best_model_checkpoint),
        "train_seconds": round(time.time() - started, 1), "tokens_trained": token_counts,
        "preference": preference,
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        # whom the persona talked to, most turns first: chat and serve name the first in the contact line
        "contacts": list((dataset_stats or {}).get("contacts") or {}),
    }
    Run.write(out, run_info)
    _swap_into_place(out, final)
    shutil.rmtree(work)  # checkpoints are only for resuming; the run folder holds the best adapter
    return final


def _preference_tuning(trainer, tokenizer, layout: str, train_rows: list[dict], eval_rows: list[dict], memory,
                       recipe: Recipe, metrics_path: Path, progress: bool, asked: bool = False) -> dict:
    """DPO on the supervised twin (train/preference.py): pairs from the training rows, and held-out pairs from the
    eval rows to say whether the twin now prefers the real reply more often; its steps go into metrics.jsonl. Left
    to the preset, a chat with fewer than `recipe.preference_min_pairs` pairs skips it (`asked`: the user set
    --preference-pairs, which always runs)."""
    from talkalike.train import preference

    pairs = preference.preference_pairs(train_rows, memory, recipe.memories, recipe.preference_pairs, recipe.seed)
    if len(pairs) < recipe.preference_min_pairs and not asked:
        note = (f"no preference tuning: {len(pairs)} pairs, fewer than the {recipe.preference_min_pairs} it needs "
                "to help (--preference-pairs N runs it anyway)")
        say(f"note: {note}")
        return {"pairs": 0, "skipped": note}
    held_out = preference.preference_pairs(eval_rows, memory, recipe.memories, 200, recipe.seed)
    model = trainer.accelerator.unwrap_model(trainer.model)
    base_replies = 0
    if recipe.preference_base_share:
        say(f"preference tuning: sampling the base model's reply to {recipe.preference_base_share:.0%} of the "
            "histories")
        pairs, base_replies = preference.with_base_replies(model, tokenizer, layout, pairs,
                                                           recipe.preference_base_share, recipe.seed)
    say(f"preference tuning: {len(pairs)} pairs of the real reply against one from another conversation"
        + (f" ({base_replies} against the base model's reply)" if base_replies else ""))

    def log(record: dict) -> None:
        with metrics_path.open("a") as out:
            out.write(json.dumps({"step": trainer.state.global_step, **record}) + "\n")

    report = preference.tune(model, tokenizer, layout, pairs, held_out, recipe, on_log=log, progress=progress)
    if recipe.preference_base_share:
        report["against the base model's reply"] = base_replies
    held = report.get("real reply preferred (held out)")
    if held:
        say(f"preference tuning: held-out real reply preferred {held['before']:.0%} -> {held['after']:.0%}")
    return report


def _swap_into_place(new: Path, final: Path) -> None:
    """Rename the finished run to its name; a run already there (train --force) is moved aside first and deleted
    only after the new one is in place, so at every moment one complete run carries the name."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.replaced-{os.getpid()}")
        os.rename(final, old)
    os.rename(new, final)
    if old is not None:
        shutil.rmtree(old)


def _checkpoint_step(path: str | None) -> int | None:
    return int(path.rsplit("-", 1)[1]) if path else None


def cmd_train(args) -> int:
    """`talkalike train`: fine-tune and print the run folder."""
    from talkalike.home import resolve_home

    home = resolve_home(args.home)
    try:
        run = train(args.dataset, home, base=args.base, preset=args.preset, name=args.name, epochs=args.epochs,
                    max_steps=args.max_steps, all_turns=args.all_turns, resume=args.resume, force=args.force,
                    preference_pairs=args.preference_pairs, memory_budget=parse_memory_budget(args.memory_budget))
    except KeyboardInterrupt:
        name = args.resume or args.name
        hint = f"`talkalike train --resume {name}`" if name else "`talkalike train --resume NAME` (see runs/*.partial)"
        say(f"interrupted: continue from the last checkpoint with {hint}")
        raise
    if not args.no_calibrate and int(os.environ.get("RANK", "0")) == 0:  # under `accelerate launch`, the main one
        calibrate_habits(run, home)
    print(run)
    info = Run.open(run).info
    loss = info.get("best_eval_loss")
    summary = f"eval loss {loss:.2f}" if loss is not None else f"train loss {info['train_loss']:.2f}"
    console.done(f"{info['steps']} steps, {summary}", f"talkalike eval {run.name}")
    return 0


def calibrate_habits(run: Path, home: Path) -> None:
    """The run's emoji and laugh rates calibrated on its own training turns (evaluate/calibrate.py), once the
    trainer's memory is given back."""
    import gc

    import torch

    from talkalike.evaluate.calibrate import calibrate_run, summary

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    record = calibrate_run(run, home)
    if record is not None:
        say(summary(record))
