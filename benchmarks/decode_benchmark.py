"""Decode cost of BRICS against diffusers' AutoencoderKL and VQModel at 256x256, batch 1, on CPU.

Three untrained decoders are built side by side in one process:

* BRICS, preset ``paper-64x64x4``: key codes ``(1, 4, 64, 64)`` in ``[0, 1]`` -> feature retrieval from the
  multi-resolution grids (``m.retrieval``) -> StyleGAN2-style synthesis (``m.decoder``);
* ``AutoencoderKL`` in the Stable Diffusion layout: latents ``(1, 4, 32, 32)`` -> ``post_quant_conv`` -> decoder;
* ``VQModel`` in the VQGAN-f16 layout: latents ``(1, 256, 16, 16)`` -> quantisation -> ``post_quant_conv`` ->
  decoder (``VQModel.decode`` with its default ``force_not_quantize=False``).

For each it reports the parameters of the decode path, the decode GMACs counted by
``torch.utils.flop_counter.FlopCounterMode`` (MACs = FLOPs / 2; only matrix multiplications and convolutions
are counted, so grid look-ups, normalisations and the VQ nearest-neighbour search add no MACs), and the
median decode latency under ``torch.inference_mode()`` with its ratio to AutoencoderKL. Latencies are taken
after warm-up runs, with the timed runs interleaved round-robin across all models so that drift of the
machine affects them equally. BRICS retrieval and synthesis are also timed separately (interleaved in the
same loop) to give the share of BRICS decode time spent in feature retrieval. With ``--compile`` every one of these
calls is also timed under ``torch.compile`` (BRICS with ``fullgraph=True``), in the same interleaved loop, with its
compile time; the ratio "at their best" divides the faster of BRICS eager and compiled by the faster of AutoencoderKL
eager and compiled. Finally the goals
"BRICS decode latency / AutoencoderKL's <= their GMAC ratio" (each at its best) and "retrieval < 5% of BRICS decode"
are checked.

With ``--memory`` it also measures peak memory at batch 1 (paper supplementary C): for each model, ``encode``
(images -> latents), ``decode`` and one training step (forward + backward of an L1 reconstruction loss, in training
mode: BRICS with its relaxed-precision and decoder noise, AutoencoderKL sampling its posterior), and for BRICS the
feature retrieval alone (decode: forward; training: forward + backward, gradients into the key codes and the grid
tables), the synthesis alone, and so what retrieval adds to the peak of a decode. Each figure is the peak of memory
*allocated during the operation on top of what was live before it* (the model's weights and inputs are not
counted, gradients and activations are; the static sizes of the weights are reported beside it). Measurements
run in a separate worker process, one operation after another, each after an untimed warm-up run:

* ``allocated`` (the main figure): PyTorch's own allocator accounting. On CUDA that is
  ``torch.cuda.max_memory_allocated()`` after ``torch.cuda.reset_peak_memory_stats()``, minus
  ``torch.cuda.memory_allocated()`` before. On the CPU the same quantity is replayed from
  ``torch.profiler.profile(profile_memory=True)``: the profiler records every allocation and release of the CPU
  allocator with its size and time, and their running sum's maximum is the peak. It counts tensors (activations,
  gradients, temporaries, autograd's saved tensors) exactly, independent of the C library's heap, and leaves out
  memory that libraries take past PyTorch's allocator (e.g. oneDNN's private buffers) and the interpreter's own.
  ``tracemalloc`` would see none of the tensors, so it is not used.
* ``rss`` (CPU only, a cross-check): the growth of the worker's resident set over the operation, from Linux's
  peak-RSS counter (``VmHWM`` in ``/proc/self/status``, reset before each operation by writing 5 to
  ``/proc/self/clear_refs``) minus the resident size just before. The worker runs with ``MALLOC_MMAP_THRESHOLD_``
  fixed at 128 KiB, so that glibc serves every large tensor from its own mapping and returns it on release:
  otherwise freed heap memory would be reused unseen by the next operation. It includes everything the process
  touches (oneDNN buffers, page rounding), and reads null where the counter cannot be reset (not Linux).

Run from the repository root::

    python benchmarks/decode_benchmark.py                # plain-text table
    python benchmarks/decode_benchmark.py --markdown     # Markdown table for a README
    python benchmarks/decode_benchmark.py --repeats 11 --warmup 3 --output decode.json
    python benchmarks/decode_benchmark.py --memory --results_dir benchmarks/results/decode_cost
    python benchmarks/decode_benchmark.py --memory --device cuda   # GPU figures (latency synchronised)
    python benchmarks/decode_benchmark.py --compile --markdown   # eager and torch.compile, side by side
    python benchmarks/decode_benchmark.py --tiny --memory --repeats 1 --warmup 0   # 32x32 models, seconds
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import diffusers
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, VQModel
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from diffusers_brics import BRICSAutoencoder

try:
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover - tqdm ships with huggingface_hub
    tqdm = None

RETRIEVAL_GOAL = 0.05  # retrieval time / BRICS decode time
REFERENCE = "AutoencoderKL"
MODEL_NAMES = ("BRICS (paper-64x64x4)", REFERENCE, "VQModel (VQGAN-f16)")
TINY_NAMES = ("BRICS (tiny)", "AutoencoderKL (tiny)", "VQModel (tiny)")
MIB = 2**20
PAPER_RETRIEVAL_TRAINING_MB = (91.20, 2.8)  # paper section 4: retrieval, training incl. backward, batch 1
MALLOC_MMAP_THRESHOLD = 128 * 1024  # bytes; glibc's default start, fixed (see the module docstring)


def build_autoencoders(tiny: bool = False, device: str = "cpu") -> dict[str, Any]:
    """The three untrained autoencoders (eval mode, seed 0) and fixed random latents for their decoders: the
    256x256 configurations of the module docstring, or with ``tiny`` 32x32 stand-ins for tests."""
    torch.manual_seed(0)
    if tiny:
        brics = BRICSAutoencoder.from_preset("tiny")
        kl = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                           up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, layers_per_block=1,
                           norm_num_groups=4, sample_size=32)
        vq = VQModel(block_out_channels=(8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 3,
                     up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=8, num_vq_embeddings=32,
                     vq_embed_dim=8, layers_per_block=1, norm_num_groups=4, sample_size=32)
        resolution, kl_latent, vq_latent = 32, (4, 16, 16), (8, 8, 8)
    else:
        brics = BRICSAutoencoder.from_preset("paper-64x64x4")
        kl = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2, sample_size=256,
        )
        vq = VQModel(
            block_out_channels=(128, 128, 256, 256, 512), down_block_types=("DownEncoderBlock2D",) * 5,
            up_block_types=("UpDecoderBlock2D",) * 5, latent_channels=256, num_vq_embeddings=1024, vq_embed_dim=256,
            layers_per_block=2, sample_size=256,
        )
        resolution, kl_latent, vq_latent = 256, (4, 32, 32), (256, 16, 16)
    brics, kl, vq = (m.to(device).eval() for m in (brics, kl, vq))
    return dict(
        brics=brics, kl=kl, vq=vq, resolution=resolution, names=TINY_NAMES if tiny else MODEL_NAMES,
        z_brics=torch.rand(1, *brics.latent_shape).to(device), z_kl=torch.randn(1, *kl_latent).to(device),
        z_vq=torch.randn(1, *vq_latent).to(device),
    )


def build_models(tiny: bool = False, device: str = "cpu") -> dict[str, tuple[list[nn.Module], Callable[[], Any]]]:
    """Per model: the modules on its decode path and a zero-argument decode call on a fixed random input."""
    a = build_autoencoders(tiny, device)
    brics, kl, vq, z_brics, z_kl, z_vq = a["brics"], a["kl"], a["vq"], a["z_brics"], a["z_kl"], a["z_vq"]
    brics_name, kl_name, vq_name = a["names"]
    with torch.inference_mode():
        features, style = brics.retrieval(z_brics)
    return {
        brics_name: ([brics.retrieval, brics.decoder], lambda: brics.decode(z_brics).sample),
        kl_name: ([kl.post_quant_conv, kl.decoder], lambda: kl.decode(z_kl).sample),
        vq_name: ([vq.quantize, vq.post_quant_conv, vq.decoder], lambda: vq.decode(z_vq).sample),
        # Timed only, for the retrieval share of BRICS decode.
        "BRICS retrieval": ([brics.retrieval], lambda: brics.retrieval(z_brics)),
        "BRICS synthesis": ([brics.decoder], lambda: brics.decoder(features, style)),
    }


def count_params(modules: Iterable[nn.Module]) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def count_gmacs(fn: Callable[[], Any]) -> float:
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        fn()
    return counter.get_total_flops() / 2 / 1e9


def time_interleaved(fns: dict[Any, Callable[[], Any]], warmup: int, repeats: int,
                     sync: Callable[[], None] = lambda: None, inference: bool = True,
                     desc: str = "decoding") -> dict[Any, list[float]]:
    """Seconds per call: ``warmup`` untimed then ``repeats`` timed rounds, each round calling every function once, so
    that drift of the machine affects them alike (``sync`` waits for the device before each clock reading; with
    ``inference`` the calls run in inference mode)."""
    times: dict[Any, list[float]] = {name: [] for name in fns}
    rounds = warmup + repeats
    bar = tqdm(total=rounds * len(fns), desc=desc, unit="run") if tqdm else None
    with torch.inference_mode(inference):
        for r in range(rounds):
            if bar is None:
                print(f"{'warm-up' if r < warmup else 'timed'} round {r + 1}/{rounds}", flush=True)
            for name, fn in fns.items():
                sync()
                start = time.perf_counter()
                fn()
                sync()
                elapsed = time.perf_counter() - start
                if r >= warmup:
                    times[name].append(elapsed)
                if bar is not None:
                    bar.set_postfix_str(name, refresh=False)
                    bar.update()
    if bar is not None:
        bar.close()
    return times


COMPILED = ", compiled"


def compile_models(models: dict[str, tuple[list[nn.Module], Callable[[], Any]]], sync: Callable[[], None],
                   backend: str = "inductor") -> tuple[dict[str, Callable[[], Any]], dict[str, float]]:
    """``torch.compile`` of every decode call with ``backend`` (BRICS's with ``fullgraph=True``: it must compile
    without a graph break), and the seconds each took to compile (its first call)."""
    compiled, compile_s = {}, {}
    for name, (_, fn) in models.items():
        call = torch.compile(fn, fullgraph=name.startswith("BRICS"), backend=backend)
        sync()
        start = time.perf_counter()
        with torch.inference_mode():
            call()
        sync()
        compiled[name + COMPILED], compile_s[name + COMPILED] = call, time.perf_counter() - start
    return compiled, compile_s


def run(warmup: int, repeats: int, tiny: bool = False, device: str = "cpu", compile_: bool = False,
        compile_backend: str = "inductor") -> dict[str, Any]:
    models = build_models(tiny, device)
    reference = list(models)[1]
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    calls = {name: fn for name, (_, fn) in models.items()}
    compile_s: dict[str, float] = {}
    if compile_:
        compiled, compile_s = compile_models(models, sync, compile_backend)
        calls.update(compiled)
    times = time_interleaved(calls, warmup, repeats, sync)
    medians = {name: statistics.median(t) for name, t in times.items()}
    rows = [
        dict(
            model=name,
            decode_params_M=count_params(modules) / 1e6,
            decode_GMACs=count_gmacs(fn),
            median_latency_s=medians[name],
            ratio_vs_AutoencoderKL=medians[name] / medians[reference],
            latencies_s=times[name],
        )
        for name, (modules, fn) in list(models.items())[:3]
    ]
    rows += [
        dict(row, model=row["model"] + COMPILED, median_latency_s=medians[row["model"] + COMPILED],
             ratio_vs_AutoencoderKL=medians[row["model"] + COMPILED] / medians[reference],
             latencies_s=times[row["model"] + COMPILED], compile_s=compile_s[row["model"] + COMPILED])
        for row in list(rows) if row["model"] + COMPILED in medians
    ]

    def best(name: str) -> str:
        return min((n for n in (name, name + COMPILED) if n in medians), key=medians.get)

    brics_name = list(models)[0]
    best_brics, best_kl = best(brics_name), best(reference)
    ratio = medians[best_brics] / medians[best_kl]
    gmac_ratio = rows[0]["decode_GMACs"] / rows[1]["decode_GMACs"]
    retrieval, synthesis = (medians[best(name)] for name in ("BRICS retrieval", "BRICS synthesis"))
    share = retrieval / (retrieval + synthesis)
    return dict(
        setup=dict(
            resolution=32 if tiny else 256, batch_size=1, device=device, tiny=tiny,
            compile_backend=compile_backend if compile_ else None, threads=torch.get_num_threads(), warmup=warmup,
            repeats=repeats, torch=torch.__version__, diffusers=diffusers.__version__,
            python=platform.python_version(), machine=platform.processor() or platform.machine(),
        ),
        models=rows,
        brics_split=dict(
            retrieval_median_s=retrieval, synthesis_median_s=synthesis, retrieval_share=share,
            retrieval_latencies_s=times["BRICS retrieval"], synthesis_latencies_s=times["BRICS synthesis"],
        ),
        best=dict(brics=best_brics, autoencoder_kl=best_kl, latency_ratio=ratio, gmac_ratio=gmac_ratio),
        goals=dict(
            latency_ratio=dict(goal=gmac_ratio, value=ratio, passed=ratio <= gmac_ratio),
            retrieval_share=dict(goal=RETRIEVAL_GOAL, value=share, passed=share < RETRIEVAL_GOAL),
        ),
    )


# ---------------------------------------------------------------------------------------------- peak memory


def _proc_status_kib(key: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``), or None where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (``VmHWM``) to the current resident size; False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _proc_status_kib("VmHWM") is not None


def _allocator_peak_cpu(fn: Callable[[], Any]) -> int:
    """Peak bytes held by PyTorch's CPU allocator during ``fn()`` over what it held before: the maximum of the
    running sum of the allocations and releases the profiler records (``[memory]`` events, signed sizes)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and str(e.device_type()).endswith("CPU")]
    total = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        total += event.nbytes()
        peak = max(peak, total)
    return peak


