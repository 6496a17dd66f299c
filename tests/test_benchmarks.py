"""The benchmarks in their tiny modes: decode cost with peak memory, and relaxed precision end to end (two
invocations: the runs of the first cached, a second seed reported with the spread)."""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from builders import as_cloned

pytestmark = pytest.mark.benchmark

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))


def run_script(args, timeout=300):
    result = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                            check=False, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result.stdout


def test_allocator_peak_counts_live_tensors_at_their_maximum():
    import decode_benchmark

    def fn():
        a = torch.ones(2**21)  # 8 MiB
        b = torch.ones(2**20)  # 4 MiB: 12 MiB live
        del a, b
        c = torch.ones(2**21)  # 8 MiB, after the others are gone
        del c

    peak = decode_benchmark._allocator_peak_cpu(fn) / 2**20
    assert 12 <= peak < 12.1
    measured = decode_benchmark.measure_peak(fn, torch.device("cpu"))
    assert 12 <= measured["allocated_MiB"] < 12.1


def test_decode_benchmark_tiny_with_memory(tmp_path):
    out = tmp_path / "decode_cost"
    # dynamo's eager backend traces each decode (BRICS's as one graph) without inductor's minutes of code generation
    stdout = run_script([BENCHMARKS / "decode_benchmark.py", "--tiny", "--memory", "--compile", "--compile_backend",
                         "eager", "--repeats", "1", "--warmup", "0", "--results_dir", out, "--output", tmp_path / "plain.json"], timeout=600)
    assert "training step" in stdout and "BRICS feature retrieval" in stdout
    results = json.loads((out / "results.json").read_text())
    assert results["command"].startswith("python benchmarks/decode_benchmark.py --tiny --memory")
    setup = json.loads((tmp_path / "plain.json").read_text())["setup"]
    assert (setup["resolution"], setup["compile_backend"]) == (32, "eager") and "backend eager" in stdout
    names = ["BRICS (tiny)", "AutoencoderKL (tiny)", "VQModel (tiny)"]
    assert [r["model"] for r in results["models"]] == names + [name + ", compiled" for name in names]
    assert all(r["compile_s"] > 0 for r in results["models"][3:])
    best = results["best"]
    assert best["brics"] in names[0:1] + [names[0] + ", compiled"]
    assert best["gmac_ratio"] == pytest.approx(results["models"][0]["decode_GMACs"] / results["models"][1]["decode_GMACs"])
    assert results["goals"]["latency_ratio"]["goal"] == best["gmac_ratio"]
    memory = results["memory"]
    assert memory["device"] == "cpu" and memory["resolution"] == 32 and memory["batch_size"] == 1
    for row in memory["models"]:
        assert row["weights_MiB"] > 0
        for op in ("encode", "decode", "train_step"):
            assert row[op]["allocated_MiB"] > 0
        # a training step keeps activations for backward and allocates the gradients: more than a decode
        assert row["train_step"]["allocated_MiB"] > row["decode"]["allocated_MiB"]
        assert row["train_step"]["allocated_MiB"] > row["train_step_gradients_MiB"] > 0
    retrieval = memory["brics_retrieval"]
    assert retrieval["grid_tables_MiB"] > 0
    assert retrieval["training_forward_backward"]["allocated_MiB"] > retrieval["decode_forward"]["allocated_MiB"] > 0
    added = retrieval["decode_added"]["allocated_MiB"]
    assert added == pytest.approx(memory["models"][0]["decode"]["allocated_MiB"]
                                  - retrieval["synthesis_forward"]["allocated_MiB"])
    report = (out / "report.md").read_text()
    assert report.startswith("# Decode cost") and "## Peak memory" in report
    assert "| BRICS (tiny) |" in report and "| BRICS feature retrieval, batch 1 |" in report
    assert "| BRICS (tiny), compiled |" in report and "compile (s)" in report


