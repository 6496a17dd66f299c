"""Data-parallel processes that agree: per-process, per-micro-batch seeds (`micro_batch_seed`), per-example
generators that do not depend on how a step's batch is split (`example_generators`), gradients averaged
(`average_gradients`) and weights broadcast (`broadcast_parameters`) for modules kept out of DDP, and weights checked
identical across processes (`weights_digest`, `check_in_sync`)."""

from __future__ import annotations

import hashlib

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import broadcast, gather_object

from .accelerator_setup import plain_module

logger = get_logger(__name__)


def micro_batch_seed(seed: int, accumulation_steps: int, step: int, micro_step: int, process_index: int) -> int:
    """The seed of one micro-batch's random draws (flips, noise, timesteps): a function of the run's ``seed``, the
    optimisation step, the micro-batch within it (``0 .. accumulation_steps - 1``) and the process, so a resumed
    run draws what the uninterrupted one would, and no two micro-batches share their draws."""
    micro_batch = step * accumulation_steps + micro_step
    return seed * 1_000_003 + micro_batch * 1009 + process_index


def example_generators(seed: int, step: int, positions: range) -> list[torch.Generator]:
    """One generator per example of a micro-batch, seeded from the run's ``seed``, the optimisation ``step`` and the
    example's position in the step's whole batch, over all processes and micro-batches (`Trainer.example_positions`):
    what is drawn from them for an example does not depend on how many processes and micro-batches share the step,
    so that P processes of batch B draw what one process of batch P * B draws."""
    generators = []
    for position in positions:
        key = hashlib.blake2b(f"{seed}/{step}/{position}".encode(), digest_size=8).digest()
        generators.append(torch.Generator().manual_seed(int.from_bytes(key, "little") >> 1))
    return generators


def average_gradients(accelerator: Accelerator, parameters) -> None:
    """Mean of the gradients over all processes (one all-reduce of the flattened gradients), for modules kept out
    of DDP."""
    if accelerator.num_processes == 1:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    flat = accelerator.reduce(torch.cat([g.flatten() for g in grads]), reduction="mean")
    for grad, chunk in zip(grads, flat.split([g.numel() for g in grads])):
        grad.copy_(chunk.view_as(grad))


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's parameters (as float32), in registration order."""
    digest = hashlib.sha256()
    for parameter in module.parameters():
        digest.update(parameter.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def check_in_sync(accelerator, model) -> None:
    """Fail loudly if the processes' weights diverged (they must be identical after data-parallel training): every
    process computes the `weights_digest` of its replica, all digests are gathered, and each process logs the
    common digest (so every node's log shows it) or raises a RuntimeError naming the processes that differ."""
    module = plain_module(accelerator, model)
    digests = gather_object([weights_digest(module)])
    name = type(module).__name__
    if len(set(digests)) != 1:
        listed = ", ".join(f"process {i} sha256 {digest[:16]}" for i, digest in enumerate(digests))
        raise RuntimeError(
            f"{name}: weights differ across processes ({listed}): the replicas diverged; check that "
            "every process runs the same code, settings and data"
        )
    logger.info(
        f"{name}: weights identical on {len(digests)} process(es): sha256 {digests[0][:16]}", main_process_only=False
    )


def broadcast_parameters(module: torch.nn.Module) -> None:
    """Give every process rank 0's weights of a module kept out of DDP."""
    for parameter in module.parameters():
        parameter.data.copy_(broadcast(parameter.data, from_process=0))
