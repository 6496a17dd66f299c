"""The online clustered codebook of CVQ-VAE (Zheng and Vedaldi, ICCV 2023, "Online Clustered Codebook"): a
`VectorQuantizer` for diffusers' `VQModel` that revives the entries the encoder no longer selects.

While it trains, each forward keeps a running average of every entry's share of the selections,
``N_k <- decay * N_k + (1 - decay) * n_k / (B h w)``, and moves each entry towards an anchor ``z_k`` drawn from the
batch's features, ``e_k <- (1 - alpha_k) e_k + alpha_k z_k`` with ``alpha_k = exp(-N_k K 10 / (1 - decay) - 1e-3)``:
an entry in use (``N_k`` about ``1 / K``) barely moves, a dead one (``N_k -> 0``) jumps to its anchor. Anchors
(``anchor``): the feature closest to the entry, a feature of a pool of recent features, or a feature drawn with
probability ``softmax`` of its similarity to the entry. An optional contrastive term (``contrastive_weight``) pulls
each entry towards its closest features and away from the farthest half.

``distance="cosine"`` compares directions: the entries in use are the unit-length rows of the weight (the lookup's
and the output's), so that a stock `VectorQuantizer` holding them (`effective_codebook`) selects the same entries
by its Euclidean distance. Usage and feature pool are buffers; nothing changes in eval mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.vae import VectorQuantizer

DISTANCES = ("cosine", "euclidean")
ANCHORS = ("closest", "random", "probability")
SHARPNESS = 10.0  # the reference's factor in alpha_k: an entry used at a tenth of the uniform rate still moves little
RATE_EPS = 1e-3  # alpha_k < 1 even for an entry never used
TEMPERATURE = 0.07  # the contrastive term's


def updated_usage(
    usage: torch.Tensor,
    indices: torch.Tensor,
    decay: float,
    total: int | None = None,
    counts: torch.Tensor | None = None,
) -> torch.Tensor:
    """``decay * usage + (1 - decay) * n / total``: the running share of selections per entry, ``(K,)``.

    ``indices``: the selected entries of a batch (any shape; ``total`` defaults to their number); ``counts``
    (``(K,)``) replaces their histogram where it was summed over processes."""
    if counts is None:
        counts = torch.bincount(indices.reshape(-1), minlength=usage.numel())
    total = indices.numel() if total is None else total
    return decay * usage + (1 - decay) * counts.to(usage.dtype) / total


def revival_rate(usage: torch.Tensor, decay: float) -> torch.Tensor:
    """``alpha_k = exp(-N_k K 10 / (1 - decay) - 1e-3)`` of usage ``N`` ``(K,)``: how far each entry moves to its
    anchor."""
    return torch.exp(-usage * usage.numel() * SHARPNESS / (1 - decay) - RATE_EPS)


def similarity(features: torch.Tensor, codebook: torch.Tensor, distance: str) -> torch.Tensor:
    """``(M, K)`` closeness of features ``(M, D)`` to entries ``(K, D)``, larger is closer: cosine similarity, or the
    negative squared Euclidean distance."""
    if distance == "cosine":
        return F.normalize(features, dim=1) @ F.normalize(codebook, dim=1).t()
    return -(features.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1) - 2 * features @ codebook.t())


def contrastive_loss(scores: torch.Tensor, num_entries: int) -> torch.Tensor:
    """InfoNCE per entry over the similarities ``(M, K)`` of a batch: the mean of its ``max(1, M // K)`` closest
    features is the positive, the farthest half of the features the negatives."""
    positives = scores.topk(max(1, scores.shape[0] // num_entries), dim=0).values.mean(0, keepdim=True)
    negatives = -(-scores).topk(max(1, scores.shape[0] // 2), dim=0).values
    logits = torch.cat([positives, negatives]).t() / TEMPERATURE
    return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device))


class ClusteredVectorQuantizer(VectorQuantizer):
    """diffusers' `VectorQuantizer` with CVQ-VAE's online clustered codebook; the same forward contract.

    Args:
        n_e, vq_embed_dim, beta, legacy, sane_index_shape: as `VectorQuantizer` (``remap`` is not supported).
        decay: of the usage's running average, in ``[0, 1)`` (the reference: 0.99).
        distance: ``"cosine"`` (the reference's) or ``"euclidean"``.
        anchor: ``"closest"``, ``"random"`` (from a pool of ``n_e`` recent features) or ``"probability"``.
        contrastive_weight: weight of the contrastive term added to the loss in training (0: off).
    """

    def __init__(
        self,
        n_e: int,
        vq_embed_dim: int,
        beta: float = 0.25,
        decay: float = 0.99,
        distance: str = "cosine",
        anchor: str = "probability",
        contrastive_weight: float = 0.0,
        legacy: bool = True,
        sane_index_shape: bool = False,
    ) -> None:
        super().__init__(n_e, vq_embed_dim, beta, remap=None, sane_index_shape=sane_index_shape, legacy=legacy)
        if not 0 <= decay < 1:
            raise ValueError(f"decay must be in [0, 1) (the reference: 0.99), got {decay}")
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
        if anchor not in ANCHORS:
            raise ValueError(f"anchor must be one of {ANCHORS}, got {anchor!r}")
        if not contrastive_weight >= 0:
            raise ValueError(f"contrastive_weight must be >= 0 (0: off), got {contrastive_weight}")
        self.decay, self.distance, self.anchor, self.contrastive_weight = decay, distance, anchor, contrastive_weight
        self.register_buffer("usage", torch.zeros(n_e))
        self.register_buffer("pool", torch.empty(n_e, vq_embed_dim).uniform_(-1.0 / n_e, 1.0 / n_e))
        self.register_buffer("pool_filled", torch.zeros((), dtype=torch.long))

    def effective_codebook(self) -> torch.Tensor:
        """The entries ``(K, D)`` the lookup compares and outputs: unit rows for cosine, else the weight."""
        weight = self.embedding.weight
        return F.normalize(weight, dim=1) if self.distance == "cosine" else weight

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        """``z`` ``(B, D, H, W)`` -> ``(z_q, loss, (None, None, indices))`` as `VectorQuantizer`; in training mode
        also updates the usage and the codebook, after the lookup."""
        z = z.permute(0, 2, 3, 1).contiguous()
        flat = z.view(-1, self.vq_embed_dim)
        codebook = self.effective_codebook()
        indices = torch.argmin(torch.cdist(flat, codebook), dim=1)
        z_q = F.embedding(indices, codebook).view(z.shape)
        if self.legacy:
            loss = torch.mean((z_q.detach() - z) ** 2) + self.beta * torch.mean((z_q - z.detach()) ** 2)
        else:
            loss = self.beta * torch.mean((z_q.detach() - z) ** 2) + torch.mean((z_q - z.detach()) ** 2)
        if self.training:
            if self.contrastive_weight > 0:
                scores = similarity(flat.detach(), self.embedding.weight, self.distance)
                loss = loss + self.contrastive_weight * contrastive_loss(scores, self.n_e)
            self.revive(flat.detach(), indices)
        z_q = (z + (z_q - z).detach()).permute(0, 3, 1, 2).contiguous()
        if self.sane_index_shape:
            indices = indices.reshape(z_q.shape[0], z_q.shape[2], z_q.shape[3])
        return z_q, loss, (None, None, indices)

    def get_codebook_entry(self, indices: torch.LongTensor, shape: tuple[int, ...]) -> torch.Tensor:
        """Entries of ``indices`` as ``shape`` ``(B, H, W, D)`` -> ``(B, D, H, W)``, from `effective_codebook`."""
        z_q = F.embedding(indices.reshape(-1), self.effective_codebook())
        if shape is not None:
            z_q = z_q.view(shape).permute(0, 3, 1, 2).contiguous()
        return z_q

    @torch.no_grad()
    def revive(self, features: torch.Tensor, indices: torch.Tensor) -> None:
        """One online-clustering update from a batch's features ``(M, D)`` and their selected entries ``(M,)``: the
        usage average, then each entry towards its anchor by `revival_rate`. Across processes the counts are summed
        and the first process's anchors are used, so that every copy makes the same update."""
        counts = torch.bincount(indices.reshape(-1), minlength=self.n_e).to(self.usage.dtype)
        total = torch.tensor(float(indices.numel()), device=counts.device)
        distributed = (
            torch.distributed.is_available()
            and torch.distributed.is_initialized()
            and (torch.distributed.get_world_size() > 1)
        )
        if distributed:
            torch.distributed.all_reduce(counts)
            torch.distributed.all_reduce(total)
        self.usage.copy_(updated_usage(self.usage, indices, self.decay, total=total, counts=counts))
        anchors = self.anchors(features.to(self.embedding.weight.dtype))
        if distributed:
            torch.distributed.broadcast(anchors, src=0)
        alpha = revival_rate(self.usage, self.decay).to(anchors.dtype).unsqueeze(1)
        # A new tensor, not an in-place write: the lookup's graph keeps the entries it used for the backward pass.
        self.embedding.weight.data = self.embedding.weight.data * (1 - alpha) + anchors * alpha

    def anchors(self, features: torch.Tensor) -> torch.Tensor:
        """One feature per entry, ``(K, D)``, from the features ``(M, D)`` by ``self.anchor``."""
        if self.anchor == "random":
            return self._pooled(features)
        scores = similarity(features, self.embedding.weight.detach(), self.distance)
        if self.anchor == "closest":
            return features[scores.argmax(dim=0)]
        return features[torch.multinomial(F.softmax(scores.t().float(), dim=1), num_samples=1).view(-1)]

    def _pooled(self, features: torch.Tensor) -> torch.Tensor:
        """Adds the features to the pool of ``K`` recent ones and returns the pool: a batch of at least ``K``
        features refills it with ``K`` drawn at random; a smaller one fills the free places first, then random
        ones."""
        size, filled, count = self.n_e, int(self.pool_filled), features.shape[0]
        if count >= size:
            self.pool.copy_(features[torch.randint(0, count, (size,), device=features.device)])
            self.pool_filled.fill_(size)
        elif filled < size:
            taken = min(count, size - filled)
            self.pool[filled : filled + taken] = features[:taken]
            self.pool_filled.fill_(filled + taken)
        else:
            self.pool[torch.randperm(size, device=features.device)[:count]] = features
        return self.pool.clone()
