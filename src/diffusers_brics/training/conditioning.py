"""What stage 2 conditions its UNet on: class labels or captions, with conditioning dropout for classifier-free
guidance.

*Conditioning dropout*: with probability ``conditioning_dropout_prob`` a training example's condition is replaced
by the null condition (the null class, an extra class id after the real ones; or the empty caption), so that one
UNet learns the conditional and the unconditional model that guidance combines at sampling.

Captions are kept once per distinct caption (`PromptTable`): their token ids, and with a frozen text encoder its
hidden states, computed once (cached in ``OUTPUT_DIR/prompt_embeds.safetensors``) instead of per step. With a
trained text encoder (``--train_text_encoder``) the UNet and the encoder are trained as one module,
`TextConditionedUNet`, so that the `Trainer` prepares, checkpoints, averages (EMA) and compiles both together.
"""

from __future__ import annotations

import hashlib
import json
import os

import torch
from diffusers import ConfigMixin, ModelMixin, UNet2DConditionModel
from diffusers.configuration_utils import register_to_config
from safetensors.torch import load_file, save_file

from ..models.text_encoder import ENCODER_CLASSES, embed_input_ids, tokenize_prompts


class TextConditionedUNet(ModelMixin, ConfigMixin):
    """A `UNet2DConditionModel` and the text encoder whose hidden states it cross-attends to, trained together.

    ``forward(sample, timestep, input_ids)`` encodes the token ids ``(B, T)`` and runs the UNet on
    ``(B, C, H, W)``; the pipeline saved at the end holds the two as its ``unet`` and ``text_encoder``.
    """

    @register_to_config
    def __init__(self, unet_config: dict, text_encoder_config: dict):
        super().__init__()
        import transformers

        self.unet = UNet2DConditionModel.from_config(unet_config)
        settings = dict(text_encoder_config)
        config = transformers.AutoConfig.for_model(settings.pop("model_type"), **settings)
        encoder_class = ENCODER_CLASSES.get(config.model_type)
        self.text_encoder = encoder_class(config) if encoder_class else transformers.AutoModel.from_config(config)

    @classmethod
    def wrap(cls, unet: UNet2DConditionModel, text_encoder: torch.nn.Module) -> TextConditionedUNet:
        """The module holding ``unet`` and ``text_encoder`` with their current weights."""
        # by keyword: diffusers' config registration records positional arguments as defaults, which it drops
        model = cls(unet_config=dict(unet.config), text_encoder_config=text_encoder.config.to_dict())
        model.unet.load_state_dict(unet.state_dict())
        model.text_encoder.load_state_dict(text_encoder.state_dict())
        return model

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, input_ids: torch.Tensor):
        return self.unet(sample, timestep, encoder_hidden_states=embed_input_ids(self.text_encoder, input_ids))


class PromptTable:
    """The distinct captions of a training set, and what the UNet is conditioned on for each.

    ``input_ids`` ``(U + 1, T)``: the token ids of the ``U`` captions, then of the empty caption (the null
    condition). ``embeds`` ``(U + 1, T, D)``: the frozen text encoder's hidden states of the same, or None when the
    encoder is trained.
    """

    def __init__(self, captions: list[str], tokenizer, text_encoder=None, cache: str | None = None):
        self.captions = list(captions)
        self.input_ids = tokenize_prompts(tokenizer, self.captions + [""])
        self.embeds = None if text_encoder is None else self._embeddings(text_encoder, cache)

    @property
    def null_index(self) -> int:
        """The row of the empty caption."""
        return len(self.captions)

    def _embeddings(self, text_encoder, cache: str | None, batch_size: int = 256) -> torch.Tensor:
        """The frozen encoder's hidden states of every row, read from ``cache`` when it holds those of the same
        encoder weights and token ids, else computed (and written there)."""
        from .distributed import weights_digest

        key = hashlib.sha256(json.dumps([weights_digest(text_encoder), self.input_ids.tolist()]).encode()).hexdigest()
        if cache is not None and os.path.isfile(cache):
            stored = load_file(cache)
            if stored.get("key") is not None and bytes(stored["key"].tolist()).decode() == key:
                return stored["embeds"]
        with torch.no_grad():
            embeds = torch.cat([embed_input_ids(text_encoder, ids).float().cpu()
                                for ids in self.input_ids.split(batch_size)])
        if cache is not None:
            os.makedirs(os.path.dirname(os.path.abspath(cache)), exist_ok=True)
            save_file({"embeds": embeds.contiguous(), "key": torch.tensor(list(key.encode()), dtype=torch.uint8)},
                      cache + ".partial")
            os.replace(cache + ".partial", cache)
        return embeds

    def condition(self, caption_ids: torch.Tensor, drop: torch.Tensor | None, device) -> dict[str, torch.Tensor]:
        """The UNet's keyword inputs for a batch of caption rows ``(B,)``, the null caption where ``drop``:
        ``encoder_hidden_states`` (frozen encoder) or ``input_ids`` (`TextConditionedUNet`)."""
        rows = caption_ids.long().cpu()
        if drop is not None:
            rows = torch.where(drop.cpu(), torch.full_like(rows, self.null_index), rows)
        if self.embeds is not None:
            return {"encoder_hidden_states": self.embeds[rows].to(device)}
        return {"input_ids": self.input_ids[rows].to(device)}


def drop_conditions(batch_size: int, probability: float, generator: torch.Generator) -> torch.Tensor | None:
    """``(B,)`` bool, True where an example's condition is replaced by the null condition (None for probability 0,
    which draws nothing, so that runs without dropout draw what they always did)."""
    if not probability:
        return None
    return torch.rand(batch_size, generator=generator) < probability
