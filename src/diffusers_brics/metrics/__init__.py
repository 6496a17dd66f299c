"""Image metrics: PSNR, SSIM, LPIPS v0.1 (AlexNet / VGG16, also a training loss), FID / KID / Inception Score with
the FID Inception-v3, feature-grid and VQ-codebook usage. The weight files of LPIPS and the Inception-v3 are
prepared into a cache on first use (:func:`prepare_weights` does it ahead of time)."""

from .codebook_usage import CodebookUsage, usage_summary
from .fid import CLIP_FID_MESSAGE, frechet_inception_distance, inception_score, kernel_inception_distance
from .grid_usage import GridUsage, grid_usage
from .inception import InceptionFeatures
from .inception_net import inception_cache_dir
from .inception_weights import resolve_inception_weights
from .lpips import LPIPS, clear_cache, lpips
from .lpips_weights import default_cache_dir, resolve_lpips_weights
from .reconstruction import psnr, ssim
from .weight_kinds import prepare_weights

__all__ = [
    "CLIP_FID_MESSAGE",
    "CodebookUsage",
    "GridUsage",
    "InceptionFeatures",
    "LPIPS",
    "clear_cache",
    "default_cache_dir",
    "frechet_inception_distance",
    "grid_usage",
    "inception_cache_dir",
    "inception_score",
    "kernel_inception_distance",
    "lpips",
    "prepare_weights",
    "psnr",
    "resolve_inception_weights",
    "resolve_lpips_weights",
    "ssim",
    "usage_summary",
]