def measure_peak(fn: Callable[[], Any], device: torch.device, prepare: Callable[[], None] = lambda: None
                 ) -> dict[str, float | None]:
    """Peak memory of ``fn()`` over what was live before it, in MiB, after one untimed warm-up run; ``prepare()``
    runs before every call (e.g. to release the gradients of the previous one). See the module docstring."""
    prepare()
    fn()  # warm-up: one-time initialisations and caches are not the operation's memory
    prepare()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return {"allocated_MiB": (torch.cuda.max_memory_allocated(device) - before) / MIB, "rss_MiB": None}
    allocated = _allocator_peak_cpu(fn) / MIB
    prepare()
    gc.collect()
    rss = None
    if _reset_peak_rss():
        before = _proc_status_kib("VmRSS")
        fn()
        rss = (_proc_status_kib("VmHWM") - before) / 1024
    return {"allocated_MiB": allocated, "rss_MiB": rss}


def tensor_mib(modules: Iterable[nn.Module], buffers: bool = True) -> float:
    """Size of the parameters (and buffers) of ``modules``, in MiB."""
    tensors = [t for m in modules for t in [*m.parameters(), *(m.buffers() if buffers else ())]]
    return sum(t.numel() * t.element_size() for t in tensors) / MIB


def gradient_mib(module: nn.Module) -> float:
    """Size of the gradients ``module``'s parameters hold now, in MiB."""
    return sum(p.grad.numel() * p.grad.element_size() for p in module.parameters() if p.grad is not None) / MIB