@pytest.mark.parametrize("workload", ["decode", "train-step"])
def test_profile_brics_tiny(tmp_path, workload):
    import profile_brics

    results = profile_brics.main(["--workload", workload, "--tiny", "--repeats", "1", "--warmup", "0",
                                  "--profile_runs", "1", "--output", str(tmp_path)])
    parts = {"decode": {"grid look-up", "feature retrieval", "synthesis"},
             "train-step": {"encoder", "grid look-up", "feature retrieval", "synthesis", "EMA", "data loading"}}[workload]
    assert set(results["share_of_total"]) == parts
    assert all(0 < share for share in results["share_of_total"].values())
    assert results["operators"] and all(op["ms_per_run"] > 0 for op in results["operators"])
    report = (tmp_path / "report.md").read_text()
    assert report.startswith("# Profile: `tiny`") and "| grid look-up |" in report and "| operator |" in report
    if workload == "train-step":  # the parts a training run adds around the model
        assert "| EMA |" in report and "| data loading |" in report


def test_perturbations_stay_within_their_amplitude_and_share_draws():
    import relaxed_precision_benchmark as rp

    codes = torch.rand(3, 4, 8, 8)
    r_max = 32.0
    first = rp.perturbations(codes, r_max, [0.0, 0.5, 1.0], seed=7)
    again = rp.perturbations(codes, r_max, [0.0, 0.5, 1.0], seed=7)
    assert set(first) == {"uniform_0", "uniform_0.5", "uniform_1", "gaussian"}
    assert torch.equal(first["uniform_0"], codes)
    for name in first:
        assert torch.equal(first[name], again[name])
        assert first[name].min() >= 0 and first[name].max() <= 1
    for a in (0.5, 1.0):
        assert (first[f"uniform_{a:g}"] - codes).abs().max() <= a / (2 * r_max) + 1e-7
    # the same unit draws, scaled: away from the clipped ends the displacement doubles with the amplitude
    inside = (codes > 0.05) & (codes < 0.95)
    half, full = first["uniform_0.5"] - codes, first["uniform_1"] - codes
    torch.testing.assert_close(full[inside], 2 * half[inside], atol=1e-6, rtol=0)
    assert abs((first["gaussian"] - codes)[inside].std().item() - 1 / (4 * r_max)) < 0.1 / (4 * r_max)


def test_relaxed_precision_benchmark_tiny_end_to_end(tmp_path, lpips_weights_dir):
    out = tmp_path / "relaxed_precision"
    run_script([BENCHMARKS / "relaxed_precision_benchmark.py", "--tiny", "--threads", "1", "--output", out])
    results = json.loads((out / "results.json").read_text())
    assert [(r["name"], r["seed"]) for r in results["runs"]] == [("relaxed", 0), ("no_noise", 0), ("kl", 0)]
    assert [r["config"] for r in results["runs"]] == [
        {"relaxed_precision": True, "kl_key_codes": False}, {"relaxed_precision": False, "kl_key_codes": False},
        {"relaxed_precision": False, "kl_key_codes": True}]
    assert all(r["steps"] == 2 and r["train_threads"] == 1 for r in results["runs"])  # --threads 1: repeatable
    assert "--kl_weight 1e-06" in results["runs"][2]["command"]
    assert list(results["evaluations"]) == ["relaxed precision", "no relaxed precision", "KL, mean codes",
                                            "KL, sampled codes"]
    amplitudes = results["setup"]["amplitudes"]
    assert amplitudes == [0.0, 0.125, 0.25, 0.5, 1.0, 2.0] and results["setup"]["held_out_images"] == 32
    for entry in results["evaluations"].values():
        assert set(entry["deterministic"]) == {"psnr", "ssim", "lpips"}
        assert set(entry["perturbed"]) == {f"uniform_{a:g}" for a in amplitudes} | {"gaussian"}
        unperturbed = entry["perturbed"]["uniform_0"]["psnr"]
        assert unperturbed["mean"] == pytest.approx(entry["deterministic"]["psnr"]["mean"])
        assert unperturbed["delta"] == 0
    (train, _train_stats), (held_out, held_out_stats) = results["kl_sigma"].items()
    assert train.startswith("training") and held_out.startswith("held-out")
    assert held_out_stats["elements"] == 32 * 2 * 8 * 8 and held_out_stats["sigma_mean"] > 0
    report = (out / "report.md").read_text()
    assert report.splitlines()[2] == f"`{results['command']}`"
    assert results["command"].startswith("python benchmarks/relaxed_precision_benchmark.py --tiny")
    assert "Table 6 analogue" in report and "posterior sigma" in report
    assert (out / "psnr_vs_perturbation.png").stat().st_size > 0
    assert "| relaxed precision | 1 (0) |" in report and not list((out / "runs" / "kl-seed0").glob("checkpoint-*"))

    # a second seed of one variant in another invocation (given twice: run once); the seed-0 runs are cached
    stdout = run_script([BENCHMARKS / "relaxed_precision_benchmark.py", "--tiny", "--threads", "1", "--output", out,
                         "--models", "relaxed", "relaxed", "--seeds", "0,1"])
    assert "relaxed seed 0: cached" in stdout
    assert [line for line in stdout.splitlines() if line.startswith("$ ")] == [
        next(line for line in stdout.splitlines() if line.startswith("$ ") and "--seed 1 " in line)]
    results = json.loads((out / "results.json").read_text())
    seeds = results["over_seeds"]
    assert seeds["relaxed precision"]["seeds"] == [0, 1] and seeds["no relaxed precision"]["seeds"] == [0]
    psnr = seeds["relaxed precision"]["psnr"]
    assert psnr["n"] == 2 and psnr["std"] > 0 and psnr["min"] < psnr["mean"] < psnr["max"]
    assert results["evaluations"]["relaxed precision"]["deterministic"]["psnr"]["mean"] == pytest.approx(psnr["mean"])
    report = (out / "report.md").read_text()
    assert "| relaxed precision | 2 (0, 1) |" in report and "| no relaxed precision | 1 (0) |" in report


