"""Datasets shipped with the package."""

from .emoji import emoji_data_files, load_emoji_dataset
from .examples import example_images, save_example_images

__all__ = ["emoji_data_files", "example_images", "load_emoji_dataset", "save_example_images"]
