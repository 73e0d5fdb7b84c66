"""The Triton decode step (engines/triton_step.py) computes what the model's own forward computes, and serve's slots
(decode/slots.py) attend with its batched attention as with masked SDPA.

On a GPU its kernels run compiled inside one CUDA graph (tests/test_gpu.py). Here they run under Triton's interpreter
(TRITON_INTERPRET=1, numpy on the CPU) on tiny Llama-family models: the same indexing, masks and maths, slowly, so the
sequences are short and the block shapes large.
"""

import importlib
import sys

import pytest
from conftest import build_tiny_llama

torch = pytest.importorskip("torch")

BIG_BLOCKS = (16, 128, 4)  # fewer interpreted programs per product


def _python_triton_modules() -> list[str]:
    """triton's Python modules (its compiled core, triton._C, can't be imported twice and needs no reload)."""
    return [name for name in sys.modules if (name == "triton" or name.startswith("triton."))
            and not name.startswith("triton._C")]


def _interpreted(name: str):
    """Module `name` with its Triton kernels defined under the interpreter, forgotten after the caller is done.

    Triton decides at import whether its own library functions (tl.sum, tl.max...) are interpreted, so a triton
    that another test's import brought in first is set aside here and given back afterwards."""
    patch = pytest.MonkeyPatch()
    patch.setenv("TRITON_INTERPRET", "1")
    saved = {module: sys.modules.pop(module) for module in [*_python_triton_modules(), name] if module in sys.modules}
    module = importlib.import_module(name)
    _squeeze_scalar_index(patch)
    yield module
    for module in [*_python_triton_modules(), name]:
        sys.modules.pop(module, None)
    sys.modules.update(saved)
    patch.undo()


def _squeeze_scalar_index(patch: pytest.MonkeyPatch) -> None:
    """Triton's interpreter before 3.9 reads a scalar's index as int() of a one-element array, which NumPy 2.4 refuses
    where a scalar reaches a loop bound through a device function (the sampler's kernels); 3.9 squeezes the array
    first. The same read here, so that the lowest triton pyproject.toml allows runs these tests too (compiled on a
    GPU, a kernel never takes this path)."""
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    patch.setattr(interpreter, "_patch_lang_tensor", patched)


@pytest.fixture(scope="module")
def tritondecode():
    """talkalike.decode.engines.triton_step under the interpreter."""
    yield from _interpreted("talkalike.decode.engines.triton_step")


@pytest.fixture(scope="module")
def tritonsampler():
    """talkalike.decode.engines.triton_sampler under the interpreter."""
    yield from _interpreted("talkalike.decode.engines.triton_sampler")


def triton_step(tritondecode, model, max_cache_len: int):
    from talkalike.decode.engines.cuda_graph import FusedStep

    step = tritondecode.TritonStep(FusedStep(model, max_cache_len), tune=False, graph=False)
    step.configs = dict.fromkeys(step.configs, BIG_BLOCKS)
    return step


