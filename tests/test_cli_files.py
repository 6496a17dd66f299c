"""The `brics` commands' files: outputs never replace an input, nor each other, nor (without --overwrite) a file
already there; inputs are checked before any model loads; `brics info --model` reads what the other commands read."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import tiny_unet
from PIL import Image

from diffusers_brics import BRICSAutoencoder, BRICSPipeline, cli, cli_commands, evaluate
from diffusers_brics.console import run_command
from diffusers_brics.files import check_outputs, unique_stems
from diffusers_brics.pipelines import default_scheduler


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A tiny autoencoder folder, a pipeline and a stage-1 output on it, two images and a file that is no image."""
    root = tmp_path_factory.mktemp("cli-files")
    torch.manual_seed(0)
    vae = BRICSAutoencoder.from_preset("tiny").eval()
    vae.save_pretrained(root / "vae")
    vae.save_pretrained(root / "stage1" / "autoencoder")
    BRICSPipeline(unet=tiny_unet(vae.latent_shape[0]), scheduler=default_scheduler(), vae=vae).save_pretrained(
        root / "pipeline")
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / name)
    (root / "corrupt.png").write_bytes(b"not a png")
    return {"vae": root / "vae", "pipeline": root / "pipeline", "stage1": root / "stage1", "a": root / "a.png",
            "b": root / "b.png", "corrupt": root / "corrupt.png"}


def error_line(args, capsys) -> str:
    """The one-line error of a command that fails with exit status 1."""
    assert run_command(cli.main, list(map(str, args)), prog="brics") == 1, args
    lines = [line for line in capsys.readouterr().err.strip().splitlines()
             if line.strip() and "Loading pipeline components" not in line]
    assert len(lines) == 2 and lines[0].startswith("brics: error: ") and "--debug" in lines[1], (args, lines)
    return lines[0]


