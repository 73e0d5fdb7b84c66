"""GPU decode for one stream: a static KV cache and the one-token step replayed as CUDA graphs.

Decoding one token reads every weight once, so the limit is weight bytes / memory bandwidth (about 340 tok/s for a
7B model in bf16 on an H200). Eager PyTorch spends most of each step launching a few thousand small kernels from
Python; a static cache gives every step identical shapes and addresses, so torch.compile's "reduce-overhead" mode
can capture the whole step once and replay it as a CUDA graph per token.

Three details make it work:
- the prompt is prefilled eagerly (it has its own length, and it allocates the static cache);
- CUDA-graph outputs live in a buffer that the next replay overwrites, so each step's logits are cloned before the
  next call, and each call is marked as a new step (the "overwritten by a subsequent run" error otherwise);
- the host reads each token one step late, so Python's per-token work overlaps the GPU's next step.

`talkalike.generate` calls `GraphDecoder.tokens` on CUDA; benchmarks/gpu_decode.py measures it against plain
`generate`. Run that benchmark on a GPU machine: `python benchmarks/gpu_decode.py`.
"""

import copy
from collections.abc import Callable, Iterator


class GraphDecoder:
    """Single-stream decoding with a static cache; build once per model and reuse across replies."""

    def __init__(self, model, max_cache_len: int = 4096, tune_kernels: bool = True):
        import torch
        from transformers import StaticCache

        if tune_kernels:
            # Let inductor tune its generated kernels' launch parameters for these exact (batch 1) shapes: a slower
            # first compile for faster matrix-vector products on every later token.
            import torch._inductor.config as inductor_config

            inductor_config.coordinate_descent_tuning = True

        assert next(model.parameters()).is_cuda, "GraphDecoder needs the model on a CUDA device"
        self.model = model
        self.max_cache_len = max_cache_len
        # Every layer gets a full-length static cache, sliding-window layers included: a sliding cache layer keeps a
        # Python-side fill counter that changes every token, which makes torch.compile recompile each step. The
        # attention masks still apply the model's own sliding window.
        cache_config = copy.deepcopy(model.config.get_text_config(decoder=True))
        cache_config.layer_types = ["full_attention"] * cache_config.num_hidden_layers
        self.cache = StaticCache(config=cache_config, max_cache_len=max_cache_len)
        self._step = torch.compile(self._forward, mode="reduce-overhead", fullgraph=True, dynamic=False)

    def _forward(self, input_ids, cache_position):
        out = self.model(
            input_ids=input_ids,
            position_ids=cache_position.unsqueeze(0),
            cache_position=cache_position,
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1, :]

    def tokens(
        self,
        prompt_ids: list[int],
        max_new_tokens: int,
        sample: Callable,
        stops: set[int],
    ) -> Iterator[int]:
        """Token ids after the prompt until a stop id or max_new_tokens; `sample(logits, seen) -> token tensor`."""
        import torch

        n = len(prompt_ids)
        if n + max_new_tokens > self.max_cache_len:
            raise ValueError(f"prompt of {n} tokens + {max_new_tokens} new exceeds the cache of {self.max_cache_len}")
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            self.cache.reset()  # inside inference mode: the cache tensors were made there
            ids = torch.tensor([prompt_ids], device=device)
            seen = torch.zeros(1, self.model.config.vocab_size, dtype=torch.bool, device=device)
            seen[0, ids[0]] = True
            logits = self.model(
                input_ids=ids,
                cache_position=torch.arange(n, device=device),
                past_key_values=self.cache,
                use_cache=True,
                logits_to_keep=1,
            ).logits[:, -1, :]
            position = torch.tensor([n], device=device)
            # The host learns token t through a pinned buffer and an event, while the GPU already runs step t+1:
            # streaming and the stop check then cost no GPU idle time.
            host = torch.empty(1, dtype=torch.long, pin_memory=True)
            ready = torch.cuda.Event()
            token = sample(logits, seen).view(1)
            for _ in range(max_new_tokens):
                host.copy_(token, non_blocking=True)
                ready.record()
                seen.scatter_(1, token.view(1, 1), True)
                torch.compiler.cudagraph_mark_step_begin()
                logits = self._step(token.view(1, 1), position).clone()
                position += 1
                next_token = sample(logits, seen).view(1)
                ready.synchronize()
                token_id = int(host[0])
                if token_id in stops:
                    return
                yield token_id
                token = next_token
