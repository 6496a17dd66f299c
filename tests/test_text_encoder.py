"""Text conditioning: the caption tokenizer, the CLIP text encoder built for it, loading pretrained encoders from
pipeline and model folders, and the emoji captions."""

import pytest
import torch
from hub_server import serve_repos
from huggingface_hub import constants, hf_api
from transformers import AutoTokenizer, CLIPTextModel, T5Config, T5EncoderModel

from diffusers_brics.data import load_emoji_dataset
from diffusers_brics.data.emoji import COLUMNS, emoji_caption
from diffusers_brics.models.text_encoder import (
    TEXT_ENCODER_PRESETS,
    build_text_encoder,
    embed_input_ids,
    encode_prompts,
    load_text_encoder,
    text_embedding_dim,
    tokenize_prompts,
    train_caption_tokenizer,
)

EMOJI_CAPTIONS = [
    "grinning, smileys and emotion",
    "wave, medium skin tone, people and body",
    "wave, dark skin tone, people and body",
    "+1, light skin tone, people and body",
    "flag fr, flags",
    "rainbow flag, flags",
    "keycap ten, symbols",
    "red apple, food and drink",
    "green apple, food and drink",
    "soccer, activities",
]
EMOJI_PROMPTS = ["grinning, smileys and emotion", "red apple, food and drink", "wave, dark skin tone, people and body"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_caption_tokenizer(EMOJI_CAPTIONS, vocab_size=120)


@pytest.fixture(scope="module")
def text_encoder(tokenizer):
    torch.manual_seed(0)
    return build_text_encoder(tokenizer, "tiny").eval()


def test_tokenizer_training_is_deterministic_and_round_trips(tokenizer, tmp_path):
    again = train_caption_tokenizer(iter(EMOJI_CAPTIONS), vocab_size=120)  # any iterable
    assert again.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()
    assert again.get_vocab() == tokenizer.get_vocab()

    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for name in ("bos_token", "eos_token", "pad_token", "unk_token", "model_max_length", "padding_side"):
        assert getattr(loaded, name) == getattr(tokenizer, name), name
    assert torch.equal(tokenize_prompts(loaded, EMOJI_PROMPTS + ["Ünseen ✨ WORDS"]),
                       tokenize_prompts(tokenizer, EMOJI_PROMPTS + ["Ünseen ✨ WORDS"]))


def test_tokenizer_normalizes_and_decodes(tokenizer):
    ids = tokenizer(" Red \t APPLE,  food and drink\n").input_ids
    assert ids == tokenizer("red apple, food and drink").input_ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == "red apple, food and drink"
    assert tokenizer.unk_token_id in tokenizer("✨").input_ids


def test_model_max_length_is_the_longest_caption_rounded_up_to_8(tokenizer):
    longest = max(len(tokenizer(caption).input_ids) for caption in EMOJI_CAPTIONS)
    assert tokenizer.model_max_length % 8 == 0
    assert longest <= tokenizer.model_max_length < longest + 8
    assert train_caption_tokenizer(EMOJI_CAPTIONS, vocab_size=120, model_max_length=40).model_max_length == 40


def test_special_tokens_and_max_length_padding(tokenizer):
    ids = tokenize_prompts(tokenizer, ["soccer, activities", "a " * 100 + "soccer"])
    assert ids.shape == (2, tokenizer.model_max_length)
    specials = {tokenizer.convert_ids_to_tokens(i) for i in (tokenizer.bos_token_id, tokenizer.eos_token_id,
                                                              tokenizer.pad_token_id, tokenizer.unk_token_id)}
    assert specials == {"<|startoftext|>", "<|endoftext|>", "<|pad|>", "<|unk|>"}
    assert tokenizer.padding_side == "right"
    assert (ids[:, 0] == tokenizer.bos_token_id).all()
    short = ids[0].tolist()
    eos = short.index(tokenizer.eos_token_id)
    assert short[1:eos] == tokenizer("soccer, activities", add_special_tokens=False).input_ids
    assert set(short[eos + 1:]) == {tokenizer.pad_token_id}
    assert ids[1, -1] == tokenizer.eos_token_id  # truncated, and still closed by eos
    assert tokenizer.pad_token_id not in ids[1].tolist()


def test_tokenizer_rejects_bad_arguments():
    with pytest.raises(ValueError, match="captions"):
        train_caption_tokenizer([])
    with pytest.raises(ValueError, match="vocab_size"):
        train_caption_tokenizer(EMOJI_CAPTIONS, vocab_size=3)


def test_build_text_encoder_follows_the_tokenizer_and_preset(tokenizer, text_encoder):
    config = text_encoder.config
    assert isinstance(text_encoder, CLIPTextModel)
    assert config.vocab_size == len(tokenizer)
    assert config.max_position_embeddings == tokenizer.model_max_length
    assert (config.eos_token_id, config.pad_token_id, config.bos_token_id) == (
        tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id)
    for name, value in TEXT_ENCODER_PRESETS["tiny"].items():
        assert getattr(config, name) == value
    assert text_embedding_dim(text_encoder) == 32
    assert build_text_encoder(tokenizer, "tiny", hidden_size=48).config.hidden_size == 48
    with pytest.raises(ValueError, match=r"preset.*small.*tiny.*'huge'"):
        build_text_encoder(tokenizer, "huge")


def test_pooled_output_is_taken_at_eos(tokenizer, text_encoder):
    ids = tokenize_prompts(tokenizer, EMOJI_PROMPTS)
    with torch.no_grad():
        output = text_encoder(ids)
    eos = (ids == tokenizer.eos_token_id).int().argmax(dim=1)
    expected = output.last_hidden_state[torch.arange(len(EMOJI_PROMPTS)), eos]
    torch.testing.assert_close(output.pooler_output, expected)


def test_encode_prompts(tokenizer, text_encoder):
    embeddings = encode_prompts(text_encoder, tokenizer, EMOJI_PROMPTS + EMOJI_PROMPTS[:1])
    assert embeddings.shape == (4, tokenizer.model_max_length, 32)
    assert not embeddings.requires_grad
    assert torch.equal(embeddings[0], embeddings[3])
    assert not torch.allclose(embeddings[0], embeddings[1])
    assert not torch.allclose(embeddings[1], embeddings[2])

    trained = embed_input_ids(text_encoder, tokenize_prompts(tokenizer, EMOJI_PROMPTS))
    trained.square().mean().backward()
    assert text_encoder.get_input_embeddings().weight.grad is not None
    text_encoder.zero_grad(set_to_none=True)


@pytest.mark.parametrize("layout", ["pipeline", "flat"])
def test_load_text_encoder_from_a_folder(tokenizer, text_encoder, tmp_path, layout):
    model_folder, tokenizer_folder = (("text_encoder", "tokenizer") if layout == "pipeline" else ("", ""))
    text_encoder.save_pretrained(tmp_path / model_folder)
    tokenizer.save_pretrained(tmp_path / tokenizer_folder)
    loaded, loaded_tokenizer = load_text_encoder(str(tmp_path))
    assert isinstance(loaded, CLIPTextModel) and not loaded.training
    expected = encode_prompts(text_encoder, tokenizer, EMOJI_PROMPTS)
    assert torch.equal(encode_prompts(loaded, loaded_tokenizer, EMOJI_PROMPTS), expected)
    if layout == "pipeline":  # the same folder inside another one, as `subfolder`
        again, _ = load_text_encoder(str(tmp_path.parent), subfolder=tmp_path.name)
        assert isinstance(again, CLIPTextModel)


def test_load_text_encoder_by_hub_repo_id(tokenizer, text_encoder, tmp_path, monkeypatch):
    text_encoder.save_pretrained(tmp_path / "pipeline" / "text_encoder")
    tokenizer.save_pretrained(tmp_path / "pipeline" / "tokenizer")
    text_encoder.save_pretrained(tmp_path / "flat")
    tokenizer.save_pretrained(tmp_path / "flat")
    expected = encode_prompts(text_encoder, tokenizer, EMOJI_PROMPTS)
    with serve_repos({"org/pipeline": tmp_path / "pipeline", "org/flat": tmp_path / "flat"}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setattr(constants, "ENDPOINT", hub.url)
        url_template = hub.url + "/{repo_id}/resolve/{revision}/{filename}"
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url_template)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
        monkeypatch.setattr(hf_api.api, "endpoint", hub.url)
        for repo_id in ("org/pipeline", "org/flat"):
            loaded, loaded_tokenizer = load_text_encoder(repo_id, cache_dir=str(tmp_path / "cache"), token=False)
            assert isinstance(loaded, CLIPTextModel) and not loaded.training
            assert torch.equal(encode_prompts(loaded, loaded_tokenizer, EMOJI_PROMPTS), expected)
        with pytest.raises(FileNotFoundError, match="text_encoder_name_or_path 'org/missing'"):
            load_text_encoder("org/missing", cache_dir=str(tmp_path / "cache"), token=False)
    assert not hub.unknown


def test_a_t5_folder_loads_as_t5_encoder(tokenizer, tmp_path):
    config = T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=16, d_ff=64, num_layers=1, num_heads=2,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      decoder_start_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = T5EncoderModel(config).eval()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, loaded_tokenizer = load_text_encoder(str(tmp_path))
    assert isinstance(loaded, T5EncoderModel)
    assert text_embedding_dim(loaded) == 32
    embeddings = encode_prompts(loaded, loaded_tokenizer, EMOJI_PROMPTS)
    assert embeddings.shape == (3, tokenizer.model_max_length, 32)
    assert torch.equal(embeddings, encode_prompts(model, tokenizer, EMOJI_PROMPTS))


def test_missing_text_encoders_raise_file_not_found(tokenizer, text_encoder, tmp_path):
    with pytest.raises(FileNotFoundError, match="text_encoder_name_or_path.*not a folder"):
        load_text_encoder(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="text_encoder_name_or_path.*config.json"):
        load_text_encoder(str(tmp_path))
    text_encoder.save_pretrained(tmp_path)  # no tokenizer beside it
    with pytest.raises(FileNotFoundError, match="text_encoder_name_or_path.*tokenizer"):
        load_text_encoder(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="text_encoder_name_or_path 'nobody/no-such-encoder'"):
        load_text_encoder("nobody/no-such-encoder", cache_dir=str(tmp_path / "cache"), local_files_only=True)


def test_emoji_captions():
    assert emoji_caption("grinning", "1F600", "Smileys & Emotion") == "grinning, smileys and emotion"
    assert emoji_caption("wave::skin-tone-4", "1F44B-1F3FD", "People & Body") == (
        "wave, medium skin tone, people and body")
    assert emoji_caption("star-struck", "1F929", "Smileys & Emotion") == "star struck, smileys and emotion"
    assert emoji_caption("sweat_smile", "1F605", "Smileys & Emotion") == "sweat smile, smileys and emotion"
    assert emoji_caption("-1::skin-tone-6", "1F44E-1F3FF", "People & Body") == "-1, dark skin tone, people and body"
    assert emoji_caption("flag-fr", "1F1EB-1F1F7", "Flags") == "flag fr, flags"
    assert emoji_caption("keycap_ten", "1F51F", "Symbols") == "keycap ten, symbols"
    assert emoji_caption("skin-tone-2", "1F3FB", "Component") == "light skin tone, component"
    tones = ("light", "medium-light", "medium", "medium-dark", "dark")
    for n, tone in enumerate(tones, start=2):
        unified = f"1F385-{0x1F3FB + n - 2:X}"
        caption = emoji_caption(f"santa::skin-tone-{n}", unified, "People & Body")
        assert caption == f"santa, {tone} skin tone, people and body"

    train = load_emoji_dataset(32, "train")
    assert COLUMNS[-1] == "caption" and tuple(train.column_names) == COLUMNS
    captions = list(train["caption"])
    assert all(caption.strip() and caption == caption.strip() and "  " not in caption for caption in captions)
    assert "smiley, smileys and emotion" in captions
    assert len(set(captions)) == len(captions)  # every image has its own caption
    assert train[0]["caption"] == emoji_caption(train[0]["short_name"], train[0]["unified"], train[0]["category"])
