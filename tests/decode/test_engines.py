"""Every decode engine gives the greedy tokens of transformers' own `generate` (repetition penalty included),
through the one token loop (stream.tokens). The CUDA engines run only on a GPU machine (`-m gpu`)."""


import pytest
import torch
from conftest import build_windowed_gemma

from talkalike.decode import engines
from talkalike.decode.config import GenerationConfig
from talkalike.decode.sampling import Sampler
from talkalike.decode.stream import tokens
from talkalike.decode.twin import Twin

GREEDY = GenerationConfig(temperature=0, repetition_penalty=1.3, max_new_tokens=20)
PROMPT = [2, 5, 17, 33, 9, 41, 7, 100] * 8  # 64 tokens: replies cross the Triton step's first attention split


def gemma():
    return build_windowed_gemma(320, seed=1)


def mistral_on_gpu():
    from transformers import AutoModelForCausalLM, MistralConfig

    config = MistralConfig(vocab_size=320, hidden_size=128, intermediate_size=256, num_hidden_layers=3,
                           num_attention_heads=8, num_key_value_heads=2, sliding_window=None)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).cuda().eval()


def greedy_tokens(engine, vocab: int, prompt: list[int], stops=frozenset()) -> list[int]:
    sampler = Sampler(GREEDY, vocab, rows=1, device=engine.device)
    return list(tokens(engine, prompt, GREEDY.max_new_tokens, lambda logits, seen: sampler(logits, seen, [0.0]),
                       set(stops)))


@pytest.mark.parametrize("name,make", [
    ("eager", gemma),
    ("gemma_cpu", gemma),
    pytest.param("compile", mistral_on_gpu, marks=pytest.mark.gpu),
    pytest.param("triton", mistral_on_gpu, marks=pytest.mark.gpu),
])
def test_every_engine_gives_the_greedy_tokens_of_transformers_generate(name, make, tiny_tokenizer):
    from talkalike.decode.engines import gemma_cpu

    model = make()
    twin = Twin.of(model, tiny_tokenizer)
    if name == "gemma_cpu":
        twin = Twin.of_gemma(gemma_cpu.from_model(model), tiny_tokenizer)
    assert engines.pick(twin, 192) == name or name in ("eager", "compile")  # the specialised engine where it fits
    with torch.inference_mode():
        expected = model.generate(torch.tensor([PROMPT], device=twin.device), do_sample=False,
                                  repetition_penalty=GREEDY.repetition_penalty, max_new_tokens=GREEDY.max_new_tokens,
                                  min_new_tokens=GREEDY.max_new_tokens, eos_token_id=None,
                                  pad_token_id=0)[0, len(PROMPT):].tolist()
    engine = engines.build(name, twin, max_len=192)
    assert greedy_tokens(engine, twin.vocab_size, PROMPT) == expected
    shorter = PROMPT[:5]  # a shorter reply after a longer one: the stale cache beyond it must stay unseen
    with torch.inference_mode():
        expected_short = model.generate(torch.tensor([shorter], device=twin.device), do_sample=False,
                                        repetition_penalty=GREEDY.repetition_penalty,
                                        max_new_tokens=GREEDY.max_new_tokens, min_new_tokens=GREEDY.max_new_tokens,
                                        eos_token_id=None, pad_token_id=0)[0, len(shorter):].tolist()
    assert greedy_tokens(engine, twin.vocab_size, shorter) == expected_short
    stop = expected[3]
    assert greedy_tokens(engine, twin.vocab_size, PROMPT, stops={stop}) == expected[: expected.index(stop)]


def test_the_cpu_picks_the_merged_gemma_engine_for_a_merged_model_and_the_eager_one_otherwise(tiny_tokenizer):
    from talkalike.decode.engines import gemma_cpu

    twin = Twin.of(build_windowed_gemma(len(tiny_tokenizer)), tiny_tokenizer)
    assert engines.pick(twin, 64) == "eager"
    assert engines.pick(Twin.of_gemma(gemma_cpu.from_model(twin.model), tiny_tokenizer), 64) == "gemma_cpu"
    assert twin.engine(40) is twin.engine(30)  # built once, reused
    assert twin.engine(4000).max_len >= 4000  # a longer reply than the cache holds gets a larger one