def memory_worker(tiny: bool, device: str) -> dict[str, Any]:
    """All peak-memory figures of one run (called in the worker process)."""
    dev = torch.device(device)
    a = build_autoencoders(tiny, device)
    brics, kl, vq = a["brics"], a["kl"], a["vq"]
    generator = torch.Generator().manual_seed(0)
    images = (torch.rand(1, 3, a["resolution"], a["resolution"], generator=generator) * 2 - 1).to(dev)
    z_brics = a["z_brics"]
    with torch.inference_mode():
        features, style = brics.retrieval(z_brics)
    features, style = features.clone(), None if style is None else style.clone()  # plain tensors, not inference ones

    def inference(fn):
        def call():
            with torch.inference_mode():
                fn()
        return call

    def training_step(model, forward):
        def call():
            model.train()
            try:
                F.l1_loss(forward(), images).backward()
            finally:
                model.eval()
        return call

    def release_grads(model):
        def call():
            model.zero_grad(set_to_none=True)
        return call

    per_model = {
        a["names"][0]: (brics, [brics.retrieval, brics.decoder], dict(
            encode=inference(lambda: brics.encode(images).latents),
            decode=inference(lambda: brics.decode(z_brics).sample),
            train_step=training_step(brics, lambda: brics(images, generator=generator).sample))),
        a["names"][1]: (kl, [kl.post_quant_conv, kl.decoder], dict(
            encode=inference(lambda: kl.encode(images).latent_dist.mode()),
            decode=inference(lambda: kl.decode(a["z_kl"]).sample),
            train_step=training_step(kl, lambda: kl(images, sample_posterior=True, generator=generator).sample))),
        a["names"][2]: (vq, [vq.quantize, vq.post_quant_conv, vq.decoder], dict(
            encode=inference(lambda: vq.encode(images).latents),
            decode=inference(lambda: vq.decode(a["z_vq"]).sample),
            train_step=training_step(vq, lambda: vq(images).sample))),
    }
    rows = []
    for name, (model, decode_path, ops) in per_model.items():
        row = dict(model=name, weights_MiB=tensor_mib([model]), decode_path_weights_MiB=tensor_mib(decode_path))
        for op, fn in ops.items():
            print(f"memory: {name}, {op}", file=sys.stderr, flush=True)
            row[op] = measure_peak(fn, dev, release_grads(model))
        row["train_step_gradients_MiB"] = gradient_mib(model)  # what the last training step left allocated
        model.zero_grad(set_to_none=True)
        rows.append(row)

    retrieval = brics.retrieval
    codes = z_brics.clone().requires_grad_(True)

    def retrieval_training():
        retrieval.train()
        try:
            f, s = retrieval(codes, generator)
            (f.square().mean() + (0 if s is None else s.square().mean())).backward()
        finally:
            retrieval.eval()

    def release_retrieval_grads():
        retrieval.zero_grad(set_to_none=True)
        codes.grad = None

    print("memory: BRICS retrieval and synthesis", file=sys.stderr, flush=True)
    decode_forward = measure_peak(inference(lambda: retrieval(z_brics)), dev)
    synthesis = measure_peak(inference(lambda: brics.decoder(features, style)), dev)
    training = measure_peak(retrieval_training, dev, release_retrieval_grads)
    gradients = gradient_mib(retrieval)
    release_retrieval_grads()
    decode = rows[0]["decode"]
    grids = list(retrieval.grids)
    return dict(
        method=dict(
            allocated=("torch.cuda.max_memory_allocated() - memory_allocated() before" if dev.type == "cuda" else
                       "torch.profiler (profile_memory=True): peak of the running sum of CPU allocator events"),
            rss=None if dev.type == "cuda" else (
                "VmHWM after reset (clear_refs 5) - VmRSS before, MALLOC_MMAP_THRESHOLD_="
                + os.environ.get("MALLOC_MMAP_THRESHOLD_", "unset")),
            warmup_runs=1,
        ),
        device=device, batch_size=1, resolution=a["resolution"], threads=torch.get_num_threads(),
        models=rows,
        brics_retrieval=dict(
            grid_tables_MiB=tensor_mib(grids), other_weights_MiB=tensor_mib([retrieval]) - tensor_mib(grids),
            decode_forward=decode_forward,
            synthesis_forward=synthesis,
            decode_added={key: (None if decode[key] is None or synthesis[key] is None
                                else decode[key] - synthesis[key]) for key in ("allocated_MiB", "rss_MiB")},
            training_forward_backward=training,
            training_gradients_MiB=gradients,
            training_without_gradients_MiB=training["allocated_MiB"] - gradients,
            paper_training_MB=PAPER_RETRIEVAL_TRAINING_MB,
        ),
    )


