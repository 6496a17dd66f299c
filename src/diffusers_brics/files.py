"""A command's files, checked before any model loads: its inputs exist and can be read, and its outputs replace
neither an input nor, without ``--overwrite``, a file that is already there.

Output names: each source (an image, or a name stored with key codes) gives its outputs its stem, ``NAME.png``.
Where several sources share a stem (``a/x.png`` and ``b/x.png``), the first in the order given keeps it and each
other takes the first free ``NAME-1``, ``NAME-2``, ...: ``x.png`` and ``x-1.png``. A source whose stem no other
shares keeps its name. Names are compared without regard to case, as some file systems do.

Light: nothing here imports torch, so the checks answer before the command imports, let alone loads, a model.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

OVERWRITE_HELP = "replace output files that already exist (never an input of the command)"


def check_file(path: str | os.PathLike, name: str) -> None:
    """``path`` is a file this process can read; otherwise a FileNotFoundError (IsADirectoryError, PermissionError)
    naming the argument ``name``."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"{name}: {str(path)!r} is a folder, not a file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{name}: no such file {str(path)!r}")
    if not os.access(path, os.R_OK):
        raise PermissionError(f"{name}: {str(path)!r} cannot be read (permission denied)")


def check_image(path: str | os.PathLike, name: str) -> None:
    """``path`` is a picture Pillow can open; otherwise a FileNotFoundError / ValueError naming the argument
    ``name``. Reads the file's header and checks what is cheap to check (a PNG's chunk checksums), without
    decoding the pixels."""
    check_file(path, name)
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as error:  # noqa: BLE001 - Pillow raises many kinds (OSError, SyntaxError, struct.error)
        raise ValueError(f"{name}: {str(path)!r} is not a readable image ({error})") from None


def check_folder(path: str | os.PathLike, name: str) -> None:
    """``path`` is an existing folder; otherwise a FileNotFoundError / NotADirectoryError naming ``name``."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{name}: no such folder {str(path)!r}")
    if not os.path.isdir(path):
        raise NotADirectoryError(f"{name}: {str(path)!r} is a file, not a folder")


def check_model_reference(value: str | os.PathLike, name: str = "--model") -> None:
    """``value`` is a local folder or could be a Hub repo id (``org/name``): a path that is neither raises a
    FileNotFoundError naming ``name``. Whether the Hub has the repo is left to loading."""
    path = os.path.expanduser(str(value))
    if os.path.isdir(path):
        return
    if os.path.exists(path):
        raise FileNotFoundError(f"{name} {str(value)!r} is a file; expected a model folder or a Hub repo id")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(path)
    except HFValidationError:
        raise FileNotFoundError(f"{name} {str(value)!r}: no such folder (and not a Hub repo id 'org/name')") from None


def check_output_folder(path: str | os.PathLike, name: str = "--output_dir") -> None:
    """``path`` is a folder or can become one (it is not a file)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise FileExistsError(f"{name} {str(path)!r} is a file; expected a folder (created if missing)")


def unique_stems(stems: Sequence[str], patterns: Sequence[str] = ("{}.png",)) -> list[str]:
    """A stem per source for output files named ``pattern.format(stem)`` for each of ``patterns``, no two sources
    sharing a file name: the first source of a stem keeps it, the others take ``STEM-1``, ``STEM-2``, ... (the first
    whose names are all free); see the module's docstring."""

    def names(stem: str) -> set[str]:
        return {pattern.format(stem).casefold() for pattern in patterns}

    taken: set[str] = set()
    seen: set[str] = set()
    chosen: list[str | None] = []
    for stem in stems:  # the first source of each stem keeps it where its names are free
        keep = stem.casefold() not in seen and not names(stem) & taken
        seen.add(stem.casefold())
        chosen.append(stem if keep else None)
        if keep:
            taken |= names(stem)
    for index, stem in enumerate(stems):
        if chosen[index] is None:
            count = 1
            while names(f"{stem}-{count}") & taken:
                count += 1
            chosen[index] = f"{stem}-{count}"
            taken |= names(chosen[index])
    return chosen  # type: ignore[return-value]


def check_outputs(outputs: Iterable[str | os.PathLike], inputs: Iterable[str | os.PathLike], overwrite: bool,
                  flag: str) -> None:
    """Refuse to write ``outputs`` where one of them is one of ``inputs`` (even with ``overwrite``), is a folder, or
    exists and ``overwrite`` is not given: a FileExistsError (IsADirectoryError) naming the file and ``flag`` (the
    flag that chose where outputs go)."""
    inputs = [path for path in inputs if path is not None and os.path.exists(path)]
    existing = []
    for output in outputs:
        if not os.path.lexists(output):
            continue
        for source in inputs:
            if os.path.exists(output) and os.path.samefile(output, source):
                raise FileExistsError(f"{str(output)!r} is an input of this command ({str(source)!r}); it is never "
                                      f"replaced, even with --overwrite: choose another {flag}")
        if os.path.isdir(output):
            raise IsADirectoryError(f"{str(output)!r} is a folder; choose another {flag}")
        existing.append(output)
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more of the outputs)" if len(existing) > 1 else ""
        raise FileExistsError(f"{str(existing[0])!r} exists{more}: pass --overwrite to replace it, or choose another "
                              f"{flag}")


def output_paths(folder: str | os.PathLike, stems: Sequence[str], patterns: Sequence[str] = ("{}.png",)
                 ) -> list[list[Path]]:
    """For each source, its output files in ``folder``: ``pattern.format(stem)`` per pattern, with the stems made
    unique (`unique_stems`)."""
    return [[Path(folder) / pattern.format(stem) for pattern in patterns] for stem in unique_stems(stems, patterns)]
