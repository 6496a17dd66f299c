"""Evaluation of autoencoders and generators on a dataset split, as JSON and images: reconstruction metrics, FID / KID
of samples, nearest training images. The command line, and what each command measures and writes, is `brics
evaluate` (`evaluate_args`)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from diffusers.utils import make_image_grid
from PIL import Image
from tqdm.auto import tqdm

from .evaluate_args import build_parser, check_inputs
from .metrics import lpips
from .metrics.inception import InceptionFeatures
from .models import adapters
from .pipelines.key_codes import sample_size_of, to_pil
from .pipelines.loading import load_pipeline
from .training.autoencoder_evaluation import evaluation_loader, reconstruction_metrics

# ---------------------------------------------------------------------------------------------------------------
# Data


def load_split(split: str, resolution: int, dataset_name: str | None = None, dataset_config_name: str | None = None,
               train_data_dir: str | None = None, validation_fraction: float = 0.05, seed: int = 0,
               cache_dir: str | None = None) -> tuple[object, str]:
    """``(dataset, image column)`` of ``split`` (``"held-out"`` or ``"train"``), split as the training scripts do."""
    from .training.data import image_column_of, load_image_datasets, undecoded

    if split not in ("held-out", "train"):
        raise ValueError(f"split must be 'held-out' or 'train', got {split!r}")
    train, held_out = load_image_datasets(dataset_name, dataset_config_name, train_data_dir, resolution, cache_dir,
                                          validation_fraction, seed)
    column = image_column_of(train, None)
    dataset = held_out if split == "held-out" else train
    return undecoded(dataset, column), column


def image_batches(dataset, column: str, resolution: int, batch_size: int, max_images: int | None = None,
                  desc: str = "images") -> Iterator[torch.Tensor]:
    """Centre-cropped images ``(B, 3, R, R)`` in ``[-1, 1]``, ``max_images`` at most, with a progress bar."""
    loader = evaluation_loader(dataset, column, resolution, batch_size, max_images)
    for batch in tqdm(loader, desc=desc, unit="batch"):
        yield batch["images"]


# ---------------------------------------------------------------------------------------------------------------
# FID and KID


class _Passthrough(torch.nn.Module):
    """The feature extractor handed to torchmetrics: features are computed once by `InceptionFeatures` and fed to
    both FID and KID, so the network runs once per image."""

    num_features = 2048

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


class InceptionDistances:
    """FID and KID (torchmetrics) between a "real" and a "fake" image set, fed in batches of images in ``[0, 1]``.

    Args:
        inception: the feature network (built with the default weights when omitted).
        kid_subset_size: KID's subset size (capped at the smaller set's size when computed).
    """

    def __init__(self, inception: InceptionFeatures | None = None, kid_subset_size: int = 1000) -> None:
        self.inception = inception if inception is not None else InceptionFeatures()
        self.kid_subset_size = kid_subset_size
        self.features: dict[bool, list[torch.Tensor]] = {True: [], False: []}

    @torch.no_grad()
    def update(self, images: torch.Tensor, real: bool) -> None:
        """Add images ``(B, 3, H, W)`` in ``[0, 1]`` (on any device) to the real or the fake set."""
        parameter = next(self.inception.parameters(), None)  # the network's device
        images = images if parameter is None else images.to(parameter.device)
        self.features[real].append(self.inception(images).double().cpu())

    def counts(self) -> tuple[int, int]:
        return tuple(sum(len(f) for f in self.features[side]) for side in (True, False))

    def compute(self) -> dict[str, float]:
        """``fid``, ``kid_mean``, ``kid_std`` and the two set sizes."""
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance

        real_count, fake_count = self.counts()
        if min(real_count, fake_count) < 2:
            raise ValueError(f"FID and KID need at least 2 images per set, got {real_count} real and {fake_count} fake")
        # normalize=False: torchmetrics passes the features through unchanged (with True, older versions turn the
        # inputs into bytes before a custom feature module)
        fid = FrechetInceptionDistance(feature=_Passthrough(), normalize=False)
        subset_size = min(self.kid_subset_size, real_count, fake_count)
        kid = KernelInceptionDistance(feature=_Passthrough(), normalize=False, subset_size=subset_size)
        for real in (True, False):
            for features in self.features[real]:
                fid.update(features, real=real)
                kid.update(features, real=real)
        kid_mean, kid_std = kid.compute()
        # kid_std is the spread over random subsets: 0 when a subset is a whole set (fewer images than subset_size)
        return {"fid": float(fid.compute()), "kid_mean": float(kid_mean), "kid_std": float(kid_std),
                "kid_subset_size": subset_size, "real_images": real_count, "fake_images": fake_count}


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """``[-1, 1]`` -> ``[0, 1]``."""
    return (images / 2 + 0.5).clamp(0, 1)


# ---------------------------------------------------------------------------------------------------------------
# Reconstruction


@torch.no_grad()
def evaluate_reconstruction(vae: torch.nn.Module, batches: Iterable[torch.Tensor], with_fid: bool = True,
                            inception: InceptionFeatures | None = None, num_grid_images: int = 8,
                            ) -> tuple[dict[str, float], Image.Image]:
    """Reconstruction metrics of ``vae`` (any of the three autoencoders) over image batches in ``[-1, 1]``, and a
    grid of originals over reconstructions: `reconstruction_metrics` (stage 1's validation) with the deterministic
    decode (BRICS: no relaxed-precision noise, fixed decoder noise), as a pipeline decodes, plus the image count, the
    time taken and, with ``with_fid``, FID / KID of the reconstructions against the originals."""
    adapters.model_type_of(vae)  # a ValueError for anything but the three autoencoders
    vae = vae.eval()
    distances = InceptionDistances(inception) if with_fid else None
    count = 0

    def each_batch(images: torch.Tensor, recon: torch.Tensor) -> None:
        nonlocal count
        count += images.shape[0]
        if distances is not None:
            distances.update(to_unit(images), real=True)
            distances.update(to_unit(recon), real=False)

    start = time.perf_counter()
    metrics, grid = reconstruction_metrics(vae, batches, num_grid_images, each_batch=each_batch)
    results: dict[str, float] = {name: metrics.pop(name) for name in ("psnr", "ssim", "lpips")}
    results["images"] = count
    results["seconds"] = time.perf_counter() - start
    if distances is not None:
        result = distances.compute()
        results.update(fid=result["fid"], kid_mean=result["kid_mean"], kid_std=result["kid_std"])
    results.update(metrics)  # grid or codebook usage
    return results, grid


# ---------------------------------------------------------------------------------------------------------------
# Generation


@torch.no_grad()
def sample_images(pipeline, num_samples: int, batch_size: int, num_inference_steps: int, seed: int = 0,
                  desc: str = "sampling") -> Iterator[torch.Tensor]:
    """Samples ``(B, 3, H, W)`` in ``[0, 1]``, image ``i`` drawn from seed ``seed + i`` (so any batch size gives
    the same images)."""
    pipeline.set_progress_bar_config(disable=True)
    for start in tqdm(range(0, num_samples, batch_size), desc=desc, unit="batch"):
        count = min(batch_size, num_samples - start)
        generators = [torch.Generator().manual_seed(seed + start + i) for i in range(count)]
        images = pipeline(batch_size=count, generator=generators, num_inference_steps=num_inference_steps,
                          output_type="np").images
        yield torch.from_numpy(np.asarray(images)).permute(0, 3, 1, 2).float()


def evaluate_generation(pipeline, reference: Iterable[torch.Tensor], num_samples: int, batch_size: int,
                        num_inference_steps: int, seed: int = 0, baseline: Iterable[torch.Tensor] | None = None,
                        inception: InceptionFeatures | None = None, num_grid_images: int = 16,
                        ) -> tuple[dict[str, float], Image.Image]:
    """FID / KID of ``num_samples`` samples against ``reference`` batches (``[-1, 1]``), the sampling time per image,
    and with ``baseline`` batches (as many real images, not from the reference) the real-vs-real FID / KID."""
    inception = inception if inception is not None else InceptionFeatures()
    distances = InceptionDistances(inception)
    for images in reference:
        distances.update(to_unit(images), real=True)
    shown, seconds = [], 0.0
    start = time.perf_counter()
    for images in sample_images(pipeline, num_samples, batch_size, num_inference_steps, seed):
        seconds += time.perf_counter() - start
        distances.update(images, real=False)
        shown += list(images[: max(0, num_grid_images - len(shown))])
        start = time.perf_counter()
    metrics = distances.compute()
    metrics.update(num_inference_steps=num_inference_steps, seconds_per_image=seconds / num_samples)
    if baseline is not None:
        real = InceptionDistances(inception)
        real.features[True] = distances.features[True]
        for images in baseline:
            real.update(to_unit(images), real=False)
        result = real.compute()
        metrics.update(real_fid=result["fid"], real_kid_mean=result["kid_mean"], real_kid_std=result["kid_std"],
                       baseline_images=result["fake_images"])
    grid = make_image_grid([to_pil(x * 2 - 1) for x in shown], rows=max(1, len(shown) // 8), cols=min(8, len(shown)))
    return metrics, grid


@torch.no_grad()
def nearest_neighbours(samples: torch.Tensor, training: Iterable[torch.Tensor], k: int = 5) -> tuple[torch.Tensor, Image.Image]:
    """The ``k`` training images nearest (LPIPS-alex) to each sample ``(S, 3, H, W)`` in ``[-1, 1]``: their
    distances ``(S, k)`` and a grid, one row per sample (the sample, then its neighbours, nearest first)."""
    best_d = torch.full((samples.shape[0], k), float("inf"))
    best_images = torch.zeros(samples.shape[0], k, *samples.shape[1:])
    for images in training:
        images = images.float()
        for s, sample in enumerate(samples):
            d = lpips(sample.expand_as(images), images, net="alex").flatten().cpu()
            merged_d = torch.cat([best_d[s], d])
            merged_images = torch.cat([best_images[s], images.cpu()])
            order = merged_d.argsort()[:k]
            best_d[s], best_images[s] = merged_d[order], merged_images[order]
    if not torch.isfinite(best_d).all():
        raise ValueError(f"the training set has fewer than k={k} images")
    rows = [[to_pil(sample)] + [to_pil(x) for x in neighbours] for sample, neighbours in zip(samples, best_images)]
    return best_d, make_image_grid([p for row in rows for p in row], rows=len(rows), cols=k + 1)


# ---------------------------------------------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("batch_size", "num_samples", "num_inference_steps", "k", "max_images", "max_reference_images"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise SystemExit(f"error: --{name} must be a positive integer, got {value}")
    check_inputs(args)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    data = dict(dataset_name=args.dataset_name, dataset_config_name=args.dataset_config_name,
                train_data_dir=args.train_data_dir, validation_fraction=args.validation_fraction, seed=args.seed,
                cache_dir=args.cache_dir)
    wants_fid = args.command == "generation" or (args.command == "reconstruction" and not args.no_fid)
    inception = InceptionFeatures(args.inception_weights).to(args.device) if wants_fid else None
    results: dict = {"command": " ".join(sys.argv) if argv is None else " ".join(["evaluate", *argv])}

    if args.command == "reconstruction":
        vae = adapters.load_autoencoder(args.model, subfolder=args.subfolder).to(args.device)
        resolution = vae.config.sample_size
        split, column = load_split(args.split, resolution, **data)
        metrics, grid = evaluate_reconstruction(vae, image_batches(split, column, resolution, args.batch_size,
                                                                   args.max_images, "reconstructing"),
                                                inception is not None, inception)
        grid.save(output / "reconstructions.png")
        results.update(model=args.model, model_class=type(vae).__name__, split=args.split, **metrics)
    else:
        pipeline = load_pipeline(args.pipeline, args.scheduler, args.device)
        resolution = sample_size_of(pipeline)
        if args.command == "generation":
            reference, column = load_split(args.reference, resolution, **data)
            baseline = None
            if not args.no_baseline:
                other, other_column = load_split("train" if args.reference == "held-out" else "held-out", resolution, **data)
                count = min(args.num_samples, len(other))
                other = other.shuffle(seed=args.seed).select(range(count))
                baseline = image_batches(other, other_column, resolution, args.batch_size, desc="real baseline")
            metrics, grid = evaluate_generation(
                pipeline, image_batches(reference, column, resolution, args.batch_size, args.max_reference_images,
                                        "reference"),
                args.num_samples, args.batch_size, args.num_inference_steps, args.seed, baseline, inception)
            grid.save(output / "samples.png")
            results.update(pipeline=args.pipeline, reference=args.reference, **metrics)
        else:
            train, column = load_split("train", resolution, **data)
            samples = torch.cat(list(sample_images(pipeline, args.num_samples, args.batch_size,
                                                   args.num_inference_steps, args.seed))) * 2 - 1
            distances, grid = nearest_neighbours(samples, image_batches(train, column, resolution, args.batch_size,
                                                                        desc="training images"), args.k)
            grid.save(output / "neighbours.png")
            results.update(pipeline=args.pipeline, lpips_distances=distances.tolist())
    with open(output / "results.json", "w") as f:
        json.dump(results, f, indent=2)
    print(json.dumps({k: v for k, v in results.items() if not isinstance(v, list)}, indent=2))
    return 0


if __name__ == "__main__":
    from .console import run_command

    sys.exit(run_command(main, prog="brics evaluate"))