def test_grid_backend_benchmark_tiny_on_cpu(tmp_path, monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the CPU runs the Triton kernels under the interpreter
    out = tmp_path / "grid_backends"
    stdout = run_script([BENCHMARKS / "grid_backend_benchmark.py", "--device", "cpu", "--tiny", "--repeats", "1",
                         "--warmup", "1", "--results_dir", out])
    assert "256 queries" in stdout
    results = json.loads((out / "results.json").read_text())
    assert results["command"].startswith("python benchmarks/grid_backend_benchmark.py --device cpu --tiny")
    setup = results["setup"]
    assert setup["triton_interpreter"] and setup["grid"]["num_levels"] == 16 and setup["grid"]["indexing"] == "tiled"
    (row,) = results["results"]
    assert row["queries"] == 256
    assert all(row["ms"][backend][mode] > 0 for backend in ("torch", "triton") for mode in ("forward",
                                                                                           "forward_backward"))
    assert set(row["agreement"]) == {"forward", "grad_queries", "grad_table"}
    for agreement in row["agreement"].values():
        assert agreement["max_abs"] > 0 and agreement["max_abs_diff"] <= 1e-5 * agreement["max_abs"] + 1e-6
    report = (out / "report.md").read_text()
    assert report.startswith("# Feature-grid backends") and "| 256 |" in report


def test_gpu_train_steps_tiny_on_cpu(tmp_path):
    out = tmp_path / "train_steps.json"
    stdout = run_script([BENCHMARKS / "gpu_train_steps.py", "--device", "cpu", "--tiny", "--output", out])
    results = json.loads(out.read_text())
    assert results["command"].startswith("python benchmarks/gpu_train_steps.py --device cpu --tiny")
    assert results["setup"]["precision"] == "bf16"
    assert results["setup"]["compile"] == {"backend": "eager", "mode": "default", "fullgraph": True}
    rows = results["results"]
    assert [(row["model"], row["mode"]) for row in rows] == [  # both eager first
        ("BRICS tiny", "eager"), ("AutoencoderKL tiny", "eager"), ("BRICS tiny", "compiled"),
        ("AutoencoderKL tiny", "compiled")]
    for row in rows:
        assert "error" not in row, row
        assert row["batch_size"] == 2 and row["resolution"] == 32 and row["images_per_s"] > 0
        assert row["peak_memory_MiB"] is None  # CUDA only
        assert (row["compile_s"] is not None) == (row["mode"] == "compiled")
    for mode in ("eager", "compiled"):
        assert results["brics_over_autoencoderkl"][mode]["images_per_s"] > 0
    assert "| BRICS tiny | compiled |" in stdout


def test_compare_training_throughput_tiny(tmp_path):
    stdout = run_script([BENCHMARKS / "compare_training_throughput.py", "--tiny", "--output", tmp_path], timeout=600)
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["median_images_per_second"]) == {"brics, eager", "autoencoderkl, eager"}
    assert all(v > 0 for v in results["median_images_per_second"].values())
    assert results["ratio_at_best"] == pytest.approx(
        results["best_images_per_second"]["brics"] / results["best_images_per_second"]["autoencoderkl"])
    assert "--model_type autoencoderkl" in results["commands"]["autoencoderkl, eager"]
    assert "BRICS / AutoencoderKL" in stdout and (tmp_path / "report.md").exists()