def files_in(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


# ------------------------------------------------------------------------------------- outputs and inputs
def test_reconstruct_into_the_inputs_folder_refuses_to_replace_it(models, tmp_path, capsys, monkeypatch):
    """`brics reconstruct emoji_0.png --model M --output-dir .` replaced its input: now it is refused, also with
    --overwrite, and nothing is written."""
    shutil.copy(models["a"], tmp_path / "emoji_0.png")
    before = (tmp_path / "emoji_0.png").read_bytes()
    monkeypatch.chdir(tmp_path)
    for extra in ([], ["--overwrite"]):
        line = error_line(["reconstruct", "emoji_0.png", "--model", models["vae"], "--output-dir", ".", *extra],
                          capsys)
        assert "emoji_0.png" in line and "is an input of this command" in line and "--output_dir" in line, line
    assert (tmp_path / "emoji_0.png").read_bytes() == before
    assert files_in(tmp_path) == ["emoji_0.png"]


def test_two_inputs_of_the_same_name_give_two_outputs(models, tmp_path):
    for folder, image in (("a", "a"), ("b", "b")):
        (tmp_path / folder).mkdir()
        shutil.copy(models[image], tmp_path / folder / "x.png")
    same = tmp_path / "same"
    assert cli.main(["reconstruct", str(tmp_path / "a" / "x.png"), str(tmp_path / "b" / "x.png"), "--model",
                     str(models["vae"]), "--output_dir", str(same)]) == 0
    assert files_in(same) == ["x-1.png", "x-1_key_codes.png", "x.png", "x_key_codes.png"]
    for folder, name in (("a", "x.png"), ("b", "x-1.png")):  # each is its own image's reconstruction
        alone = tmp_path / f"{folder}-alone"
        assert cli.main(["reconstruct", str(tmp_path / folder / "x.png"), "--model", str(models["vae"]),
                         "--output_dir", str(alone)]) == 0
        assert (same / name).read_bytes() == (alone / "x.png").read_bytes()
    assert (same / "x.png").read_bytes() != (same / "x-1.png").read_bytes()


def test_decode_names_images_of_the_same_name_apart_and_replaces_only_with_overwrite(models, tmp_path, capsys):
    for folder, image in (("a", "a"), ("b", "b")):
        (tmp_path / folder).mkdir()
        shutil.copy(models[image], tmp_path / folder / "x.png")
    codes, out = tmp_path / "codes.safetensors", tmp_path / "decoded"
    assert cli.main(["encode", str(tmp_path / "a" / "x.png"), str(tmp_path / "b" / "x.png"), "--model",
                     str(models["vae"]), "--output", str(codes)]) == 0
    assert cli.main(["decode", str(codes), "--model", str(models["vae"]), "--output_dir", str(out)]) == 0
    assert files_in(out) == ["x-1.png", "x.png"]
    assert (out / "x.png").read_bytes() != (out / "x-1.png").read_bytes()
    before = {name: (out / name).stat().st_mtime_ns for name in files_in(out)}
    line = error_line(["decode", codes, "--model", models["vae"], "--output_dir", out], capsys)
    assert "x.png" in line and "(and 1 more of the outputs)" in line and "--overwrite" in line, line
    assert {name: (out / name).stat().st_mtime_ns for name in files_in(out)} == before
    assert cli.main(["decode", str(codes), "--model", str(models["vae"]), "--output_dir", str(out),
                     "--overwrite"]) == 0
    assert files_in(out) == ["x-1.png", "x.png"]


@pytest.mark.parametrize("command", ["reconstruct", "encode", "decode", "sample", "interpolate"])
def test_an_existing_output_is_replaced_only_with_overwrite(models, tmp_path, capsys, command):
    out = tmp_path / "out"
    out.mkdir()
    codes = tmp_path / "codes.safetensors"
    if command == "decode":
        assert cli.main(["encode", str(models["a"]), "--model", str(models["vae"]), "--output", str(codes)]) == 0
    args, target, other = {
        "reconstruct": (["reconstruct", models["a"], "--model", models["vae"], "--output_dir", out], "a.png",
                        "a_key_codes.png"),
        "encode": (["encode", models["a"], "--model", models["vae"], "--output", out / "codes.safetensors"],
                   "codes.safetensors", None),
        "decode": (["decode", codes, "--model", models["vae"], "--output_dir", out], "a.png", None),
        "sample": (["sample", "--model", models["pipeline"], "--num_images", 2, "--num_inference_steps", 2,
                    "--output_dir", out], "grid.png", "sample_000.png"),
        "interpolate": (["interpolate", models["a"], models["b"], "--model", models["vae"], "--steps", 3,
                         "--output", out / "row.png"], "row.png", None),
    }[command]
    (out / target).write_bytes(b"an earlier result")
    line = error_line(args, capsys)
    assert f"{out / target}" in line and "exists" in line and "--overwrite" in line, line
    assert (out / target).read_bytes() == b"an earlier result"
    assert files_in(out) == [target]  # nothing else written either
    assert cli.main([*map(str, args), "--overwrite"]) == 0
    assert (out / target).read_bytes() != b"an earlier result"
    assert other is None or (out / other).is_file()


@pytest.mark.parametrize("command", ["encode", "interpolate", "sample"])
def test_an_input_is_never_replaced_even_with_overwrite(models, tmp_path, capsys, command):
    image = tmp_path / "image.png"
    shutil.copy(models["a"], image)
    before = image.read_bytes()
    args = {
        "encode": ["encode", image, "--model", models["vae"], "--output", image],
        "interpolate": ["interpolate", models["b"], image, "--model", models["vae"], "--output", image],
        "sample": ["sample", "--model", models["pipeline"], "--image", tmp_path / "sample_000.png", "--num_images",
                   1, "--output_dir", tmp_path],
    }[command]
    if command == "sample":
        shutil.copy(image, tmp_path / "sample_000.png")
        image = tmp_path / "sample_000.png"
    line = error_line([*args, "--overwrite"], capsys)
    assert str(image) in line and "is an input of this command" in line, line
    assert image.read_bytes() == before


def test_output_names_are_unique_without_regard_to_case():
    assert unique_stems(["x", "y"]) == ["x", "y"]
    assert unique_stems(["x", "x", "x"]) == ["x", "x-1", "x-2"]
    assert unique_stems(["x", "x", "x-1"]) == ["x", "x-2", "x-1"]  # a name no other input has is kept
    assert unique_stems(["X", "x"]) == ["X", "x-1"]
    # reconstruct writes NAME.png and NAME_key_codes.png: the second image's picture would be the first's key codes
    assert unique_stems(["a", "a_key_codes"], ("{}.png", "{}_key_codes.png")) == ["a", "a_key_codes-1"]


def test_an_output_reached_through_a_link_is_still_the_input(tmp_path):
    source = tmp_path / "image.png"
    source.write_bytes(b"input")
    (tmp_path / "out").mkdir()
    os.symlink(source, tmp_path / "out" / "image.png")
    with pytest.raises(FileExistsError, match="is an input of this command"):
        check_outputs([tmp_path / "out" / "image.png"], [source], overwrite=True, flag="--output_dir")
    check_outputs([tmp_path / "out" / "other.png"], [source], overwrite=False, flag="--output_dir")


# ------------------------------------------------------------------------------- inputs before the model
@pytest.fixture
def no_model_loads(monkeypatch):
    """Loading a model fails the test: the command must stop at its inputs first."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the inputs were checked")

    monkeypatch.setattr(cli_commands, "load", refuse)
    for name in ("InceptionFeatures", "load_pipeline"):
        monkeypatch.setattr(evaluate, name, refuse)
    monkeypatch.setattr(evaluate.adapters, "load_autoencoder", refuse)


@pytest.mark.parametrize("args, message", [
    (("reconstruct", "MISSING", "--model", "HUB"), "images[0]: no such file"),
    (("reconstruct", "A", "CORRUPT", "--model", "HUB"), "images[1]: 'CORRUPT' is not a readable image"),
    (("reconstruct", "A", "--model", "HUB", "--output_dir", "A"), "--output_dir 'A' is a file"),
    (("encode", "A", "MISSING", "--model", "HUB"), "images[1]: no such file"),
    (("decode", "MISSING", "--model", "HUB"), "key_codes: no such file"),
    (("decode", "DIR", "--model", "HUB"), "key_codes: 'DIR' is a folder"),
    (("sample", "--model", "HUB", "--image", "MISSING"), "--image: no such file"),
    (("sample", "--model", "HUB", "--image", "A", "--mask", "CORRUPT"), "--mask: 'CORRUPT' is not a readable image"),
    (("interpolate", "A", "MISSING", "--model", "HUB"), "B: no such file"),
    (("interpolate", "CORRUPT", "A", "--model", "HUB"), "A: 'CORRUPT' is not a readable image"),
    (("evaluate", "generation", "--pipeline", "MISSING_DIR", "--output", "OUT"), "--pipeline 'MISSING_DIR': no such"),
    (("evaluate", "reconstruction", "--model", "HUB", "--train_data_dir", "MISSING_DIR", "--output", "OUT"),
     "--train_data_dir: no such folder"),
    (("evaluate", "reconstruction", "--model", "HUB", "--inception_weights", "MISSING", "--output", "OUT"),
     "--inception_weights: no such file"),
])
def test_inputs_are_checked_before_a_model_loads(models, tmp_path, capsys, no_model_loads, args, message):
    """``HUB`` names a Hub repo that would take long to download; loading anything fails the test."""
    files = {"A": str(models["a"]), "CORRUPT": str(models["corrupt"]), "MISSING": str(tmp_path / "missing.png"),
             "MISSING_DIR": str(tmp_path / "nowhere" / "model"), "DIR": str(tmp_path), "HUB": "some-org/large-model",
             "OUT": str(tmp_path / "out")}
    line = error_line([files.get(arg, arg) for arg in args], capsys)
    for name, value in files.items():
        message = message.replace(f"'{name}'", repr(value))
    assert message in line, line


# ------------------------------------------------------------------------------------------- brics info
def test_info_takes_every_model_the_other_commands_take(models, capsys):
    assert cli.main(["info", "--config", str(models["vae"])]) == 0
    expected = capsys.readouterr().out.splitlines()[1:]  # all but the title, which names the source
    assert any("total" in line for line in expected)
    for kind in ("pipeline", "vae", "stage1"):
        assert cli.main(["info", "--model", str(models[kind])]) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"BRICSAutoencoder {models[kind]}") and out.splitlines()[1:] == expected, kind
    assert cli.main(["info", "tiny"]) == 0 and capsys.readouterr().out.startswith("BRICSAutoencoder tiny")


def test_info_refuses_a_missing_model_and_two_sources(models, tmp_path, capsys):
    assert "no such folder" in error_line(["info", "--model", tmp_path / "nowhere" / "model"], capsys)
    with pytest.raises(SystemExit) as done:
        cli.main(["info", "tiny", "--model", str(models["vae"])])
    assert done.value.code == 2 and "not allowed with" in capsys.readouterr().err
