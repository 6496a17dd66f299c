"""Image metrics: PSNR, SSIM, LPIPS v0.1 (AlexNet / VGG16, also a training loss) and feature-grid usage."""

from .grid_usage import GridUsage, grid_usage
from .lpips import LPIPS, clear_cache, lpips
from .reconstruction import psnr, ssim
from .weights import default_cache_dir, resolve_lpips_weights

__all__ = [
    "GridUsage",
    "LPIPS",
    "clear_cache",
    "default_cache_dir",
    "grid_usage",
    "lpips",
    "psnr",
    "resolve_lpips_weights",
    "ssim",
]
