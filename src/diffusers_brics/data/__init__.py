"""Datasets shipped with the package."""

from .emoji import emoji_data_files, load_emoji_dataset

__all__ = ["emoji_data_files", "load_emoji_dataset"]
