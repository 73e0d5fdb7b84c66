"""An optimizer group stepped as one flat parameter (train/flat_optim.py) updates the model's own tensors exactly as
the group of tensors would, keeps its state across a save and load, and trains through make_trainer."""

import copy

import pytest

torch = pytest.importorskip("torch")


def _params(seed: int = 0, shapes=((4, 6), (6, 4), (3,), (5, 2))):
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=generator)) for shape in shapes]


def _step(params, optimizer, seed: int, drop: bool = False):
    generator = torch.Generator().manual_seed(seed)
    loss = sum((p * torch.randn(p.shape, generator=generator).to(p.device)).sum() ** 2 for p in params)
    loss.backward()
    if drop:  # a tensor without a gradient this step
        params[2].grad = None
    optimizer.step()
    optimizer.zero_grad()


def test_a_flat_group_steps_the_tensors_as_the_group_would():
    from talkalike.train.flat_optim import flatten_groups

    plain, flat = _params(), _params()
    single = torch.nn.Parameter(torch.ones(3))  # a group of one tensor is left as it is
    groups = [{"params": plain}, {"params": [torch.nn.Parameter(torch.ones(3))], "lr": 0.5}]
    reference = torch.optim.AdamW(groups, lr=0.1, weight_decay=0.01)
    optimizer = torch.optim.AdamW([{"params": flat}, {"params": [single], "lr": 0.5}], lr=0.1, weight_decay=0.01)
    assert flatten_groups(optimizer) == 1
    whole = optimizer.param_groups[0]["params"]
    assert len(whole) == 1 and whole[0].numel() == sum(p.numel() for p in flat)
    assert optimizer.param_groups[1]["params"] == [single]
    for seed in range(4):
        _step(plain, reference, seed)
        _step(flat, optimizer, seed)
    for mine, theirs in zip(flat, plain, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)  # element-wise maths: the same bits
    assert whole[0].grad is None and all(p.grad is None for p in flat)  # released, and zeroed with the optimizer
    # the tensors are slices of the flat parameter: the optimizer's writes are theirs
    assert flat[1].data_ptr() == whole[0].data_ptr() + flat[0].numel() * flat[0].element_size()
    # A tensor without a gradient in a step is stepped with a zero one where torch would skip it (every LoRA weight
    # has a gradient every step): it moves, on the momentum it had.
    before, skipped = flat[2].detach().clone(), plain[2].detach().clone()
    _step(plain, reference, 9, drop=True)
    _step(flat, optimizer, 9, drop=True)
    assert torch.equal(plain[2], skipped) and not torch.equal(flat[2], before)
    torch.testing.assert_close(flat[0], plain[0], rtol=0, atol=0)


def test_a_flat_group_s_state_survives_a_save_and_load():
    from talkalike.train.flat_optim import flatten_groups

    params = _params()
    optimizer = torch.optim.AdamW(params, lr=0.1)
    flatten_groups(optimizer)
    _step(params, optimizer, 0)
    saved = copy.deepcopy(optimizer.state_dict())  # (load_state_dict would share the state's tensors)
    again = _params()
    for mine, theirs in zip(again, params, strict=True):
        mine.data.copy_(theirs.detach())
    resumed = torch.optim.AdamW(again, lr=0.1)
    flatten_groups(resumed)
    resumed.load_state_dict(saved)
    _step(params, optimizer, 1)
    _step(again, resumed, 1)
    for mine, theirs in zip(again, params, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)