def run_memory(tiny: bool, device: str) -> dict[str, Any]:
    """`memory_worker` in a fresh process with glibc's large-allocation threshold fixed; its result."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MALLOC_MMAP_THRESHOLD),
           "MALLOC_TRIM_THRESHOLD_": str(MALLOC_MMAP_THRESHOLD)}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "memory.json"
        command = [sys.executable, os.path.abspath(__file__), "--memory_worker", str(path), "--device", device]
        worker = subprocess.Popen(command + (["--tiny"] if tiny else []), env=env, stderr=subprocess.PIPE, text=True)
        for line in worker.stderr:  # progress, without the profiler's start/stop lines
            if not line.startswith("USDT:"):
                print(line, end="", file=sys.stderr, flush=True)
        if worker.wait():
            raise RuntimeError(f"the memory worker failed (exit status {worker.returncode}): {shlex.join(command)}")
        return json.loads(path.read_text())


def _mib(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _peak(entry: dict) -> str:
    if entry["rss_MiB"] is None:
        return _mib(entry["allocated_MiB"])
    return f"{_mib(entry['allocated_MiB'])} ({_mib(entry['rss_MiB'])})"


def format_memory(memory: dict[str, Any], markdown: bool) -> str:
    """The peak-memory tables (Markdown or plain text)."""
    cpu = memory["device"] == "cpu"
    unit = "peak MiB: allocated (RSS growth)" if cpu else "peak MiB allocated"
    header = ["model", "weights (MiB)", f"encode, {unit}", f"decode, {unit}", f"training step, {unit}",
              "... of it gradients (MiB)"]
    rows = [[r["model"], f"{r['weights_MiB']:.1f}", _peak(r["encode"]), _peak(r["decode"]), _peak(r["train_step"]),
             f"{r['train_step_gradients_MiB']:.1f}"] for r in memory["models"]]
    b = memory["brics_retrieval"]
    paper = b["paper_training_MB"]
    retrieval_header = ["BRICS feature retrieval, batch 1", "allocated (MiB)", "RSS growth (MiB)"]
    retrieval_rows = [
        ["weights: grid tables / MLPs and style networks",
         f"{b['grid_tables_MiB']:.1f} / {b['other_weights_MiB']:.1f}", ""],
        ["decode: retrieval forward alone, peak", _mib(b["decode_forward"]["allocated_MiB"]),
         _mib(b["decode_forward"]["rss_MiB"])],
        ["decode: synthesis alone (given the feature block), peak", _mib(b["synthesis_forward"]["allocated_MiB"]),
         _mib(b["synthesis_forward"]["rss_MiB"])],
        ["decode: what retrieval adds to the decode peak (decode - synthesis)",
         _mib(b["decode_added"]["allocated_MiB"]), _mib(b["decode_added"]["rss_MiB"])],
        ["training: retrieval forward + backward, peak", _mib(b["training_forward_backward"]["allocated_MiB"]),
         _mib(b["training_forward_backward"]["rss_MiB"])],
        ["... of it the parameter gradients (grid tables, MLPs, style networks)", _mib(b["training_gradients_MiB"]),
         ""],
        ["... the rest: activations kept for backward and temporaries", _mib(b["training_without_gradients_MiB"]),
         ""],
        ["paper (section 4): retrieval in training, batch 1, incl. backward", f"{paper[0]:.2f} +- {paper[1]} MB",
         ""],
    ]
    if not cpu:
        retrieval_header, retrieval_rows = retrieval_header[:2], [r[:2] for r in retrieval_rows]
    note = (f"Batch 1 at {memory['resolution']}x{memory['resolution']} on {memory['device']}; peak memory during "
            "each operation over what was live before it (weights and inputs excluded, gradients and activations "
            f"included), after one warm-up run. Allocated: {memory['method']['allocated']}."
            + (f" RSS growth: {memory['method']['rss']}." if memory["method"]["rss"] else ""))
    reference = memory["models"][1]
    ratio_line = "Allocated peak relative to {}: ".format(reference["model"]) + "; ".join(
        f"{r['model']}: " + ", ".join(
            f"{op.replace('_', ' ')} {r[op]['allocated_MiB'] / reference[op]['allocated_MiB']:.2f}x"
            for op in ("encode", "decode", "train_step"))
        for r in (memory["models"][0], memory["models"][2]))
    training_mb = b["training_forward_backward"]["allocated_MiB"] * MIB / 1e6
    claim = (f"Retrieval in a training step (forward + backward, batch 1): {training_mb:.1f} MB allocated at its peak "
             f"({b['training_forward_backward']['allocated_MiB']:.1f} MiB), against the paper's "
             f"{paper[0]:.2f} +- {paper[1]} MB and its bound of 100 MB (supplementary C): "
             + ("within" if training_mb < 100 else "above") + " the bound.")
    tables = []
    for head, body in ((header, rows), (retrieval_header, retrieval_rows)):
        if markdown:
            lines = ["| " + " | ".join(head) + " |", "|" + "|".join([":---"] + ["---:"] * (len(head) - 1)) + "|"]
            lines += ["| " + " | ".join(row) + " |" for row in body]
        else:
            widths = [max(len(str(x)) for x in column) for column in zip(head, *body)]
            text = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                    for row in [head, *body]]
            lines = [text[0], "-" * len(text[0]), *text[1:]]
        tables.append("\n".join(lines))
    return "\n\n".join([note, tables[0], ratio_line, tables[1], claim])


def format_report(results: dict[str, Any], markdown: bool) -> str:
    header = ["model", "decode params (M)", "decode GMACs", "median latency (s)", "ratio vs AutoencoderKL"]
    compiled = any("compile_s" in r for r in results["models"])
    rows = [
        [r["model"], f"{r['decode_params_M']:.2f}", f"{r['decode_GMACs']:.2f}", f"{r['median_latency_s']:.3f}",
         f"{r['ratio_vs_AutoencoderKL']:.2f}x"] + ([f"{r['compile_s']:.1f}" if "compile_s" in r else "-"]
                                                   if compiled else [])
        for r in results["models"]
    ]
    header += ["compile (s)"] if compiled else []
    split, goals, setup = results["brics_split"], results["goals"], results["setup"]
    verdict = {name: "PASS" if g["passed"] else "FAIL" for name, g in goals.items()}
    share_line = (
        f"BRICS retrieval share: {split['retrieval_share']:.1%} (retrieval {split['retrieval_median_s']:.3f} s, "
        f"synthesis {split['synthesis_median_s']:.3f} s, medians)"
    )
    best = results["best"]
    goal_line = (
        f"Goals, each model at its best ({best['brics']}; {best['autoencoder_kl']}): BRICS decode latency <= "
        f"{goals['latency_ratio']['goal']:.3f}x AutoencoderKL's (their GMAC ratio): {verdict['latency_ratio']} "
        f"({goals['latency_ratio']['value']:.3f}x); retrieval < {RETRIEVAL_GOAL:.0%} of BRICS decode: "
        f"{verdict['retrieval_share']} ({goals['retrieval_share']['value']:.1%})"
    )
    where = "CPU" if setup.get("device", "cpu") == "cpu" else setup["device"]
    setup_line = (
        f"{setup['resolution']}x{setup['resolution']}, batch 1, {where} ({setup['threads']} threads), median of "
        f"{setup['repeats']} interleaved runs after "
        f"{setup['warmup']} warm-up; torch {setup['torch']}, diffusers {setup['diffusers']}"
        + (f"; torch.compile backend {setup['compile_backend']}" if setup.get("compile_backend") else "")
    )
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines + ["", setup_line + ".", "", share_line + ".", "", goal_line + "."])
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]

    def fmt(row: list[str]) -> str:
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))

    rule = "-" * len(fmt(header))
    return "\n".join([setup_line, "", fmt(header), rule, *map(fmt, rows), rule, share_line, goal_line])


def write_results(results: dict[str, Any], folder: Path, command: str) -> None:
    """``results.json`` and ``report.md`` (the command at the top, the tables in Markdown) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps({"command": command, **results}, indent=2))
    parts = ["# Decode cost: BRICS against AutoencoderKL and VQModel", "", f"`{command}`", "",
             "## Decode latency and MACs", "", format_report(results, markdown=True)]
    parts += ["", "![latency and GMACs](cost.png)"]
    if "memory" in results:
        parts += ["", "## Peak memory", "", format_memory(results["memory"], markdown=True)]
    (folder / "report.md").write_text("\n".join(parts) + "\n")
    plot_cost(results, folder / "cost.png")


