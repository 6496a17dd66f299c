"""Every weight file of the metrics at once: :func:`prepare_weights` finds or prepares them, e.g. ahead of a job on a
machine that later runs offline."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Iterable

from .inception_weights import resolve_inception_weights
from .lpips_weights import resolve_lpips_weights

#: What :func:`prepare_weights` can prepare, and how each is found.
RESOLVERS: Dict[str, Callable[[], Path]] = {
    "lpips-alex": lambda: resolve_lpips_weights("alex"),
    "lpips-vgg": lambda: resolve_lpips_weights("vgg"),
    "inception": resolve_inception_weights,
}
KINDS = tuple(RESOLVERS)


def prepare_weights(kinds: Iterable[str] = KINDS) -> Dict[str, Path]:
    """Find or prepare the weight files of ``kinds`` (any of :data:`KINDS`) as the metrics would on first use, and
    return ``{kind: path}``; e.g. ahead of a job, on a machine that has network access.

    ``python -c "from diffusers_brics.metrics import prepare_weights; prepare_weights()"`` fills the cache.
    """
    kinds = tuple(kinds)
    unknown = [kind for kind in kinds if kind not in KINDS]
    if unknown:
        raise ValueError(f"kinds must be among {KINDS}, got {unknown}")
    return {kind: RESOLVERS[kind]() for kind in kinds}
