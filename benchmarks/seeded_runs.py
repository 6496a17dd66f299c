"""Benchmarks that run one model and seed at a time, and a report over whatever runs exist.

Each run has its folder ``OUTPUT/runs/<model>-seed<k>``: the training's output folder, whose checkpoints let an
interrupted training resume (``--resume_from_checkpoint latest``), and ``result.json``, written atomically when the
run's evaluation ends. A run that has its ``result.json`` is cached: a later invocation skips it (delete the folder to
run it again). The report step (``--report``) reads every ``result.json`` and gives the mean and spread over seeds of
each figure, with the number of seeds behind it. ``--max_minutes`` bounds the training time of one invocation
(`TrainingBudget`), so that runs longer than a sitting are made in several.

A run's records (``result.json``, and ``train_split.json`` where ``compare_budgets.py`` wrote it) are committed with
the report; the rest of its folder (checkpoints, the trained model, its pictures) is git-ignored. So a clone can
reassemble a report, and add seeds or models to it, without the runs made elsewhere: what it cannot rebuild without
their files (timings, the pictures of the lowest seeds) is kept from the report there while it shows the same runs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import time
from pathlib import Path
from typing import Collection, Iterable, Iterator, Sequence

from benchmark_runs import run_shown, shown_command  # beside this module

RUNS = "runs"
RESULT = "result.json"
CHECKPOINT_EVERY = 100  # training steps between checkpoints: an interrupted run loses at most these
_RUN_NAME = re.compile(r"^(?P<model>.+)-seed(?P<seed>\d+)$")


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]`` (duplicates dropped, order kept); an `argparse` type."""
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        seeds = []
    if not seeds or any(seed < 0 for seed in seeds):
        raise argparse.ArgumentTypeError(f"expected comma-separated seeds >= 0 such as 0,1,2, got {text!r}")
    return list(dict.fromkeys(seeds))


def positive_minutes(text: str) -> float:
    """``--max_minutes``: a number of minutes > 0; an `argparse` type."""
    try:
        minutes = float(text)
    except ValueError:
        minutes = 0.0
    if not minutes > 0:
        raise argparse.ArgumentTypeError(f"expected minutes > 0 such as 55, got {text!r}")
    return minutes


def add_run_arguments(parser: argparse.ArgumentParser, choices: Sequence[str], default: Sequence[str]) -> None:
    """The flags that choose the runs: ``--models`` (of ``choices``), ``--seeds``, ``--report`` and ``--max_minutes``."""
    parser.add_argument(
        "--models",
        nargs="+",
        default=list(default),
        metavar="MODEL",
        help=f"the models to run, space- or comma-separated, of {', '.join(choices)} "
        f"(default: {' '.join(default)}); one given twice runs once",
    )
    parser.add_argument(
        "--seeds",
        type=parse_seeds,
        default=[0],
        help="the seeds to run each model with, comma-separated (default 0); a model and seed whose "
        "run has its result.json is not run again",
    )
    parser.add_argument(
        "--report", action="store_true", help="run nothing: assemble the report from the runs in OUTPUT/runs"
    )
    parser.add_argument(
        "--max_minutes",
        type=positive_minutes,
        default=None,
        help="training minutes of this invocation, spent by its runs in turn (start-up and evaluation come on "
        "top): a training still going then stops at a checkpoint, and the same command continues it; the report "
        "is assembled by the invocation that ends its last run (default: no limit)",
    )


def chosen_models(values: Iterable[str], choices: Sequence[str]) -> list[str]:
    """The models of ``--models`` (commas split, duplicates dropped, order kept), checked against ``choices``."""
    models = list(dict.fromkeys(m for value in values for m in value.split(",") if m))
    unknown = [m for m in models if m not in choices]
    if unknown or not models:
        raise ValueError(f"--models: {', '.join(unknown) or 'none given'}; choose among {', '.join(choices)}")
    return models


def run_folder(output: Path, model: str, seed: int) -> Path:
    """``OUTPUT/runs/<model>-seed<seed>``."""
    return Path(output) / RUNS / f"{model}-seed{seed}"


