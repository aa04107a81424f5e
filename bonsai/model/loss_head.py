"""The language-model head that can return token losses instead of logits, a chunk of positions at a time.

Full logits are the largest tensors of a step: for Phi-2 (vocab 51,200) at 2048 tokens, 420 MB per row in
fp32, kept for backward with the log-softmax and followed by the logits' gradient of the same size. Here
each chunk of `chunk_tokens` positions is projected and scored, and its gradients with respect to the
hidden states, weight and bias are taken right away (softmax minus one-hot, as Liger's fused linear
cross-entropy does); then the chunk's logits are dropped. Backward only scales those gradients. The same
three matrix products run as without chunks, so nothing is recomputed.

That shortcut is exact when the token losses are summed (every counted token gets the same gradient),
which is how Bonsai uses them; backward checks it and refuses anything else.

The head has to live inside the model, as the `lm_head` module itself (same parameters, same state-dict
keys): ZeRO-3 gathers a module's weights only while that module runs, and DDP and PEFT wrappers only see
calls that go through the model. The targets reach it through `scoring()`, because the model passes its
head nothing but hidden states. Outside `scoring()` it is an ordinary Linear (generation, export).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from bonsai.data.template import IGNORE_INDEX


class _LinearCrossEntropy(torch.autograd.Function):
    """(N, H) hidden states, (V, H) weight, (V,) bias, (N,) targets -> (N,) fp32 token losses."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_tokens):
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        losses = torch.empty(targets.shape, dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_bias else None
        for start in range(0, hidden.shape[0], chunk_tokens):
            h, t = hidden[start:start + chunk_tokens], targets[start:start + chunk_tokens]
            counted = t != IGNORE_INDEX
            t = t.clamp(min=0)
            # Softmax in the logits' own memory (max, exp, normalise in place): one logits-sized buffer.
            logits = F.linear(h, weight, bias).float()
            target_logit = logits.gather(1, t[:, None]).squeeze(1)
            top = logits.amax(dim=-1, keepdim=True)
            total = logits.sub_(top).exp_().sum(dim=-1, keepdim=True)
            losses[start:start + len(t)] = (top + total.log()).squeeze(1).sub_(target_logit).mul_(counted)
            if not (need_hidden or need_weight or need_bias):
                continue
            grad = logits.div_(total)
            grad[torch.arange(len(t), device=t.device), t] -= 1
            grad.mul_(counted[:, None])
            if need_hidden:
                grad_hidden[start:start + len(t)] = grad.to(weight.dtype) @ weight
            if need_weight and h.dtype == torch.float32:
                grad_weight.addmm_(grad.t(), h)  # in place: no weight-sized temporary
            elif need_weight:  # bf16: the product on bf16 matrix units, accumulated in fp32
                grad_weight.add_(grad.to(h.dtype).t() @ h)
            if need_bias:
                grad_bias += grad.sum(0)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias, targets)
        return losses

    @staticmethod
    def backward(ctx, grad_losses):
        grad_hidden, grad_weight, grad_bias, targets = ctx.saved_tensors
        counted = grad_losses[targets != IGNORE_INDEX]
        scale = counted[:1]
        if counted.numel() and not torch.equal(counted, scale.expand_as(counted)):
            raise RuntimeError("the chunked loss head takes only a sum of its token losses (it computes their "
                               "gradients in forward); set model.loss_chunk_tokens: 0 for another objective")
        grads = [g.mul_(scale.to(g.dtype)) if g is not None else None for g in (grad_hidden, grad_weight, grad_bias)]
        return grads[0], grads[1], grads[2], None, None


class ChunkedLossHead(nn.Linear):
    """`lm_head`, able to return (B, L-1) per-token losses: position t scored against target t+1."""

    def __init__(self, head: nn.Linear, chunk_tokens: int):
        nn.Module.__init__(self)
        self.in_features, self.out_features = head.in_features, head.out_features
        self.weight = head.weight  # the same Parameter objects: optimizer, ZeRO and checkpoints see no change
        self.bias = head.bias
        self.chunk_tokens = chunk_tokens
        self._targets: torch.Tensor | None = None

    @contextmanager
    def scoring(self, targets: torch.Tensor):
        """Within this block, forward returns token losses against `targets` (B, L-1) instead of logits."""
        self._targets = targets
        try:
            yield
        finally:
            self._targets = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self._targets is None:
            return super().forward(hidden)
        states = hidden[:, :-1].reshape(-1, hidden.shape[-1])
        losses = _LinearCrossEntropy.apply(states, self.weight, self.bias, self._targets.reshape(-1),
                                           self.chunk_tokens)
        return losses.view(self._targets.shape)


def install_loss_head(model, chunk_tokens: int) -> ChunkedLossHead:
    """Swap the model's output embedding for a ChunkedLossHead over the same parameters."""
    head = model.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        raise ValueError(f"{type(model).__name__}'s output layer is {type(head).__name__}, not a Linear; "
                         "set model.loss_chunk_tokens: 0")
    if isinstance(head, ChunkedLossHead):
        return head
    chunked = ChunkedLossHead(head, chunk_tokens)
    model.set_output_embeddings(chunked)
    return chunked


def find_loss_head(model) -> ChunkedLossHead | None:
    for module in model.modules():
        if isinstance(module, ChunkedLossHead):
            return module
    return None