def test_triton_logits_match_a_full_forward_across_cache_splits_and_after_a_longer_reply(tritondecode):
    model = build_tiny_llama("mistral", sliding_window=None)
    torch.manual_seed(1)
    sequence = torch.randint(0, 211, (72,)).tolist()
    step = triton_step(tritondecode, model, max_cache_len=192)  # 3 attention splits of 64 positions
    with torch.inference_mode():
        full = model(torch.tensor([sequence])).logits[0]
        step.prefill(sequence[:60])
        for position in range(60, 72):  # crosses from the first split into the second
            logits = step.step(torch.tensor([sequence[position]]))
            torch.testing.assert_close(logits[0], full[position], rtol=1e-4, atol=1e-4)
        assert int(step.position) == 72
        # The cache now holds 72 positions; a shorter sequence must see only its own.
        short = sequence[30:40]
        full_short = model(torch.tensor([short])).logits[0]
        step.prefill(short[:6])
        for position in range(6, 10):
            logits = step.step(torch.tensor([short[position]]))
            torch.testing.assert_close(logits[0], full_short[position], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("model_type,extra", [
    ("qwen2", {}),  # biases on q, k, v
    ("llama", {"attention_bias": True, "mlp_bias": True}),  # biases on every product
])
def test_triton_decoding_gives_the_models_own_greedy_tokens(tritondecode, model_type, extra):
    from talkalike.decode.stream import tokens

    model = build_tiny_llama(model_type, **extra)
    prompt = [2, 5, 17, 33, 9, 41, 7]
    with torch.inference_mode():
        eager = model.generate(torch.tensor([prompt]), max_new_tokens=8, min_new_tokens=8, do_sample=False,
                               pad_token_id=0)[0, len(prompt):].tolist()
    step = triton_step(tritondecode, model, max_cache_len=64)
    assert list(tokens(step, prompt, 8, lambda logits, seen: logits.argmax(dim=-1), set())) == eager


def test_triton_bf16_step_rounds_where_the_models_own_bf16_step_does(tritondecode):
    """In bf16 the kernels round at the model's own rounding points, so they land within bf16 noise of the eager
    fused step (torch ops in bf16) and pick the same tokens."""
    from talkalike.decode.engines.cuda_graph import FusedStep

    model = build_tiny_llama("mistral", dtype=torch.bfloat16, sliding_window=None)
    sequence = [3, 14, 15, 92, 65, 35, 89, 79, 32, 38, 46, 26]
    reference = FusedStep(model, 64)
    step = triton_step(tritondecode, model, max_cache_len=64)
    with torch.inference_mode():
        reference.prefill(torch.tensor([sequence[:6]]))
        step.prefill(sequence[:6])
        for position in range(6, len(sequence)):
            ours = step.step(torch.tensor([sequence[position]]))[0].float()
            theirs = reference.step(torch.tensor([[sequence[position]]]), torch.tensor([position]))[0].float()
            assert ours.dtype == theirs.dtype and step.logits.dtype == torch.bfloat16
            assert (ours - theirs).abs().max() < 0.05 * theirs.abs().max()
            assert int(ours.argmax()) == int(theirs.argmax())


def test_the_matvec_kernel_folds_rmsnorm_gating_bias_and_residual_into_one_product(tritondecode):
    torch.manual_seed(2)
    n, k, eps = 24, 40, 1e-6  # neither a multiple of the block shape: the masks are exercised
    x, residual = torch.randn(k), torch.randn(n)
    norm, weight, bias = torch.rand(k) + 0.5, torch.randn(2 * n, k), torch.randn(2 * n)
    h = norm * (x * torch.rsqrt(x.pow(2).mean() + eps))
    gate, up = (weight @ h + bias).split(n)
    out = torch.empty(n)
    tritondecode.matvec(x, weight, out, (8, 16, 4), norm=norm, eps=eps, bias=bias, gated=True)
    torch.testing.assert_close(out, torch.nn.functional.silu(gate) * up, rtol=1e-5, atol=1e-5)
    plain = torch.empty(2 * n)
    tritondecode.matvec(x, weight, plain, (4, 32, 4), residual=torch.cat([residual, residual]))
    torch.testing.assert_close(plain, weight @ x + torch.cat([residual, residual]), rtol=1e-5, atol=1e-5)


def test_slot_attention_sees_each_rows_own_positions_as_masked_sdpa_does(tritondecode):
    """Rows at 0, either side of a block boundary, mid-block and idle (max_len - 1, which sees itself alone); every
    cache position a row must not see is NaN, so a read of one would show."""
    import torch.nn.functional as F

    torch.manual_seed(3)
    rows, heads, kv_heads, max_len, dim = 6, 8, 2, 192, 16  # query groups of 4; 3 blocks of 64 positions
    positions = torch.tensor([0, 63, 64, 100, max_len - 1, 130])
    q = torch.randn(rows, heads, dim)
    keys, values = torch.randn(rows, kv_heads, max_len, dim), torch.randn(rows, kv_heads, max_len, dim)
    n = torch.arange(max_len)
    first = torch.where(positions == max_len - 1, positions, 0)
    visible = (n[None] <= positions[:, None]) & (n[None] >= first[:, None])  # [rows, max_len]
    expected = F.scaled_dot_product_attention(q.view(rows, kv_heads, heads // kv_heads, dim), keys, values,
                                              attn_mask=visible.view(rows, 1, 1, max_len), scale=0.3)
    hidden = ~visible[:, None, :, None]
    out = tritondecode.slot_attention(q, keys.masked_fill(hidden, float("nan")),
                                      values.masked_fill(hidden, float("nan")), positions, 0.3)
    assert out.shape == (rows, heads, dim) and out.dtype == q.dtype
    torch.testing.assert_close(out, expected.view(rows, heads, dim), rtol=1e-5, atol=1e-5)
    # the idle row is its one position's value, for every query head of the group
    torch.testing.assert_close(out[4].view(kv_heads, -1, dim), values[4, :, -1:].expand(-1, 4, -1))


def test_slots_with_triton_attention_give_the_sdpa_slots_logits_step_after_step(tritondecode):
    """decode/slots.py, eagerly: the Triton attention against SDPA's masked attention over every position, rows at
    different positions (one crossing a block boundary), one slot idle, the same tokens fed to both."""
    from talkalike.decode.slots import Slots

    model = build_tiny_llama("mistral", sliding_window=None)
    triton_slots = Slots(model, rows=4, max_len=128, compile=False, attention="triton")
    sdpa_slots = Slots(model, rows=4, max_len=128, compile=False, attention="sdpa")
    prompts = [[5, 9, 14, 2], list(range(3, 64)), [40, 41]]  # the second's steps write positions 61 to 65
    with torch.inference_mode():
        rows = [slots.prefill(list(range(3)), prompts) for slots in (triton_slots, sdpa_slots)]
        for _ in range(5):
            tokens = [[int(t)] for t in rows[1].hidden.argmax(-1)]
            for slots, row in zip((triton_slots, sdpa_slots), rows, strict=True):
                row.tokens = tokens
                slots.step(row)
            torch.testing.assert_close(rows[0].hidden, rows[1].hidden, rtol=1e-4, atol=1e-4)
    assert triton_slots.position[:3] == [9, 66, 7]


@pytest.mark.parametrize("temperature", [0.5, "rows"])
def test_the_fused_habit_kernel_gives_keep_mass_s_logits(tritonsampler, temperature):
    from talkalike.decode.language import MAX_SHIFT, keep_mass

    torch.manual_seed(0)
    vocab = 5000  # more than one block of columns, and of habit columns
    logits = torch.randn(3, vocab) * 4
    logits[:, 4000:] = float("-inf")  # a padded or blocked tail
    emoji = torch.randperm(3900)[:700] + 50
    laughs = torch.arange(10, 40)
    logits[1, emoji] += 9.0  # a row whose emoji the temperature would inflate past the bound
    logits[2, laughs] = float("-inf")  # a class banned outright
    temperatures = 0.5 if temperature == 0.5 else torch.tensor([[0.5], [1.0], [1.7]])
    expected, fused = logits.clone(), logits.clone()
    keep_mass(expected, [emoji, laughs], temperatures)
    tritonsampler.keep_mass_fused(fused, [emoji, laughs], temperatures, MAX_SHIFT)
    assert not torch.equal(expected, logits)  # keep_mass moved something: the comparison is not of two no-ops
    torch.testing.assert_close(fused, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("with_words", [True, False], ids=["words", "tokens"])
def test_the_fused_no_repeat_kernel_bans_what_the_rule_bans(tritonsampler, with_words):
    """The no-repeat rule's one kernel against block_repeats_rows's torch ops, over the rule's own test replies
    (tests/decode/test_character.py): any lengths, shorter than the run too, separators, word-internal runs, loops in
    other spellings; every row alone and all of them left-padded into one batch."""
    from test_character import LAUGH, SPELLINGS

    from talkalike.decode.sampling import MAX_WORD_TOKENS, WordClasses, _left_padded, block_repeats_rows

    vocab = len(LAUGH) + len(SPELLINGS)
    words = WordClasses(LAUGH + SPELLINGS, vocab, "cpu") if with_words else None
    generator = torch.Generator().manual_seed(3)
    replies = [torch.tensor([2] + [1] * (MAX_WORD_TOKENS + 2)), torch.tensor([2, 1, 1, 1]), torch.tensor([3]),
               torch.tensor([4, 3, 5, 4, 3, 5]), torch.tensor([1, 2, 2])]
    replies += [torch.randint(0, vocab, (int(torch.randint(1, 14, (1,), generator=generator)),), generator=generator)
                for _ in range(30)]
    replies += [torch.randint(7, 10, (12,), generator=generator) for _ in range(10)]  # few tokens: many repeats
    replies += [torch.randint(0, vocab, (300,), generator=generator)]  # more than one block of positions
    for separator in (torch.tensor([6 + len(LAUGH)]), torch.tensor([], dtype=torch.long)):
        for n in (2, 3, 4):
            expected = torch.zeros(len(replies), vocab + 3)
            block_repeats_rows(expected, replies, n, separator, words)
            assert torch.isinf(expected).any()  # the comparison below can fail
            width = max(len(reply) for reply in replies)
            first = torch.tensor([width - len(reply) for reply in replies])
            fused = torch.zeros(len(replies), vocab + 3)
            tritonsampler.block_repeats_fused(fused, _left_padded(replies, 0), first, n, separator, words)
            assert torch.equal(fused, expected), (n, separator)
            for row, reply in enumerate(replies):  # alone: no padding
                if len(reply) >= n:
                    alone = torch.zeros(1, vocab + 3)
                    tritonsampler.block_repeats_fused(alone, reply[None], None, n, separator, words)
                    assert torch.equal(alone[0], expected[row]), (n, row)


@pytest.mark.parametrize("start", [True, "held", "not held"])
@pytest.mark.parametrize("temperature", [0.7, "tensor"])
def test_the_fused_steer_kernel_rescales_as_the_steer_does(tritonsampler, start, temperature):
    from talkalike.decode.language import MAX_SHIFT, Steer

    torch.manual_seed(0)
    vocab = 5000  # more than one block of columns
    masks = torch.zeros(vocab, 2)
    masks[:1500, 0] = 1  # Latin-script tokens
    masks[3000:4200, 1] = 1  # the other script's
    steer = Steer(other="HEBREW", shares={"latin": 0.3, "other": 0.8, "any": 0.5}, masks=masks, start_tail=[10, 11])
    logits = torch.randn(1, vocab) * 3
    logits[0, 4500:] = float("-inf")
    reply = torch.tensor([4, 10, 11] if start != "not held" else [4, 10, 12])
    scale = None if temperature == 0.7 else [torch.tensor(0.7)]
    expected, fused = logits.clone(), logits.clone()
    steer.apply(expected, [0.3], [0.7], [reply if start != True else [4, 10, 11]], scale)
    # on a GPU the start of a device reply is a 0-dim device tensor (the CPU's reply gives a bool)
    at_start = True if start is True else torch.tensor(steer.at_start(reply))
    tritonsampler.steer_fused(fused[0], masks, 0.3, 0.7 if scale is None else scale[0], at_start, MAX_SHIFT)
    assert torch.equal(expected, logits) == (start == "not held")  # the steer moved it, unless no message starts
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("temperature", [0.7, "rows"])
def test_the_fused_penalty_and_weights_give_the_draw_s_first_stage(tritonsampler, temperature):
    """sampling.choose's repetition penalty (each seen id once, however often seen) and its first stage (the
    unnormalised softmax at each row's temperature, 0 past the vocabulary, and every block's sum) in two kernels."""
    from talkalike.decode.sampling import BLOCK

    torch.manual_seed(0)
    vocab, width = 4300, 9 * BLOCK  # padded to whole blocks past the vocabulary; tiles of 8 blocks, the last cut
    logits = torch.full((3, width), float("-inf"))
    logits[:, :vocab] = torch.randn(3, vocab) * 3
    logits[1, 100:120] = float("-inf")  # blocked tokens
    seen = torch.randint(0, vocab, (3, 700))
    seen[:, 600:] = seen[:, :100]  # ids seen twice: penalised once
    scale = 0.7 if temperature == 0.7 else torch.tensor([[0.7], [1.0], [1.6]])
    expected = logits.clone()
    picked = expected.gather(1, seen)
    expected.scatter_(1, seen, torch.where(picked > 0, picked / 1.3, picked * 1.3))
    penalised = expected.clone()
    expected.sub_(expected.amax(-1, keepdim=True)).div_(scale).clamp_(min=-80.0).exp_()
    expected[:, vocab:] = 0.0
    expected_sums = expected.view(3, -1, BLOCK).sum(-1)
    fused = logits.clone()
    tritonsampler.penalty_fused(fused, seen, 1.3)
    assert torch.equal(fused, penalised)
    sums = torch.empty(3, width // BLOCK)
    tritonsampler.weights_fused(fused, scale, vocab, sums, BLOCK)
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=0)
    torch.testing.assert_close(sums, expected_sums, rtol=1e-5, atol=0)