def plot_cost(results: dict[str, Any], path: Path) -> None:
    """Bars per model: decode GMACs, decode latency and (with ``--memory``) peak allocated memory of encode, decode
    and a training step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = results["models"]
    memory = results.get("memory", {}).get("models", [])
    panels = [("decode GMACs", [m["decode_GMACs"] for m in models], [m["model"] for m in models]),
              ("decode latency (s)", [m["median_latency_s"] for m in models], [m["model"] for m in models])]
    for phase in ("encode", "decode", "train_step"):
        if memory:
            panels.append((f"{phase.replace('_', ' ')}: peak MiB", [m[phase]["allocated_MiB"] for m in memory],
                           [m["model"] for m in memory]))
    fig, axes = plt.subplots(1, len(panels), figsize=(2.8 * len(panels), 3.2))
    for ax, (title, values, names) in zip(axes, panels):
        ax.bar([n.split(" (")[0] for n in names], values, color=["tab:blue", "tab:orange", "tab:green"][: len(values)])
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", labelsize=7, rotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per model (default 7)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed warm-up runs per model (default 2)")
    parser.add_argument("--output", help="also write the results as JSON to this path")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table instead of plain text")
    parser.add_argument("--memory", action="store_true",
                        help="also measure peak memory of encode, decode, a training step and BRICS retrieval "
                             "(minutes at 256x256 on a CPU)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    parser.add_argument("--tiny", action="store_true", help="32x32 stand-ins of the three models, for tests")
    parser.add_argument("--compile", action="store_true",
                        help="also time every decode under torch.compile (minutes of compilation on a CPU)")
    parser.add_argument("--compile_backend", default="inductor",
                        help="the torch.compile backend of --compile (default inductor; eager only traces: seconds, "
                             "for tests)")
    parser.add_argument("--results_dir", help="write results.json and report.md (Markdown tables) into this folder")
    parser.add_argument("--memory_worker", metavar="PATH", help=argparse.SUPPRESS)  # internal: see run_memory
    args = parser.parse_args()
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    if args.memory_worker:
        Path(args.memory_worker).write_text(json.dumps(memory_worker(args.tiny, args.device)))
        return
    results = run(args.warmup, args.repeats, args.tiny, args.device, args.compile, args.compile_backend)
    if args.memory:
        results["memory"] = run_memory(args.tiny, args.device)
    print(format_report(results, args.markdown))
    if args.memory:
        print()
        print(format_memory(results["memory"], args.markdown))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=2)
    if args.results_dir:
        root = Path(__file__).resolve().parents[1]
        script = os.path.relpath(os.path.abspath(sys.argv[0]), root)
        write_results(results, Path(args.results_dir), shlex.join(["python", script, *sys.argv[1:]]))


if __name__ == "__main__":
    main()
