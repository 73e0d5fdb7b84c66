"""An optimizer group's tensors as slices of one flat parameter, so each step is one launch per group, not one per
tensor.

A 7B QLoRA run trains 451 LoRA tensors. bitsandbytes' 8-bit AdamW (the original recipe's) steps them one at a time
from Python: on an H100 its kernels took 3.6 ms of a step but held the GPU for 34 ms while the host launched them
(BENCHMARKS.md, "GPU training"). `flatten_groups` gives each group one fp32 parameter whose storage the group's
tensors become slices of; before each step their gradients are gathered into its gradient (a few copy kernels), and
released after. The update is element-wise, so for AdamW it is the same maths; for bitsandbytes' block-wise 8-bit
states it is the same wherever every tensor's size is a multiple of the 256-element block (LoRA's r x width and
width x r at r = 32 always are), since then no block straddles two tensors.

One difference: a tensor with no gradient in a step is stepped with a zero gradient, where torch's optimizers skip
it (every LoRA weight has a gradient every step, so training is the same).

    optimizer = Trainer.create_optimizer(...)   # not stepped yet
    flatten_groups(optimizer)                   # each group's tensors now live in one flat parameter
"""


def flatten_groups(optimizer) -> int:
    """Give each param group of `optimizer` (before its first step) of two or more tensors of one dtype and device
    one flat parameter in their place; returns how many groups were flattened. The tensors stay the model's
    parameters (autograd still fills their own `.grad`); their storage becomes slices of the flat one."""
    import torch

    parts = {}
    for group in optimizer.param_groups:
        params = group["params"]
        if len(params) < 2 or len({(p.dtype, p.device) for p in params}) != 1:
            continue
        if any(optimizer.state.get(p) for p in params):
            raise ValueError("flatten an optimizer's groups before its first step")
        flat = torch.empty(sum(p.numel() for p in params), dtype=params[0].dtype, device=params[0].device)
        offset = 0
        for param in params:
            size = param.numel()
            piece = flat[offset : offset + size]
            piece.copy_(param.detach().reshape(-1))
            param.data = piece.view_as(param)
            offset += size
        whole = torch.nn.Parameter(flat)
        group["params"] = [whole]
        parts[whole] = params
    if not parts:
        return 0

    def gather(optimizer, args, kwargs):
        for whole, params in parts.items():
            grads = [p.grad.reshape(-1) if p.grad is not None else p.new_zeros(p.numel()) for p in params]
            whole.grad = torch.cat(grads)

    def release(optimizer, args, kwargs):
        for whole in parts:
            whole.grad = None

    own_zero_grad = optimizer.zero_grad

    def zero_grad(set_to_none: bool = True):
        """The optimizer's own, and its groups' tensors' gradients too (Trainer zeroes the model's itself)."""
        own_zero_grad(set_to_none)
        for params in parts.values():
            for param in params:
                if set_to_none:
                    param.grad = None
                elif param.grad is not None:
                    param.grad.zero_()

    own_load = optimizer.load_state_dict

    def load_state_dict(state_dict, *args, **kwargs):
        """The optimizer's own, also from a state saved per tensor (a run checkpointed before its groups were
        flat): each flattened group's tensors' states joined in their order."""
        sizes = [len(parts[group["params"][0]]) if group["params"] and group["params"][0] in parts else 0
                 for group in optimizer.param_groups]
        return own_load(_joined(state_dict, optimizer.param_groups, sizes), *args, **kwargs)

    optimizer.register_step_pre_hook(gather)
    optimizer.register_step_post_hook(release)
    optimizer.zero_grad = zero_grad
    optimizer.load_state_dict = load_state_dict
    return len(parts)


# State entries shared by a group's tensors rather than one per element or block: the step count, bitsandbytes'
# 8-bit quantization maps and its update-norm scratch.
_SHARED_STATE = ("step", "qmap1", "qmap2", "unorm_vec")


def _join(states: list[dict]) -> dict:
    """One state from the states of consecutive tensors: per-element and per-block entries concatenated, shared ones
    kept, nested entries (bitsandbytes keeps its 8-bit states in one) joined alike."""
    import torch

    return {key: _join([s[key] for s in states]) if isinstance(value, dict)
            else value if key in _SHARED_STATE
            # (bitsandbytes pages big tensors' states into host-mapped memory, small ones' stay on the GPU; loading
            # moves the joined state to its parameter's device)
            else torch.cat([s[key].reshape(-1).to(value.device) for s in states]) for key, value in states[0].items()}


def _joined(state_dict: dict, groups: list[dict], sizes: list[int]) -> dict:
    """`state_dict` as the flattened optimizer's own: where a saved group holds as many tensors as a flat group
    stands for (`sizes`: 0 for a group left as it was), their per-element (and per-block) states concatenated in
    order; else unchanged."""
    saved = state_dict["param_groups"]
    if len(saved) != len(groups) or all(len(old["params"]) == len(new["params"])
                                        for old, new in zip(saved, groups, strict=True)):
        return state_dict
    state, new_groups, index = {}, [], 0
    for old, size in zip(saved, sizes, strict=True):
        ids = old["params"]
        if size > 1 and len(ids) == size:
            states = [state_dict["state"][i] for i in ids if i in state_dict["state"]]
            if states:
                if len(states) != size:
                    raise ValueError("a flattened group's saved state lacks some of its tensors")
                state[index] = _join(states)
            new_groups.append({**old, "params": [index]})
            index += 1
            continue
        for i in ids:
            if i in state_dict["state"]:
                state[index] = state_dict["state"][i]
            index += 1
        new_groups.append({**old, "params": list(range(index - len(ids), index))})
    return {"state": state, "param_groups": new_groups}
