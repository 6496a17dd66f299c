"""Image metrics: PSNR, SSIM, LPIPS v0.1 (AlexNet / VGG16, also a training loss), feature-grid and VQ-codebook
usage."""

from .codebook_usage import CodebookUsage, usage_summary
from .grid_usage import GridUsage, grid_usage
from .lpips import LPIPS, clear_cache, lpips
from .reconstruction import psnr, ssim
from .weights import default_cache_dir, resolve_lpips_weights

__all__ = [
    "CodebookUsage",
    "GridUsage",
    "LPIPS",
    "clear_cache",
    "default_cache_dir",
    "grid_usage",
    "lpips",
    "psnr",
    "resolve_lpips_weights",
    "ssim",
    "usage_summary",
]