def check_per_tensor_state_loads(optimizer_class, shapes=((4, 6), (6, 4), (3,), (5, 2)), **settings):
    """A run checkpointed before its optimizer was flat resumes with the same states: the tensors' per-element (and,
    for bitsandbytes' 8-bit AdamW, per-block) states joined in order, the steps taken and quantization maps kept;
    `optimizer_class(groups, **settings)` on tensors of `shapes` (bitsandbytes' on a GPU)."""
    from talkalike.train.flat_optim import flatten_groups

    device = "cuda" if "bitsandbytes" in optimizer_class.__module__ else "cpu"
    single = torch.nn.Parameter(torch.ones(3, device=device))

    def make(params):
        return optimizer_class([{"params": params}, {"params": [single], "lr": 0.5}], **settings)

    def params():
        return [torch.nn.Parameter(p.detach().to(device)) for p in _params(shapes=shapes)]

    plain = params()
    before = make(plain)
    for seed in range(2):
        _step([*plain, single], before, seed)
    saved = copy.deepcopy(before.state_dict())
    flat = params()
    for mine, theirs in zip(flat, plain, strict=True):
        mine.data.copy_(theirs.detach())
    resumed = make(flat)
    assert flatten_groups(resumed) == 1
    resumed.load_state_dict(saved)
    for seed in range(2, 4):
        _step(plain, before, seed)
        _step(flat, resumed, seed)
    for mine, theirs in zip(flat, plain, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)
    saved["param_groups"][0]["params"] = saved["param_groups"][0]["params"][:2]
    other = make(params())
    flatten_groups(other)
    with pytest.raises(ValueError):  # a group of another size is not silently re-cut
        other.load_state_dict(saved)


def test_a_state_saved_per_tensor_loads_into_the_flat_group():
    check_per_tensor_state_loads(torch.optim.AdamW, lr=0.1)  # bitsandbytes' 8-bit AdamW: tests/test_gpu.py


def test_flattening_after_a_step_is_refused():
    from talkalike.train.flat_optim import flatten_groups

    params = _params()
    optimizer = torch.optim.AdamW(params, lr=0.1)
    _step(params, optimizer, 0)
    with pytest.raises(ValueError, match="before its first step"):
        flatten_groups(optimizer)


def test_make_trainer_s_flat_optimizer_trains_the_adapter_as_the_plain_one(tiny_model_dir, tiny_tokenizer, tmp_path):
    from dataclasses import replace

    from talkalike.model import load_base
    from talkalike.train.recipe import PRESETS
    from talkalike.train.trainer import SPEEDUPS, make_trainer, render_rows
    from tests.train.test_train import conversation

    recipe = replace(PRESETS["default"], max_length=256, epochs=2.0, learning_rate=1e-2, early_stopping_patience=0,
                     preference_pairs=0)
    records, _ = render_rows([conversation(i) for i in range(8)], tiny_tokenizer, "chat", False, recipe.max_length)
    trained = {}
    plain = tuple(name for name in SPEEDUPS if name != "flat-optimizer")
    for name, speedups in (("plain", plain), ("flat", (*plain, "flat-optimizer"))):
        model = load_base(str(tiny_model_dir), tmp_path)
        trainer = make_trainer(model, tiny_tokenizer, records, [], recipe, tmp_path / name, speedups=speedups)
        trainer.args.save_strategy = "no"
        trainer.train()
        groups = trainer.optimizer.param_groups
        assert (len(groups[0]["params"]) == 1) == (name == "flat")
        trained[name] = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    assert trained["flat"].keys() == trained["plain"].keys() and trained["flat"]
    for name, weight in trained["flat"].items():
        torch.testing.assert_close(weight, trained["plain"][name], rtol=1e-6, atol=1e-7, msg=name)


def test_joined_states_concatenate_per_element_entries_at_any_depth_and_keep_shared_ones():
    """bitsandbytes keeps its 8-bit states in a nested dict inside each tensor's state (tests/test_gpu.py loads a
    real one): those are joined like top-level ones, and its step and quantization maps are kept once."""
    from talkalike.train.flat_optim import _join

    qmap = torch.linspace(-1, 1, 8)
    states = [{"step": 3, "nested": {"state1": torch.full((2, 2), float(i)), "absmax1": torch.tensor([float(i)]),
                                     "qmap1": qmap}} for i in range(3)]
    joined = _join(states)
    assert joined["step"] == 3 and joined["nested"]["qmap1"] is qmap
    assert joined["nested"]["state1"].tolist() == [0.0] * 4 + [1.0] * 4 + [2.0] * 4
    assert joined["nested"]["absmax1"].tolist() == [0.0, 1.0, 2.0]
