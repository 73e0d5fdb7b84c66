"""The fused decode step (engines/cuda_graph.py) computes what the model's own forward computes.

GraphEngine compiles FusedStep.step into CUDA graphs on a GPU (tests/test_gpu.py); here the same maths runs eagerly on
the CPU on tiny Llama-family models, so CI checks it without a GPU.
"""

import pytest
from conftest import build_tiny_llama

torch = pytest.importorskip("torch")


def fused_greedy(model, prompt: list[int], n: int, **options) -> list[int]:
    from talkalike.decode.engines.cuda_graph import FusedStep

    step = FusedStep(model, max_cache_len=64, **options)
    out = []
    with torch.inference_mode():
        logits = step.prefill(torch.tensor([prompt]))
        for position in range(len(prompt), len(prompt) + n):
            token = logits.argmax(dim=-1)
            out.append(int(token))
            logits = step.step(token.view(1, 1), torch.tensor([position]))
    return out


@pytest.mark.parametrize("model_type,extra", [
    ("mistral", {"sliding_window": None}),
    ("qwen2", {}),  # biases on q, k, v
    ("llama", {"attention_bias": True, "mlp_bias": True}),
])
def test_fused_decoding_gives_the_models_own_greedy_tokens(model_type, extra):
    from talkalike.decode.engines.cuda_graph import FusedStep

    model = build_tiny_llama(model_type, **extra)
    prompt = [2, 5, 17, 33, 9, 41, 7]
    assert FusedStep.supports(model, 64)
    with torch.inference_mode():
        eager = model.generate(torch.tensor([prompt]), max_new_tokens=16, min_new_tokens=16, do_sample=False,
                               pad_token_id=0)[0, len(prompt):].tolist()
        before = model(torch.tensor([prompt])).logits
    assert fused_greedy(model, prompt, 16) == eager
    with torch.inference_mode():  # the model's weights are views of the fused ones now, with the same values
        assert torch.equal(model(torch.tensor([prompt])).logits, before)
    assert model.model.layers[0].self_attn.k_proj.weight.untyped_storage().data_ptr() == \
        model.model.layers[0].self_attn.q_proj.weight.untyped_storage().data_ptr()


def test_fused_logits_match_a_full_forward_position_by_position():
    model = build_tiny_llama("mistral", sliding_window=None)
    sequence = [3, 14, 15, 92, 65, 35, 89, 79, 32, 38]
    from talkalike.decode.engines.cuda_graph import FusedStep

    step = FusedStep(model, max_cache_len=32)
    with torch.inference_mode():
        full = model(torch.tensor([sequence])).logits[0]
        step.prefill(torch.tensor([sequence[:4]]))
        for position in range(4, len(sequence)):
            logits = step.step(torch.tensor([[sequence[position]]]), torch.tensor([position]))
            torch.testing.assert_close(logits[0], full[position], rtol=1e-4, atol=1e-4)


def test_models_the_fused_step_cannot_reproduce_take_the_generic_path():
    from peft import LoraConfig, get_peft_model

    from talkalike.decode.engines.cuda_graph import FusedStep

    assert not FusedStep.supports(build_tiny_llama("gemma3_text"), 64)  # other norms and attention
    assert not FusedStep.supports(build_tiny_llama("mistral", sliding_window=16), 64)  # a window shorter than the cache
    lora = get_peft_model(build_tiny_llama("llama"), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert not FusedStep.supports(lora, 64)  # an unmerged adapter