def test_compare_grid_lookup_against_an_earlier_commit(tmp_path):
    import compare_grid_lookup

    results = compare_grid_lookup.main(["--against", "32269c7", "--cases", "small-32 training step, batch 32",
                                        "--rounds", "1", "--warmup", "0", "--output", str(tmp_path)])
    timing = results["median_ms"]["small-32 training step, batch 32"]
    assert timing["earlier"] > 0 and timing["this checkout"] > 0
    assert "| small-32 training step, batch 32 |" in (tmp_path / "report.md").read_text()


def test_text_to_image_benchmark_tiny(tmp_path, inception_weights_dir):
    out = tmp_path / "t2i"
    stdout = run_script([BENCHMARKS / "text_to_image_benchmark.py", "--tiny", "--ae_minutes", "0.2", "--minutes",
                         "0.2", "--max_eval_images", "12", "--grid_prompts", "2", "--grid_seeds", "2",
                         "--num_inference_steps", "2", "--output", out], timeout=600)
    assert "guidance 3: KID x1e3" in stdout
    results = json.loads((out / "results.json").read_text())
    assert set(results["guidance"]) == {"1", "3"} and results["held_out_captions"] == 12
    assert all(r["fake_images"] == 12 and r["seconds_per_image"] > 0 for r in results["guidance"].values())
    assert results["steps"] == 3 and (out / "prompt_grid.png").stat().st_size > 0
    assert "--caption_column caption" in results["training_command"]