def load_result(folder: Path) -> dict | None:
    """A run's ``result.json``, or None when the run has not ended."""
    path = Path(folder) / RESULT
    return json.loads(path.read_text()) if path.is_file() else None


def write_json_atomically(path: Path, data: dict) -> Path:
    """Writes ``data`` to ``path`` as JSON through a temporary file renamed over it: never half-written."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=2))
    os.replace(temporary, path)
    return path


def save_result(folder: Path, result: dict) -> Path:
    """Writes ``result.json`` atomically, then removes the run's checkpoints."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomically(folder / RESULT, result)
    for checkpoint in folder.glob("checkpoint-*"):
        shutil.rmtree(checkpoint, ignore_errors=True)
    return folder / RESULT


class TrainingBudget:
    """The training time of one invocation (``--max_minutes``; None: no limit), spent by its runs in turn: each
    training gets ``--max_train_seconds`` for what is left, and stops at a checkpoint when it is spent."""

    def __init__(self, max_minutes: float | None, tag: str):
        self.deadline = None if max_minutes is None else time.monotonic() + 60 * max_minutes
        self.tag = tag
        self.stopped = False  # a training stopped short of its steps: the invocation ends without its report

    def flags(self) -> list[str]:
        """The training script's flag for the time left (none without a limit)."""
        if self.deadline is None:
            return []
        return ["--max_train_seconds", f"{max(self.deadline - time.monotonic(), 1.0):.0f}"]

    def spent(self) -> bool:
        """Whether no time is left, or a training has already stopped short."""
        return self.stopped or (self.deadline is not None and time.monotonic() >= self.deadline)

    def train(self, command: list[str], folder: Path, steps: int, name: str) -> str | None:
        """Runs the training ``command`` of the run in ``folder`` for at most the time left; returns the command as
        shown (without the budget, which is the invocation's) and records it in the run's ``benchmark_command.txt``,
        or None when the training stopped short of ``steps``."""
        run_shown(command + self.flags())
        if self.stopped_short(folder, steps, name):
            return None
        shown = shown_command(command)
        (Path(folder) / "benchmark_command.txt").write_text(shown + "\n")
        return shown

    def stopped_short(self, folder: Path, steps: int, name: str) -> bool:
        """Whether the training in ``folder`` stopped before ``steps`` (this budget, or a time limit given after
        ``--``); if so, says where it stands: such a run is not evaluated, and the same command continues it."""
        if training_finished(folder, steps):
            return False
        metrics = Path(folder) / "metrics.json"
        step = json.loads(metrics.read_text()).get("step") if metrics.is_file() else "?"
        print(f"[{self.tag}] {name}: the training stopped at step {step} of {steps}, its time spent; its checkpoint "
              "is kept, and the same command continues it", flush=True)  # fmt: skip
        self.stopped = True
        return True


def pending_runs(
    output: Path, models: Sequence[str], seeds: Sequence[int], tag: str, budget: TrainingBudget | None = None
) -> Iterator[tuple[str, int, Path]]:
    """``(model, seed, folder)`` of each run without a result, in order, until ``budget`` is spent; prints the cached
    ones."""
    for model in models:
        for seed in seeds:
            folder = run_folder(output, model, seed)
            if load_result(folder) is not None:
                print(f"[{tag}] {model} seed {seed}: cached ({folder / RESULT})", flush=True)
                continue
            if budget is not None and budget.spent():
                print(f"[{tag}] --max_minutes spent: {model} seed {seed} and the runs after it are left for the next "
                      "invocation", flush=True)  # fmt: skip
                budget.stopped = True
                return
            yield model, seed, folder


def training_finished(folder: Path, steps: int) -> bool:
    """Whether the training in ``folder`` ended (its ``metrics.json`` is written at the end) at ``steps``."""
    path = Path(folder) / "metrics.json"
    return path.is_file() and json.loads(path.read_text()).get("step") == steps


def training_environment(trained: dict) -> dict:
    """``train_torch`` and ``train_threads`` of a training's ``metrics.json`` (``trained``), where it records them:
    what a bit-for-bit repeat of the run needs beside its command."""
    return {f"train_{key}": trained[key] for key in ("torch", "threads") if key in trained}


