"""Text conditioning for text-to-image generation on BRICS key codes: a caption tokenizer, a text encoder and
prompt embeddings.

A small CLIP text encoder can be trained from scratch on a dataset's captions::

    tokenizer = train_caption_tokenizer(dataset["caption"])
    text_encoder = build_text_encoder(tokenizer, "small")
    embeddings = encode_prompts(text_encoder, tokenizer, ["grinning, smileys and emotion"])   # (1, T, 256)

or a pretrained one loaded from the Hub or a folder (``load_text_encoder("openai/clip-vit-base-patch32")``).
Needs ``transformers`` and ``tokenizers`` (``pip install "diffusers-brics[text]"``); ``import diffusers_brics``
does not import this module.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError

try:
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoTokenizer,
        CLIPTextConfig,
        CLIPTextModel,
        MT5EncoderModel,
        PreTrainedModel,
        PreTrainedTokenizerBase,
        PreTrainedTokenizerFast,
        T5EncoderModel,
        UMT5EncoderModel,
    )
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        'diffusers_brics.models.text_encoder needs "transformers" and "tokenizers": pip install "diffusers-brics[text]"'
    ) from error

__all__ = [
    "TEXT_ENCODER_PRESETS",
    "build_text_encoder",
    "embed_input_ids",
    "encode_prompts",
    "load_text_encoder",
    "text_embedding_dim",
    "tokenize_prompts",
    "train_caption_tokenizer",
]

# Sizes of a CLIP text encoder trained from scratch (CLIPTextConfig arguments).
TEXT_ENCODER_PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
    "small": {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 1024},
}

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
UNK_TOKEN = "<|unk|>"
SPECIAL_TOKENS = (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, UNK_TOKEN)  # ids 0-3, in this order
MAX_LENGTH_CAP = 512  # the longest prompt tokenized, whatever a tokenizer's model_max_length says

# model_type in config.json -> the class that loads the text encoder (anything else: AutoModel)
ENCODER_CLASSES: dict[str, type[PreTrainedModel]] = {
    "clip": CLIPTextModel,
    "clip_text_model": CLIPTextModel,
    "t5": T5EncoderModel,
    "mt5": MT5EncoderModel,
    "umt5": UMT5EncoderModel,
}
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model")
HUB_OPTIONS = ("cache_dir", "revision", "token", "local_files_only", "force_download")  # load_text_encoder's kwargs


def train_caption_tokenizer(
    captions: Iterable[str], vocab_size: int = 2000, model_max_length: int | None = None
) -> PreTrainedTokenizerFast:
    """A BPE tokenizer trained on ``captions``, ready for :func:`build_text_encoder`.

    Text is NFKC-normalized, lowercased and its whitespace runs made single spaces, then split at spaces (marked
    with ``▁`` so that ``decode`` restores them) and around punctuation; characters never seen in training become
    ``<|unk|>``. Every encoding is ``<|startoftext|> ... <|endoftext|>``, padded on the right with ``<|pad|>``.
    ``model_max_length`` defaults to the longest caption's token count (with those two tokens) rounded up to a
    multiple of 8. The same captions give the same tokenizer.
    """
    captions = list(captions)
    if not captions:
        raise ValueError("captions must hold at least one caption, got none")
    if not all(isinstance(caption, str) for caption in captions):
        kinds = sorted({type(caption).__name__ for caption in captions} - {"str"})
        raise ValueError(f"captions must be strings, got {', '.join(kinds)}")
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be larger than the {len(SPECIAL_TOKENS)} special tokens, got {vocab_size}")
    if model_max_length is not None and model_max_length < 2:
        raise ValueError(f"model_max_length must be at least 2 (the bos and eos tokens), got {model_max_length}")

    tokenizer = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Lowercase(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(), pre_tokenizers.Punctuation()])
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    tokenizer.train_from_iterator(captions, trainer=trainer)
    bos_id, eos_id = tokenizer.token_to_id(BOS_TOKEN), tokenizer.token_to_id(EOS_TOKEN)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A {EOS_TOKEN}",
        pair=f"{BOS_TOKEN} $A {EOS_TOKEN} $B:1 {EOS_TOKEN}:1",
        special_tokens=[(BOS_TOKEN, bos_id), (EOS_TOKEN, eos_id)],
    )
    if model_max_length is None:
        longest = max(len(encoding.ids) for encoding in tokenizer.encode_batch(captions))
        model_max_length = -(-longest // 8) * 8
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        padding_side="right",
        model_max_length=model_max_length,
    )


def _max_length(tokenizer: PreTrainedTokenizerBase) -> int:
    """The tokenizer's ``model_max_length``, capped (transformers sets a huge sentinel when a tokenizer has none)."""
    return min(int(tokenizer.model_max_length), MAX_LENGTH_CAP)


def build_text_encoder(tokenizer: PreTrainedTokenizerBase, preset: str = "small", **overrides: Any) -> CLIPTextModel:
    """A randomly initialised ``CLIPTextModel`` for ``tokenizer``: its vocabulary, ``model_max_length`` positions
    (at most 512) and pad/bos/eos ids (the pooled output is taken at the eos token), with the sizes of
    ``TEXT_ENCODER_PRESETS[preset]``. ``overrides`` (any ``CLIPTextConfig`` argument) take precedence."""
    if preset not in TEXT_ENCODER_PRESETS:
        raise ValueError(f"preset must be one of {sorted(TEXT_ENCODER_PRESETS)}, got {preset!r}")
    settings: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "max_position_embeddings": _max_length(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        **TEXT_ENCODER_PRESETS[preset],
        **overrides,
    }
    return CLIPTextModel(CLIPTextConfig(**settings))


