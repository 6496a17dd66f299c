"""`ClusteredVQModel`: diffusers' `VQModel` whose quantizer is CVQ-VAE's online clustered codebook
(`ClusteredVectorQuantizer`), the model stage 1 trains as ``--model_type cvqvae``.

It is a `VQModel` (``encode``, ``decode``, ``forward`` unchanged) with four more settings in its config
(``cvq_decay``, ``cvq_distance``, ``cvq_anchor``, ``cvq_contrastive_weight``) and the codebook's usage and feature
pool among its weights, so that a checkpoint resumes the clustering where it stopped. `to_vqmodel` gives the
stock `VQModel` a trained one is saved as: the same encoder, decoder and (effective) codebook, which decodes
identically and loads with ``diffusers.VQModel.from_pretrained``; the settings travel in its config as the private
``_clustered_codebook``, which diffusers ignores.
"""

from __future__ import annotations

from diffusers import VQModel
from diffusers.configuration_utils import register_to_config

from .clustered_codebook import ClusteredVectorQuantizer

#: The CVQ settings in a `ClusteredVQModel` config, and the keyword of `ClusteredVectorQuantizer` each sets.
CVQ_SETTINGS = {
    "cvq_decay": "decay",
    "cvq_distance": "distance",
    "cvq_anchor": "anchor",
    "cvq_contrastive_weight": "contrastive_weight",
}
TRAINING_STATE = ("quantize.usage", "quantize.pool", "quantize.pool_filled")


class ClusteredVQModel(VQModel):
    """A `VQModel` with an online clustered codebook; the arguments of `VQModel` and of the codebook (``cvq_*``,
    see `ClusteredVectorQuantizer`: decay of the usage average, distance, anchor, contrastive weight)."""

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",),
        up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",),
        block_out_channels: tuple[int, ...] = (64,),
        layers_per_block: int = 1,
        act_fn: str = "silu",
        latent_channels: int = 3,
        sample_size: int = 32,
        num_vq_embeddings: int = 256,
        norm_num_groups: int = 32,
        vq_embed_dim: int | None = None,
        scaling_factor: float = 0.18215,
        norm_type: str = "group",
        mid_block_add_attention: bool = True,
        lookup_from_codebook: bool = False,
        force_upcast: bool = False,
        cvq_decay: float = 0.99,
        cvq_distance: str = "cosine",
        cvq_anchor: str = "probability",
        cvq_contrastive_weight: float = 0.0,
    ):
        super().__init__(
            in_channels=in_channels, out_channels=out_channels, down_block_types=down_block_types,
            up_block_types=up_block_types, block_out_channels=block_out_channels, layers_per_block=layers_per_block,
            act_fn=act_fn, latent_channels=latent_channels, sample_size=sample_size,
            num_vq_embeddings=num_vq_embeddings, norm_num_groups=norm_num_groups, vq_embed_dim=vq_embed_dim,
            scaling_factor=scaling_factor, norm_type=norm_type, mid_block_add_attention=mid_block_add_attention,
            lookup_from_codebook=lookup_from_codebook, force_upcast=force_upcast,
        )  # fmt: skip
        stock = self.quantize
        self.quantize = ClusteredVectorQuantizer(
            stock.n_e,
            stock.vq_embed_dim,
            stock.beta,
            decay=cvq_decay,
            distance=cvq_distance,
            anchor=cvq_anchor,
            contrastive_weight=cvq_contrastive_weight,
            legacy=stock.legacy,
            sane_index_shape=stock.sane_index_shape,
        )
        self.quantize.embedding.weight.data.copy_(stock.embedding.weight.data)

    def to_vqmodel(self) -> VQModel:
        """The stock `VQModel` of the same weights, in eval mode: the codebook as the lookup uses it (unit rows for
        cosine), without the training state; its decode equals this model's in eval mode."""
        config = {k: v for k, v in self.config.items() if k not in CVQ_SETTINGS and not k.startswith("_")}
        model = VQModel.from_config(config)
        state = {k: v for k, v in self.state_dict().items() if k not in TRAINING_STATE}
        state["quantize.embedding.weight"] = self.quantize.effective_codebook().detach().clone()
        model.load_state_dict(state)
        model.register_to_config(_clustered_codebook={k: self.config[k] for k in CVQ_SETTINGS})
        model.to(self.device)
        return (model if model.dtype == self.dtype else model.to(self.dtype)).eval()

    @classmethod
    def from_vqmodel_config(cls, config: dict, **settings) -> ClusteredVQModel:
        """An untrained model of a `VQModel` (or `ClusteredVQModel`) config dict, ``settings`` (``cvq_*``)
        overriding those it holds (a saved stock config keeps them in ``_clustered_codebook``)."""
        unknown = set(settings) - set(CVQ_SETTINGS)
        if unknown:
            raise ValueError(f"settings must be among {sorted(CVQ_SETTINGS)}, got {sorted(unknown)}")
        saved = config.get("_clustered_codebook") or {}
        return cls.from_config(
            {k: v for k, v in config.items() if k != "_clustered_codebook"},
            **{**{k: v for k, v in saved.items() if k in CVQ_SETTINGS}, **settings},
        )
