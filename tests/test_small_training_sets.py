"""Training sets smaller than one batch: both stages train with the largest batch that fits (and say so, naming
``--train_batch_size``), or refuse with a ValueError naming what to change, leaving no folder of their own behind;
every training ends with the line ``saved to PATH``."""

from __future__ import annotations

import logging

import pytest
from builders import DIFFUSION_FAST, brics, run_in_process

from diffusers_brics.training import autoencoder, diffusion
from diffusers_brics.training.data import fit_batch_size

# stage 1's tiny preset, a few held-out images, no perceptual term or GAN (seconds on a CPU)
AUTOENCODER_FAST = [
    "--preset", "tiny", "--eval_batch_size", "8", "--max_eval_images", "8", "--num_validation_images", "2",
    "--report_to", "none", "--perceptual_weight", "0", "--gan_weight", "0", "--validation_steps", "100",
    "--checkpointing_steps", "100", "--validation_fraction", "0.2",
]  # fmt: skip


def train_diffusion(*argv) -> int:
    return run_in_process(diffusion.main, [*DIFFUSION_FAST, *argv], "train_brics_diffusion.py")


def train_autoencoder(*argv) -> int:
    return run_in_process(autoencoder.main, [*AUTOENCODER_FAST, *argv], "train_brics_ae.py")


def messages(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records]


@pytest.mark.parametrize(
    ("examples", "batch", "processes", "accumulation", "expected"),
    [
        (10, 4, 1, 1, 4),  # one step fits: the batch asked for, no warning
        (10, 10, 1, 1, 10),
        (10, 11, 1, 1, 10),
        (10, 64, 2, 1, 5),  # every process gets its own batch: 5 x 2 processes
        (10, 64, 3, 1, 3),
        (10, 4, 2, 2, 2),  # and micro-batches: 2 x 2 processes x 2 accumulation steps
        (3, 16, 3, 1, 1),
    ],
)
def test_the_batch_shrinks_to_what_one_step_of_the_data_holds(examples, batch, processes, accumulation, expected):
    used, note = fit_batch_size(examples, batch, processes, accumulation)
    assert used == expected and used * processes * accumulation <= examples
    if used == batch:
        assert note is None
    else:
        assert f"--train_batch_size {batch} x {processes} process(es)" in note
        assert f"training with --train_batch_size {expected} instead" in note


@pytest.mark.parametrize(
    ("examples", "processes", "accumulation", "named"),
    [(0, 1, 1, "--train_data_dir"), (3, 2, 2, "--gradient_accumulation_steps"), (1, 2, 1, "fewer processes")],
)
def test_data_that_cannot_fill_a_step_of_batches_of_one_is_refused(examples, processes, accumulation, named):
    with pytest.raises(ValueError, match=named):
        fit_batch_size(examples, 8, processes, accumulation)


def test_stage_2_trains_a_folder_smaller_than_its_default_batch_and_says_where_it_saved(
    tmp_path, autoencoder, random_image_folder, caplog
):
    images, out = random_image_folder(10), tmp_path / "ldm"
    with caplog.at_level(logging.INFO):
        assert train_diffusion(
            "--autoencoder", autoencoder, "--train_data_dir", images, "--output_dir", out, "--max_train_steps", 1,
            "--train_batch_size", 64, "--gradient_accumulation_steps", 2,
        ) == 0  # fmt: skip
    logged = messages(caplog)
    warning = "10 training examples are fewer than one step of --train_batch_size 64 x 1 process(es) x "
    assert any(warning in m and "training with --train_batch_size 5 instead" in m for m in logged), logged
    assert any("1 steps of batch 5 x 1 processes x 2" in m for m in logged), logged
    assert logged[-1].endswith(f"saved to {out}")
    assert (out / "model_index.json").is_file()


def test_stage_1_trains_a_folder_smaller_than_its_batch_and_says_where_it_saved(
    tmp_path, random_image_folder, lpips_weights_dir, caplog
):
    images, out = random_image_folder(5), tmp_path / "ae"  # 4 training images, 1 held out
    with caplog.at_level(logging.INFO):
        assert train_autoencoder(
            "--train_data_dir", images, "--output_dir", out, "--max_train_steps", 1, "--train_batch_size", 16
        ) == 0  # fmt: skip
    logged = messages(caplog)
    warning = "4 training examples are fewer than one step of --train_batch_size 16"
    assert any(warning in m and "training with --train_batch_size 4 instead" in m for m in logged), logged
    assert logged[-1].endswith(f"saved to {out / 'autoencoder'}")
    assert (out / "autoencoder" / "config.json").is_file()


@pytest.mark.parametrize("stage", ["autoencoder", "diffusion"])
def test_a_refused_run_leaves_no_folder_of_its_own_behind(tmp_path, autoencoder, stage, capsys):
    empty, out = tmp_path / "no-images", tmp_path / "new" / "run"
    empty.mkdir()
    (tmp_path / "new").mkdir()
    train = train_autoencoder if stage == "autoencoder" else train_diffusion
    vae = [] if stage == "autoencoder" else ["--autoencoder", autoencoder]
    capsys.readouterr()
    assert train(*vae, "--train_data_dir", empty, "--output_dir", out, "--report_to", "tensorboard") == 1
    assert "train_data_dir" in capsys.readouterr().err
    assert not out.exists() and (tmp_path / "new").is_dir()  # what was there before stays
    # an output folder that was there before stays too, with what it held
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert train(*vae, "--train_data_dir", empty, "--output_dir", out, "--report_to", "tensorboard") == 1
    assert [path.name for path in out.iterdir()] == ["notes.txt"]


def test_too_many_accumulation_steps_for_the_data_are_refused_with_the_flag(
    tmp_path, autoencoder, random_image_folder, capsys
):
    images, out = random_image_folder(10), tmp_path / "run"
    capsys.readouterr()
    assert train_diffusion(
        "--autoencoder", autoencoder, "--train_data_dir", images, "--output_dir", out,
        "--gradient_accumulation_steps", 11,
    ) == 1  # fmt: skip
    assert "lower --gradient_accumulation_steps" in capsys.readouterr().err
    assert not out.exists()  # refused before anything was written into it


def test_brics_train_diffusion_on_a_small_folder_warns_and_ends_with_saved_to(
    tmp_path, autoencoder, random_image_folder
):
    """The command as a user runs it, with its default ``--train_batch_size`` (the recipe's: 32 or 64), on ten
    images."""
    images, out = random_image_folder(10), tmp_path / "ldm"
    fast = list(DIFFUSION_FAST)
    del fast[fast.index("--train_batch_size") : fast.index("--train_batch_size") + 2]
    done = brics(
        "train-diffusion", *fast, "--autoencoder", autoencoder, "--train_data_dir", images, "--output_dir", out,
        "--max_train_steps", 1,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    console = done.stdout + done.stderr
    assert "10 training examples are fewer than one step of --train_batch_size " in console
    assert "training with --train_batch_size 10 instead" in console
    assert console.rstrip().splitlines()[-1].endswith(f"saved to {out}")