def _join(*parts: str | None) -> str:
    """A subfolder path (posix, as on the Hub) from the non-empty ``parts``; ``""`` for none."""
    return "/".join(part.strip("/") for part in parts if part)


def _local_layout(root: Path, name_or_path: str) -> tuple[str, str]:
    """``(model subfolder, tokenizer subfolder)`` below ``root``: ``text_encoder/`` and ``tokenizer/`` in a
    pipeline layout, else both ``""`` (a model folder); a missing file raises ``FileNotFoundError``."""
    where = f"text_encoder_name_or_path {name_or_path!r}"
    if not root.is_dir():
        raise FileNotFoundError(f"{where}: {str(root)!r} is not a folder")
    if (root / "text_encoder" / "config.json").is_file():
        model_folder, tokenizer_folder = "text_encoder", "tokenizer"
    elif (root / "config.json").is_file():
        model_folder, tokenizer_folder = "", ""
    else:
        raise FileNotFoundError(
            f"{where}: {str(root)!r} holds neither text_encoder/config.json (a pipeline layout) nor config.json "
            "(a model folder)"
        )
    if not any((root / model_folder / name).is_file() for name in WEIGHT_FILES):
        raise FileNotFoundError(
            f"{where}: no model weights ({', '.join(WEIGHT_FILES)}) in {str(root / model_folder)!r}"
        )
    if not any((root / tokenizer_folder / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"{where}: no tokenizer files ({', '.join(TOKENIZER_FILES)}) in {str(root / tokenizer_folder)!r}"
        )
    return model_folder, tokenizer_folder


def _hub_layout(repo_id: str, subfolder: str, kwargs: dict[str, Any]) -> tuple[str, str]:
    """``(model subfolder, tokenizer subfolder)`` of a Hub repo: ``text_encoder`` and ``tokenizer`` when it has
    ``text_encoder/config.json`` (a pipeline layout), else both ``""`` (a model repo)."""
    options = {name: kwargs[name] for name in HUB_OPTIONS if name in kwargs}
    try:
        hf_hub_download(repo_id, "config.json", subfolder=_join(subfolder, "text_encoder"), **options)
    except EntryNotFoundError:
        return "", ""
    except (OSError, ValueError) as error:  # no such repo or revision, no access, an invalid repo id
        raise FileNotFoundError(
            f"text_encoder_name_or_path {repo_id!r} could not be read from the Hub: {error}"
        ) from error
    return "text_encoder", "tokenizer"


def load_text_encoder(
    name_or_path: str, subfolder: str | None = None, **kwargs: Any
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A pretrained text encoder (in eval mode) and its tokenizer, from a local folder or a Hub repo id.

    ``name_or_path`` (or its ``subfolder``) holds either a pipeline layout (``text_encoder/`` and ``tokenizer/``,
    as Stable Diffusion repos do) or a model with its tokenizer files. The class follows config.json's
    ``model_type``: CLIP -> ``CLIPTextModel``, T5/mT5/UMT5 -> ``T5EncoderModel``/``MT5EncoderModel``/
    ``UMT5EncoderModel``, anything else -> ``AutoModel``. ``kwargs`` (``cache_dir``, ``revision``, ``token``,
    ``local_files_only``, ...) go to ``from_pretrained`` of both. A missing folder, file or repo raises
    ``FileNotFoundError``.
    """
    subfolder = _join(subfolder)
    if os.path.isdir(name_or_path) or name_or_path.startswith((".", "/", "~")):
        name_or_path = os.path.expanduser(name_or_path)
        model_folder, tokenizer_folder = _local_layout(Path(name_or_path, subfolder), name_or_path)
    else:
        model_folder, tokenizer_folder = _hub_layout(name_or_path, subfolder, kwargs)
    model_folder, tokenizer_folder = _join(subfolder, model_folder), _join(subfolder, tokenizer_folder)
    try:
        model_type = AutoConfig.from_pretrained(name_or_path, subfolder=model_folder, **kwargs).model_type
        model_class = ENCODER_CLASSES.get(model_type, AutoModel)
        text_encoder = model_class.from_pretrained(name_or_path, subfolder=model_folder, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, subfolder=tokenizer_folder, **kwargs)
    except OSError as error:
        raise FileNotFoundError(
            f"text_encoder_name_or_path {name_or_path!r}: could not load the text encoder "
            f"({model_folder or '.'}) and its tokenizer ({tokenizer_folder or '.'}): {error}"
        ) from error
    return text_encoder.eval(), tokenizer


def tokenize_prompts(tokenizer: PreTrainedTokenizerBase, prompts: list[str]) -> torch.Tensor:
    """Token ids (B, T) of ``prompts``, truncated and padded to ``T = min(tokenizer.model_max_length, 512)``."""
    return tokenizer(
        prompts, padding="max_length", truncation=True, max_length=_max_length(tokenizer), return_tensors="pt"
    ).input_ids


def embed_input_ids(text_encoder: PreTrainedModel, input_ids: torch.Tensor) -> torch.Tensor:
    """The text encoder's last hidden state (B, T, D) for token ids (B, T); differentiable (for training it)."""
    return text_encoder(input_ids.to(text_encoder.device))[0]


def encode_prompts(
    text_encoder: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str]
) -> torch.Tensor:
    """Prompt embeddings (B, T, D) for conditioning, without gradients: :func:`tokenize_prompts` then
    :func:`embed_input_ids`."""
    with torch.no_grad():
        return embed_input_ids(text_encoder, tokenize_prompts(tokenizer, prompts))


def text_embedding_dim(text_encoder: PreTrainedModel) -> int:
    """D, the width of the text encoder's embeddings: ``config.hidden_size`` (``d_model`` for T5)."""
    config = text_encoder.config
    return int(getattr(config, "hidden_size", None) or config.d_model)