def resume_flags(steps: int) -> list[str]:
    """Training flags that checkpoint every `CHECKPOINT_EVERY` steps (keeping one) and resume from the newest
    checkpoint in the output folder, if any."""
    every = str(min(steps, CHECKPOINT_EVERY))
    return ["--checkpointing_steps", every, "--checkpoints_total_limit", "1", "--resume_from_checkpoint", "latest"]


def collect(output: Path, models: Sequence[str] | None = None) -> dict[str, dict[int, dict]]:
    """``{model: {seed: result}}`` of the ended runs in ``OUTPUT/runs`` (``models``: those, in that order; default:
    every model found, in ``sorted`` order), seeds ascending."""
    found: dict[str, dict[int, dict]] = {}
    for path in sorted((Path(output) / RUNS).glob(f"*/{RESULT}")):
        match = _RUN_NAME.match(path.parent.name)
        if match:
            found.setdefault(match["model"], {})[int(match["seed"])] = json.loads(path.read_text())
    order = list(models) if models is not None else sorted(found)
    return {m: dict(sorted(found[m].items())) for m in order if m in found}


def reported_lowest_seeds(output: Path) -> dict[str, int]:
    """``{model: lowest seed}`` of the report already in ``output`` (its ``results.json``; ``{}`` when none): the runs
    its timings and pictures come from."""
    path = Path(output) / "results.json"
    models = json.loads(path.read_text()).get("models", {}) if path.is_file() else {}
    return {model: min(map(int, entry["seeds"])) for model, entry in models.items() if entry.get("seeds")}


def require_run_files(folders: dict[str, Path], name: str, instead: str) -> None:
    """A FileNotFoundError naming the run folders of ``folders`` (``{model: folder}``) that lack ``name``, a file
    that a clone does not have (it has only the runs' records); ``instead``: what the report can do without it."""
    gone = [Path(folder).name for folder in folders.values() if not (Path(folder) / name).exists()]
    if gone:
        raise FileNotFoundError(
            f"{', '.join(gone)}: no {name} in the run folder (a clone has only each run's records, {RESULT}); "
            f"{instead}, or run them again here (delete their {RESULT})"
        )


def spread(values: Sequence[float]) -> dict[str, float]:
    """``mean``, ``std`` (over seeds, n - 1; 0 for one), ``min``, ``max`` and ``n`` of ``values``."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("no values: a spread needs at least one run")
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "min": min(values), "max": max(values), "n": len(values)}


def summarize(runs: dict[int, dict], keys: Sequence[str]) -> dict[str, dict[str, float]]:
    """`spread` over seeds of each of ``keys`` that every run (``{seed: row}``) has."""
    return {key: spread([row[key] for row in runs.values()]) for key in keys if all(key in r for r in runs.values())}


def show(stat: dict, digits: int, scale: float = 1.0) -> str:
    """``mean ± std`` (``scale`` times), or the mean alone for one seed."""
    text = f"{scale * stat['mean']:.{digits}f}"
    return text + (f" ± {scale * stat['std']:.{digits}f}" if stat["n"] > 1 else "")


def seeds_text(seeds: Collection[int]) -> str:
    """``"3 (0, 1, 2)"``: the number of ``seeds`` and which (a list of seeds, or runs by seed: ``{seed: row}``)."""
    return f"{len(seeds)} ({', '.join(map(str, seeds))})"


def check_same(runs: dict[str, dict[int, dict]], keys: Sequence[str]) -> dict:
    """The values of ``keys`` (in each result's ``setup``) shared by every run; a ValueError naming the runs that
    differ (runs of other budgets belong in another ``--output``)."""
    seen: dict[str, list[str]] = {}
    for model, by_seed in runs.items():
        for seed, result in by_seed.items():
            values = json.dumps({key: result["setup"].get(key) for key in keys})
            seen.setdefault(values, []).append(f"{model}-seed{seed}")
    if len(seen) > 1:
        groups = "; ".join(f"{values}: {', '.join(names)}" for values, names in seen.items())
        raise ValueError(
            f"the runs in OUTPUT/{RUNS} differ in their setup ({groups}): delete the runs of the other "
            "setup, or give each setup its own --output"
        )
    return json.loads(next(iter(seen))) if seen else {}
