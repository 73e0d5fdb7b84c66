"""Cross-entropy through a frozen LM head without keeping logits: the gradient is taken in the forward pass.

For a head that nothing trains (no LoRA on it, weight frozen), the loss's only gradient is the one for the hidden
states, `(softmax(logits) - onehot(target)) @ W`. `FrozenHeadLoss` computes it chunk by chunk while the logits are
at hand, overwriting them in place, and keeps just that [rows, hidden] gradient for the backward. Against
`cross_entropy(lm_head(h).float(), y)` it skips the fp32 copy's gradient, the zero-filled gradient buffer, the
separate log-softmax backward pass, and holding rows x vocabulary logits until the backward: on the embedded
model (262k vocabulary) it took a training step's head from 4.1 s to 1.7 s for 462 labelled tokens on this CPU
(BENCHMARKS.md, "CPU training"). The same maths: tests/train/test_train.py checks loss and gradient against the
plain way.
"""


def _chunk_rows(vocab_size: int) -> int:
    # ~512 MiB of fp32 logits a chunk: large enough that the two matmuls stay efficient (64-row chunks were ~2x slower)
    return max(64, 2**27 // vocab_size)


def frozen_head_loss_sum(hidden, weight, targets, chunk_rows: int | None = None, rows=None, row_ids=None):
    """Sum of cross-entropy of `hidden` [N, H] through the frozen head `weight` [V, H] against `targets` [N].

    `rows` [K, H] (trainable) replace the head's rows `row_ids`, as peft's trainable tokens do; they get a gradient.
    """
    import torch

    class FrozenHeadLoss(torch.autograd.Function):
        @staticmethod
        @torch.autocast(hidden.device.type, enabled=False)  # dtypes are explicit here, as the docstring says
        def forward(ctx, hidden, weight, targets, rows):
            step = chunk_rows or _chunk_rows(weight.shape[0])
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            grad = torch.empty_like(hidden) if hidden.requires_grad else None
            grad_rows = torch.zeros_like(rows, dtype=torch.float32) if rows is not None else None
            if rows is not None:
                index = torch.as_tensor(row_ids, device=hidden.device)
                replaced = rows.to(weight.dtype)
                correction = replaced - weight[index]  # what the replacement adds to a gradient through `weight`
            for start in range(0, hidden.shape[0], step):
                h = hidden[start : start + step].to(weight.dtype)
                y = targets[start : start + step]
                logits = (h @ weight.T).float()
                if rows is not None:
                    logits[:, index] = (h @ replaced.T).float()
                target_logits = logits.gather(1, y[:, None]).squeeze(1)
                # softmax in the logits' own memory; ~30% faster here than logsumexp followed by exp(logits - lse)
                peak = logits.amax(dim=1, keepdim=True)
                probs = logits.sub_(peak).exp_()
                sums = probs.sum(dim=1, keepdim=True)
                total += (peak + sums.log()).squeeze(1).sub(target_logits).sum()
                if grad is not None or grad_rows is not None:
                    probs.div_(sums)
                    probs[torch.arange(y.numel(), device=y.device), y] -= 1
                    low = probs.to(weight.dtype)
                if grad is not None:
                    chunk_grad = low @ weight
                    if rows is not None:
                        chunk_grad += low[:, index] @ correction
                    grad[start : start + step] = chunk_grad.to(hidden.dtype)
                if grad_rows is not None:
                    grad_rows += probs[:, index].T @ h.float()
            ctx.save_for_backward(grad, grad_rows)
            return total

        @staticmethod
        def backward(ctx, grad_output):
            grad, grad_rows = ctx.saved_tensors
            grad_hidden = grad * grad_output.to(grad.dtype) if grad is not None else None
            grad_replaced = (grad_rows * grad_output).to(rows.dtype) if grad_rows is not None else None
            return grad_hidden, None, None, grad_replaced

    assert not weight.requires_grad, "a trained head needs the plain loss, which also gives the weight's gradient"
    return FrozenHeadLoss.apply(hidden, weight, targets, rows)
