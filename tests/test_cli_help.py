"""The `brics` flags and help: one flag style (underscores, with the hyphen spelling read as the same flag but never
shown), usage lines that say `brics COMMAND`, --debug described everywhere, and help that answers at once because
the command line imports no torch."""

import argparse
import json
import os
import re
import subprocess
import sys
import time

import pytest

from diffusers_brics import cli, names
from diffusers_brics.console import canonical_flags, flag_aliases

# the modules `--help` must not wait for
HEAVY = ("torch", "diffusers", "transformers", "accelerate", "datasets")
# every command: none needs torch for its parser (the trainings' are in training/autoencoder_args, diffusion_args)
LIGHT_COMMANDS = ["reconstruct", "encode", "decode", "sample", "interpolate", "examples", "info", "evaluate",
                  "evaluate generation", "quickstart", "train-ae", "train-diffusion"]
OFFLINE_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def all_parsers() -> dict[str, argparse.ArgumentParser]:
    """Every command's parser as `brics` builds it, subcommands included, by command line ("evaluate generation")."""
    found = {}
    top = cli.build_parser()
    delegated = {name: cli.delegated_parser(name) for name in cli.DELEGATED}
    for prefix, parser in [("", top), *((f"{name} ", p) for name, p in delegated.items())]:
        found[prefix.strip() or "brics"] = parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    if name not in cli.DELEGATED:
                        found[prefix + name] = sub
    return found


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=OFFLINE_ENV)


def test_the_command_line_imports_no_heavy_module():
    """Importing the CLI, building every light parser and answering each light command's --help leave torch,
    diffusers, transformers, accelerate and datasets unimported."""
    code = f"""
import contextlib, io, json, sys
import diffusers_brics.cli as cli
imported = [sys.modules.keys() & {set(HEAVY)!r}]
for command in {LIGHT_COMMANDS!r} + [""]:
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            cli.main([*command.split(), "--help"])
        except SystemExit:
            pass
imported.append(sys.modules.keys() & {set(HEAVY)!r})
print(json.dumps([sorted(names) for names in imported]))
"""
    done = run_python(code)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [[], []]


@pytest.mark.parametrize(
    "command", ["", "sample", "examples", "info", "evaluate", "quickstart", "train-ae", "train-diffusion"]
)
def test_help_answers_within_a_second(command):
    """`brics --help` and a command's --help take about 0.1 s; the bound leaves room for a loaded machine."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "diffusers_brics", *command.split(), "--help"], capture_output=True,
                          text=True, timeout=60, env=OFFLINE_ENV)
    seconds = time.perf_counter() - start
    assert done.returncode == 0 and done.stdout.startswith(f"usage: brics {command}".rstrip()), done.stderr
    assert seconds < 3, f"brics {command} --help took {seconds:.2f} s"


def test_every_flag_is_spelled_with_underscores_and_help_shows_no_alias():
    hyphenated = re.compile(r"--(?!no-)[a-z0-9]+(?:-[a-z0-9]+)+")
    for command, parser in all_parsers().items():
        flags = [flag for action in parser._actions for flag in action.option_strings]
        assert not [flag for flag in flags if hyphenated.fullmatch(flag)], command
        shown = hyphenated.findall(parser.format_help())
        assert not set(shown) & set(flag_aliases(parser)), (command, shown)


def test_hyphen_spellings_are_read_as_the_flags():
    parser = cli.build_parser()
    hyphens = parser.parse_args(["sample", "--model", "M", "--num-images", "3", "--output-dir", "out",
                                 "--guidance-scale=2", "--negative-prompt", "x", "--class-label", "1", "--steps", "4"])
    underscores = parser.parse_args(["sample", "--model", "M", "--num_images", "3", "--output_dir", "out",
                                     "--guidance_scale", "2", "--negative_prompt", "x", "--class_label", "1",
                                     "--num_inference_steps", "4"])
    assert vars(hyphens) == vars(underscores)
    assert vars(parser.parse_args(["reconstruct", "x.png", "--model", "M", "--output-dir", "o"]))["output_dir"] == "o"
    # the delegated commands' parsers, also those the training modules build
    for command, argv in {
        "quickstart": ["--output-dir", "o", "--num-inference-steps", "3", "--autoencoder-args", "--output-dir x"],
        "evaluate": ["generation", "--pipeline", "P", "--output", "o", "--num-samples", "3", "--batch-size=2"],
        "train-ae": ["--output-dir", "o", "--max-train-steps", "3", "--no-use-ema", "--no-eval-with-noise"],
        "train-diffusion": ["--autoencoder", "A", "--output-dir", "o", "--unet-preset", "tiny"],
    }.items():
        parser = cli.delegated_parser(command)
        canonical = ["--" + re.sub(r"^no_", "no-", arg[2:].replace("-", "_")) if arg.startswith("--") and " " not in arg
                     else arg for arg in argv]
        assert vars(parser.parse_args(canonical_flags(parser, argv))) == vars(parser.parse_args(canonical)), command
    assert canonical_flags(cli.delegated_parser("quickstart"), ["--", "--output-dir"]) == ["--", "--output-dir"]


def test_a_delegated_command_gets_its_flags_spelled_as_it_defines_them(monkeypatch):
    """`brics train-ae --output-dir x` reaches the training module as --output_dir (its own parser has no aliases)."""
    from diffusers_brics.training import autoencoder

    received = []
    monkeypatch.setattr(autoencoder, "main", lambda argv: received.append(argv))
    assert cli.main(["train-ae", "--output-dir", "run", "--max-train-steps=3", "--debug"]) == 0
    assert received == [["--output_dir", "run", "--max_train_steps=3"]]


@pytest.mark.parametrize("command", LIGHT_COMMANDS + ["", "train-ae", "train-diffusion"])
def test_help_describes_debug_and_its_usage_says_brics(command, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["brics"])
    with pytest.raises(SystemExit) as done:
        cli.main([*command.split(), "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and out.startswith(f"usage: brics {command}".rstrip())
    assert "--debug" in out and "BRICS_DEBUG" in out
    assert "python -m diffusers_brics." not in out.split("\n\n")[0]  # the usage line


def test_the_light_choice_lists_agree_with_the_tables():
    from diffusers_brics.models import PRESETS
    from diffusers_brics.pipelines.loading import SCHEDULERS
    from diffusers_brics.training.unet import UNET_PRESETS

    assert names.AUTOENCODER_PRESETS == tuple(sorted(PRESETS))
    assert names.UNET_PRESETS == tuple(sorted(UNET_PRESETS))
    assert names.SCHEDULERS == tuple(sorted(SCHEDULERS))
