"""The EMA of the trained weights: `make_ema` builds it from the loop settings, `ema_copy` is a copy of the model
holding its weights.

`HalfLifeEMA` is StyleGAN2's EMA schedule for the autoencoder's weights (the authors' release,
``training/training_loop.py``). The decay of step ``k`` (0-based) is ``0.5 ** (B / max(min(H, rampup * k * B),
1e-8))``: the average halves its weight on old values every ``H`` training images, and during the ramp-up the
half-life is a fixed fraction of the images seen so far (so the first step copies the weights). The release sets
``H = 10,000 * B / 32`` (its ``ema_kimg = batch * 10 / 32``), a half-life of 312.5 steps whatever the batch ``B``,
and ``rampup = 0.05``.

`CadencedEMA` is ema-pytorch's ``EMA.update`` (version 0.2.3, which imagen-pytorch 1.25.2's trainer, the
release's stage 2, installed), the ``ema-pytorch`` schedule. Its decay is diffusers' warm-up formula: at the
``k``-th optimisation step, ``clamp(1 - (1 + (k - U - 1) / inv_gamma) ** -power, 0, max_decay)`` with
``U = update_after_step`` (ema-pytorch's ``get_current_decay``; diffusers' `EMAModel.get_decay` is the same
formula, which the ``warmup`` schedule runs with ``U = 0``). What differs is the cadence: the EMA is touched on steps
1, 1 + N, 1 + 2N, ... only (``N = update_every``; the release: every 10 steps), copying the weights on those up to
step ``U + 1`` and once more on the first one after it (ema-pytorch copies at its first average), averaging after
that; between touches the EMA weights do not change.

diffusers' `EMAModel` keeps the shadow weights, device moves and checkpoint state; its warm-up formula cannot
express the half-life schedule, so `HalfLifeEMA` overrides only `get_decay` (and saves its own fields), and
`CadencedEMA` only `step`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from accelerate import Accelerator
from diffusers.training_utils import EMAModel

from .accelerator_setup import plain_module
from .config import LoopConfig


class HalfLifeEMA(EMAModel):
    """`EMAModel` whose decay follows StyleGAN2's half-life schedule.

    Args:
        parameters: the parameters to average.
        halflife_images (`float`): ``H``, the half-life in training images.
        batch_size (`int`): ``B``, the images of one optimisation step (over processes and accumulation).
        rampup (`float`, *optional*): the ramp-up fraction (0.05); None: no ramp-up.
        **kwargs: passed to `EMAModel` (``model_cls``, ``model_config``).
    """

    def __init__(
        self, parameters: Iterable[torch.nn.Parameter], halflife_images: float, batch_size: int,
        rampup: float | None = 0.05, **kwargs: Any,
    ):
        if not halflife_images > 0 or batch_size < 1 or (rampup is not None and not rampup > 0):
            raise ValueError(f"need halflife_images > 0, batch_size >= 1 and rampup > 0 or None, got "
                             f"{halflife_images}, {batch_size} and {rampup}")
        super().__init__(parameters, **kwargs)
        self.halflife_images = float(halflife_images)
        self.batch_size = int(batch_size)
        self.rampup = rampup

    def get_decay(self, optimization_step: int) -> float:
        seen = (optimization_step - 1) * self.batch_size  # images trained on before this step
        halflife = self.halflife_images if self.rampup is None else min(self.halflife_images, seen * self.rampup)
        return 0.5 ** (self.batch_size / max(halflife, 1e-8))

    def state_dict(self) -> dict:
        # Recorded for the reader of a checkpoint; a resumed run follows the schedule of its own flags (as its
        # learning rate does), so `load_state_dict` restores only `EMAModel`'s fields and the step.
        return {**super().state_dict(), "halflife_images": self.halflife_images, "batch_size": self.batch_size,
                "rampup": self.rampup}


class CadencedEMA(EMAModel):
    """`EMAModel` updated as ema-pytorch's ``EMA.update`` (see the module docstring).

    Args:
        parameters: the parameters to average.
        update_every (`int`): ``N``, touch the EMA every N optimisation steps (ema-pytorch: 10).
        update_after_step (`int`): ``U``, copy the weights up to this step (ema-pytorch: 100).
        **kwargs: passed to `EMAModel` (``decay``, ``power``, ``inv_gamma``, ``model_cls``, ``model_config``).
    """

    def __init__(self, parameters: Iterable[torch.nn.Parameter], update_every: int = 10, update_after_step: int = 100,
                 **kwargs: Any):
        if update_every < 1 or update_after_step < 0:
            raise ValueError(f"need update_every >= 1 and update_after_step >= 0, got {update_every} and "
                             f"{update_after_step}")
        super().__init__(parameters, update_after_step=update_after_step, use_ema_warmup=True, **kwargs)
        self.update_every = int(update_every)

    @torch.no_grad()
    def step(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        parameters = list(parameters)
        before = self.optimization_step  # ema-pytorch's `step` before this update
        if before % self.update_every:
            self.optimization_step += 1
            return
        first_average = self.update_every * (self.update_after_step // self.update_every + 1)
        if before <= self.update_after_step or before == first_average:
            self.optimization_step += 1
            self.cur_decay_value = 0.0
            for shadow, param in zip(self.shadow_params, parameters):
                shadow.copy_(param.detach())
            return
        super().step(parameters)  # counts the step; decay = get_decay(before + 1)

    def state_dict(self) -> dict:
        # Recorded for the reader of a checkpoint; a resumed run touches the EMA on the cadence of its own flags.
        return {**super().state_dict(), "update_every": self.update_every}


def make_ema(accelerator: Accelerator, model, config: LoopConfig, batch_size: int) -> EMAModel | None:
    """EMA of the (prepared) model's weights; None without ``use_ema``. Checkpoints hold it once
    `register_checkpoint_hooks` is given it.

    ``ema_schedule="stylegan"`` (the release's): `HalfLifeEMA` with ``ema_halflife_kimg`` (default
    ``10 * batch_size / 32``) and ``ema_rampup``; ``"warmup"``: diffusers' warm-up ``1 - (1 + step) ** -ema_power``
    capped at ``ema_max_decay``; ``"ema-pytorch"``: `CadencedEMA`, that warm-up on ema-pytorch's cadence
    (``ema_update_every``, ``ema_update_after_step``). ``batch_size`` is the images of one optimisation step.
    """
    settings = config.ema
    if not settings.use_ema:
        return None
    unwrapped = plain_module(accelerator, model)
    kwargs = dict(model_cls=type(unwrapped), model_config=unwrapped.config)
    if settings.ema_schedule == "stylegan":
        halflife_kimg = settings.ema_halflife_kimg or 10 * batch_size / 32
        ema = HalfLifeEMA(unwrapped.parameters(), halflife_images=halflife_kimg * 1000, batch_size=batch_size,
                          rampup=settings.ema_rampup or None, **kwargs)
    elif settings.ema_schedule == "ema-pytorch":
        ema = CadencedEMA(unwrapped.parameters(), update_every=settings.ema_update_every,
                          update_after_step=settings.ema_update_after_step, decay=settings.ema_max_decay,
                          inv_gamma=1.0, power=settings.ema_power, **kwargs)
    else:
        ema = EMAModel(unwrapped.parameters(), decay=settings.ema_max_decay, use_ema_warmup=True, inv_gamma=1.0,
                       power=settings.ema_power, **kwargs)
    ema.to(accelerator.device)
    return ema


def ema_copy(accelerator: Accelerator, model, ema: EMAModel | None):
    """A copy of the model holding the EMA weights (the live weights without EMA), in eval mode."""
    unwrapped = plain_module(accelerator, model)
    copy = type(unwrapped).from_config(unwrapped.config).to(accelerator.device)
    copy.load_state_dict(unwrapped.state_dict())
    if ema is not None:
        ema.copy_to(copy.parameters())
    return copy.eval()
