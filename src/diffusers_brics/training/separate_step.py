"""A second update of one optimizer within a training step, from gradients kept apart from its main update's.

StyleGAN2's lazy R1 as the BRICS release takes it (``training/training_loop.py``: the ``Dreg`` phase) is a
discriminator step of its own, after the main one (``Dmain``), every ``r1_interval`` batches: 17 discriminator steps
per 16 batches at interval 16. The `Trainer` applies the updates a micro-batch queues after its `training_step`, so
the R1 gradients cannot share the discriminator's ``.grad`` with the main loss's. `SeparateStep` keeps them in leaf
tensors of its own (``shadows``: the module's parameters' values, differentiated through `torch.func.functional_call`)
and is queued as an optimizer of its own, after the main update: its `step` hands the shadows' gradients to the
wrapped optimizer and steps it a second time. The Trainer's checks apply to it as to any update: gradients
accumulated over micro-batches and averaged over processes, and the whole training step dropped where any gradient
is not finite.
"""

from __future__ import annotations

import torch
from torch.func import functional_call


class SeparateStep:
    """A second `step` of ``optimizer`` on the parameters of ``module``, from the gradients of what `forward` returns.

    Args:
        module: the module whose parameters ``optimizer`` trains (all of them).
        optimizer: its optimizer; its state (Adam's moments, step count) is shared with its main update.
    """

    def __init__(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer):
        self.module, self.optimizer = module, optimizer
        self.names = [name for name, _ in module.named_parameters()]
        self.shadows = [p.detach().clone().requires_grad_(True) for p in module.parameters()]
        self.steps = 0  # the optimizer steps this object took

    def forward(self, *args, **kwargs):
        """``module(*args, **kwargs)`` with the shadows in place of its parameters (their current values): the
        gradients of what it returns go to the shadows, never to the module."""
        with torch.no_grad():
            for shadow, param in zip(self.shadows, self.module.parameters()):
                shadow.copy_(param)
        return functional_call(self.module, dict(zip(self.names, self.shadows)), args, kwargs)

    __call__ = forward

    @torch.no_grad()
    def step(self) -> None:
        """Step the wrapped optimizer on the shadows' gradients (the module's own ``.grad`` set aside)."""
        params = list(self.module.parameters())
        kept = [p.grad for p in params]
        for param, shadow in zip(params, self.shadows):
            param.grad = shadow.grad
        self.optimizer.step()
        self.steps += 1
        for param, grad in zip(params, kept):
            param.grad = grad

    def zero_grad(self, set_to_none: bool = True) -> None:
        for shadow in self.shadows:
            shadow.grad = None
