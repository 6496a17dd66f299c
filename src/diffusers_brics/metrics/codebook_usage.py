"""Codebook usage of a diffusers `VQModel`: the VQ counterpart of `GridUsage` (paper section 3.4, Figure 4b).

A VQ autoencoder's latents select one codebook entry per position; an entry no image ever selects is dead
(codebook collapse). `CodebookUsage` counts the selections of a split, and `usage_summary` gives the report both
`GridUsage` levels and codebooks use: the share of entries read at least once and the spread of reads per entry.
"""

from __future__ import annotations

import math

import torch


def usage_summary(counts: torch.Tensor) -> dict[str, float]:
    """Reads per entry ``(N,)`` -> share of entries read at least once (``used``), mean / std / 10th, 50th and
    90th percentile of the reads per entry, and the perplexity ``exp(entropy)`` of the reads (``N`` when every entry
    is read equally often, 1 when one entry takes every read)."""
    if counts.ndim != 1 or counts.numel() == 0:
        raise ValueError(f"counts must be a non-empty 1-D tensor of reads per entry, got shape {tuple(counts.shape)}")
    hits = counts.double()
    p10, p50, p90 = torch.quantile(hits, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)).tolist()
    total = hits.sum()
    if total > 0:
        p = hits[hits > 0] / total
        perplexity = math.exp(float(-(p * p.log()).sum()))
    else:
        perplexity = 0.0
    return {"used": float((hits > 0).double().mean()), "mean": float(hits.mean()), "std": float(hits.std()),
            "p10": p10, "median": p50, "p90": p90, "perplexity": perplexity}


class CodebookUsage:
    """Counts how often each codebook entry of a `VQModel` is selected by the latents fed to `update`.

    Args:
        model: a diffusers `VQModel` (its ``quantize`` module holds the codebook), `ClusteredVQModel` included.
    """

    def __init__(self, model) -> None:
        quantizer = getattr(model, "quantize", None)
        if quantizer is None or not hasattr(quantizer, "embedding"):
            raise ValueError(f"model must be a diffusers VQModel with a codebook (quantize.embedding), got "
                             f"{type(model).__name__}")
        self.model = model
        self.num_entries, self.dim = quantizer.embedding.weight.shape
        self.counts = torch.zeros(self.num_entries, dtype=torch.long)

    @torch.no_grad()
    def update(self, latents: torch.Tensor) -> None:
        """Add the selections of pre-quantisation latents ``(B, D, H, W)`` (``VQModel.encode(x).latents``)."""
        if not isinstance(latents, torch.Tensor) or latents.ndim != 4 or latents.shape[1] != self.dim:
            shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise ValueError(f"latents must have shape (B, {self.dim}, H, W) (VQModel.encode(x).latents), got {shape}")
        if not latents.is_floating_point() or not bool(torch.isfinite(latents).all()):
            raise ValueError("latents must be a finite floating point tensor")
        quantizer = self.model.quantize
        training = quantizer.training
        quantizer.eval()  # a lookup only: a clustered codebook (`ClusteredVectorQuantizer`) updates itself in training
        try:
            _, _, (_, _, indices) = quantizer(latents.to(quantizer.embedding.weight.dtype))
        finally:
            quantizer.train(training)
        self.counts += torch.bincount(indices.reshape(-1).cpu().long(), minlength=self.num_entries)

    def hit_fraction(self) -> float:
        """Share of the codebook's entries selected at least once."""
        return float((self.counts > 0).float().mean())

    def summary(self) -> dict[str, float]:
        """`usage_summary` of the codebook."""
        return usage_summary(self.counts)