def test_time_to_quality_tiny_both_stages_and_reuse(tmp_path, lpips_weights_dir, inception_weights_dir):
    out = tmp_path / "ttq"
    stdout = run_script([BENCHMARKS / "time_to_quality.py", "--tiny", "--stage", "autoencoder", "--threads", "1",
                         "--levels", "5,60", "--reference", "tiny-kl", "--output", out], timeout=600)
    results = json.loads((out / "results_autoencoder.json").read_text())
    assert set(results["runs"]) == {"tiny", "tiny-kl"}
    for name, run in results["runs"].items():
        assert [p["step"] for p in run["curve"]] == [2, 4], name
        seconds = [p["seconds"] for p in run["curve"]]
        assert 0 < seconds[0] < seconds[1] and all(0 < p["psnr"] < 60 for p in run["curve"])
        assert run["reach"]["60"] is None and run["reach"]["5"]["step"] == 2  # every model is above 5 dB at once
    assert results["runs"]["tiny-kl"]["ratio"]["5"] == pytest.approx(1.0)
    report = (out / "report_autoencoder.md").read_text()
    assert report.startswith("# Time to quality: autoencoder") and "| tiny |" in report and "not reached" in report
    assert (out / "autoencoder.png").stat().st_size > 0 and "| tiny-kl |" in stdout

    autoencoder = out / "runs" / "autoencoder" / "tiny"
    run_script([BENCHMARKS / "time_to_quality.py", "--tiny", "--stage", "diffusion", "--threads", "1",
                "--autoencoder", autoencoder, "--output", out], timeout=600)
    results = json.loads((out / "results_diffusion.json").read_text())
    assert set(results["runs"]) == {"tiny", "tiny-v"} and results["floor_kid"] < 1e3
    for name, run in results["runs"].items():
        assert [p["step"] for p in run["curve"]] == [2, 4] and all(p["kid"] > 0 for p in run["curve"]), name
        assert (out / "runs" / "diffusion" / name / "samples_4.png").is_file()
    scheduler = json.loads((out / "runs" / "diffusion" / "tiny-v" / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == "v_prediction" and scheduler["clip_sample"] is True
    # a second call trains nothing and samples nothing: every run and its KID are reused
    kid_files = {name: (out / "runs" / "diffusion" / name / "kid.json") for name in results["runs"]}
    before = {name: path.stat().st_mtime_ns for name, path in kid_files.items()}
    stdout = run_script([BENCHMARKS / "time_to_quality.py", "--tiny", "--stage", "diffusion", "--threads", "1",
                         "--autoencoder", autoencoder, "--output", out], timeout=600)
    assert stdout.count(": reusing ") == 2 and "\n$ " not in "\n" + stdout
    assert {name: path.stat().st_mtime_ns for name, path in kid_files.items()} == before


def test_seeded_runs_are_cached_collected_and_summarized_over_seeds(tmp_path):
    import seeded_runs

    assert seeded_runs.parse_seeds("2,0,2") == [2, 0]
    with pytest.raises(argparse.ArgumentTypeError, match="comma-separated seeds"):
        seeded_runs.parse_seeds("0,x")
    assert seeded_runs.chosen_models(["cvqvae,brics", "cvqvae"], ("brics", "cvqvae")) == ["cvqvae", "brics"]
    with pytest.raises(ValueError, match="--models: vq; choose among brics, cvqvae"):
        seeded_runs.chosen_models(["vq"], ("brics", "cvqvae"))
    for model, seed, psnr in (("brics", 1, 12.0), ("brics", 0, 10.0), ("cvqvae", 0, 9.0), ("real", 0, 0.0)):
        folder = seeded_runs.run_folder(tmp_path, model, seed)
        (folder / "checkpoint-100").mkdir(parents=True)
        seeded_runs.save_result(folder, {"setup": {"steps": 100, "args": ["--x"]}, "row": {"psnr": psnr}})
        assert not (folder / "checkpoint-100").exists() and not (folder / "result.json.tmp").exists()
    pending = [(m, s) for m, s, _ in seeded_runs.pending_runs(tmp_path, ["brics", "cvqvae"], [0, 1], "test")]
    assert pending == [("cvqvae", 1)]
    runs = seeded_runs.collect(tmp_path, ["cvqvae", "brics", "vqmodel"])
    assert list(runs) == ["cvqvae", "brics"] and list(runs["brics"]) == [0, 1]
    stat = seeded_runs.summarize({seed: r["row"] for seed, r in runs["brics"].items()}, ["psnr", "lpips"])["psnr"]
    assert stat == {"mean": 11.0, "std": pytest.approx(2**0.5), "min": 10.0, "max": 12.0, "n": 2}
    assert seeded_runs.show(stat, 2) == "11.00 ± 1.41" and seeded_runs.seeds_text(runs["brics"]) == "2 (0, 1)"
    assert seeded_runs.check_same(runs, ["steps", "args"]) == {"steps": 100, "args": ["--x"]}
    seeded_runs.save_result(seeded_runs.run_folder(tmp_path, "cvqvae", 1), {"setup": {"steps": 50}, "row": {}})
    with pytest.raises(ValueError, match=r'differ in their setup .*"steps": 50\}: cvqvae-seed1'):
        seeded_runs.check_same(seeded_runs.collect(tmp_path), ["steps"])
    assert seeded_runs.resume_flags(500)[1] == "100" and seeded_runs.resume_flags(2)[-2:] == [
        "--resume_from_checkpoint", "latest"]


def test_a_training_budget_passes_the_time_left_and_ends_the_invocation_when_spent(tmp_path, capsys):
    import seeded_runs

    unlimited = seeded_runs.TrainingBudget(None, "test")
    assert unlimited.flags() == [] and not unlimited.spent()
    budget = seeded_runs.TrainingBudget(1.0, "test")
    flag, seconds = budget.flags()
    assert flag == "--max_train_seconds" and 58 <= float(seconds) <= 60
    folder = seeded_runs.run_folder(tmp_path, "brics", 0)
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"step": 100}))
    assert not budget.stopped_short(folder, 100, "brics seed 0") and not budget.stopped
    assert budget.stopped_short(folder, 300, "brics seed 0") and budget.stopped
    assert "[test] brics seed 0: the training stopped at step 100 of 300" in capsys.readouterr().out
    budget = seeded_runs.TrainingBudget(1.0, "test")
    assert [m for m, _, _ in seeded_runs.pending_runs(tmp_path, ["brics", "cvqvae"], [0], "test", budget)] == [
        "brics", "cvqvae"] and not budget.stopped
    budget.deadline -= 61  # spent: the runs left are not started
    assert list(seeded_runs.pending_runs(tmp_path, ["brics", "cvqvae"], [0], "test", budget)) == [] and budget.stopped
    assert "--max_minutes spent: brics seed 0 and the runs after it are left" in capsys.readouterr().out
    for text in ("0", "-5", "soon"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected minutes > 0"):
            seeded_runs.positive_minutes(text)


STOPPABLE_RUN = """
import signal, sys, time
from pathlib import Path

log, received = Path(sys.argv[1]), []
for signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(signum, lambda signum, frame: received.append(signum))
log.write_text("ready")
while not received:
    time.sleep(0.01)
time.sleep(0.5)  # writing the checkpoint; any signal that comes meanwhile is counted
log.write_text(" ".join(signal.Signals(s).name for s in received))
sys.exit(128 + received[0])
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_benchmark_passes_the_signal_on_once_and_waits_for_the_checkpoint(tmp_path, signum):
    """SIGTERM to the benchmark, or Ctrl-C to its terminal's process group, reaches the training run once (its first
    signal: checkpoint and stop; a second would make it leave at once), and the benchmark waits for it to end."""
    (tmp_path / "run.py").write_text(STOPPABLE_RUN)
    log = tmp_path / "log.txt"
    benchmark = (f"import sys; sys.path.insert(0, {str(BENCHMARKS)!r}); import benchmark_runs; "
                 f"benchmark_runs.run_shown([sys.executable, {str(tmp_path / 'run.py')!r}, {str(log)!r}])")
    parent = subprocess.Popen([sys.executable, "-c", benchmark], start_new_session=True, stderr=subprocess.PIPE,
                              text=True)
    deadline = time.monotonic() + 60
    while not (log.exists() and log.read_text() == "ready"):
        assert time.monotonic() < deadline and parent.poll() is None, parent.stderr.read()
        time.sleep(0.02)
    if signum == signal.SIGINT:
        os.killpg(parent.pid, signum)  # as a terminal's Ctrl-C: to the benchmark's whole process group
    else:
        parent.send_signal(signum)
    assert parent.wait(timeout=30) == 128 + signum
    assert log.read_text() == signal.Signals(signum).name  # the run ended its checkpoint, having had one signal
    assert f"{signal.Signals(signum).name} passed on: the run stopped with status {128 + signum}" in parent.stderr.read()


def test_compare_autoencoders_grid_rate_after_the_double_dash_wins(tmp_path):
    import compare_autoencoders
    import compare_autoencoders_report

    from diffusers_brics.training.autoencoder_args import parse_args

    args = argparse.Namespace(batch_size=16, tiny=False)

    def grid_rate(extra):
        command = compare_autoencoders.train_command("brics", 0, tmp_path, "small-32", 10, args, extra)
        return parse_args(command[2:]).grid_learning_rate

    assert grid_rate(["--perceptual_weight", "0"]) == 1e-2  # the small-image recipe's rate
    assert grid_rate(["--grid_learning_rate", "3e-2"]) == 3e-2
    assert "--grid_learning_rate" not in compare_autoencoders.train_command("vqmodel", 0, tmp_path, "small-32", 10,
                                                                            args, [])
    assert compare_autoencoders_report.grid_learning_rate("--gan_weight 0") == "1e-2"
    assert compare_autoencoders_report.grid_learning_rate("--grid_learning_rate 3e-3 --grid_learning_rate 3e-2") == "3e-2"


def test_compare_budgets_puts_budgets_side_by_side_with_the_training_split(tmp_path, lpips_weights_dir):
    from diffusers import AutoencoderKL

    import seeded_runs
    from diffusers_brics import BRICSAutoencoder
    from diffusers_brics.models.model_types import PEER_PRESETS

    models = {
        "brics": BRICSAutoencoder.from_preset("tiny"),
        "autoencoderkl": AutoencoderKL(**PEER_PRESETS["autoencoderkl"]["tiny"]),
    }
    runs = [("short", "brics", 0, 2, 10.0), ("short", "brics", 1, 2, 12.0), ("short", "autoencoderkl", 0, 2, 9.0),
            ("long", "brics", 0, 4, 14.0), ("wide", "brics", 0, 2, 11.0)]  # fmt: skip
    for output, kind, seed, steps, psnr in runs:
        folder = seeded_runs.run_folder(tmp_path / output, kind, seed)
        models[kind].save_pretrained(folder / "autoencoder")
        # 30 s a step, the rate of the run's last invocation (the 4-step run was resumed at step 3)
        row = {"psnr": psnr, "lpips": 0.5, "steps": steps, "script_train_images_per_second": 8 / 30}
        seeded_runs.save_result(folder, {"setup": {"steps": steps, "batch_size": 8}, "row": row})
    script = BENCHMARKS / "compare_budgets.py"
    outputs = [str(tmp_path / "short"), str(tmp_path / "long"), f"wider decoder={tmp_path / 'wide'}"]
    run_script([script, "--outputs", *outputs, "--train_images", "16", "--output", tmp_path / "report"])
    entries = json.loads((tmp_path / "report" / "results.json").read_text())["entries"]
    assert [(e["model"], e["variant"], e["steps"], e["seeds"]) for e in entries] == [
        ("brics", "", 2, [0, 1]),
        ("brics", "", 4, [0]),
        ("brics", "wider decoder", 2, [0]),
        ("autoencoderkl", "", 2, [0]),
    ]
    first = entries[0]
    assert first["psnr"]["mean"] == 11.0 and first["psnr"]["n"] == 2 and first["train_seconds"]["mean"] == 60.0
    assert entries[1]["train_seconds"]["mean"] == pytest.approx(120.0)  # every step of the resumed run
    for row in first["runs"]:  # the same untrained model at both seeds: the same training-split figures
        assert (
            row["train_images"] == 16
            and 0 < row["train_psnr"] < 60
            and row["train_psnr"] == first["runs"][0]["train_psnr"]
        )
    assert first["gap"]["mean"] == pytest.approx(first["train_psnr"]["mean"] - 11.0)
    report = (tmp_path / "report" / "report.md").read_text()
    assert (
        "| BRICS (wider decoder) | 2 | 1 (0) | 11.00 |" in report
        and "| BRICS | 2 | 2 (0, 1) | 11.00 ± 1.41 |" in report
    )
    assert (tmp_path / "report" / "budgets.png").stat().st_size > 0

    cache = seeded_runs.run_folder(tmp_path / "short", "brics", 0) / "train_split.json"
    written = cache.stat().st_mtime_ns
    run_script([script, "--outputs", *outputs, "--train_images", "16", "--output", tmp_path / "report"])
    assert cache.stat().st_mtime_ns == written  # cached for the same number of images
    run_script([script, "--outputs", str(tmp_path / "short"), "--train_images", "8", "--output", tmp_path / "report"])
    assert json.loads(cache.read_text())["images"] == 8
    # a clone has the runs' records, training-split figures included, but not their models
    shown = json.loads((tmp_path / "report" / "results.json").read_text())["entries"]
    as_cloned(tmp_path / "short")
    assert sorted(path.name for path in cache.parent.iterdir()) == ["result.json", "train_split.json"]
    run_script([script, "--outputs", str(tmp_path / "short"), "--train_images", "8", "--output", tmp_path / "report"])
    assert json.loads((tmp_path / "report" / "results.json").read_text())["entries"] == shown
    other = subprocess.run([sys.executable, str(script), "--outputs", str(tmp_path / "short"), "--train_images", "16",
                            "--output", str(tmp_path / "report")], capture_output=True, text=True)  # fmt: skip
    assert other.returncode == 1 and "brics-seed0: no autoencoder in the run folder" in other.stderr
    bad = subprocess.run(
        [sys.executable, str(script), "--outputs", str(tmp_path / "none")], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "--outputs" in bad.stderr and "has no runs/ folder" in bad.stderr
