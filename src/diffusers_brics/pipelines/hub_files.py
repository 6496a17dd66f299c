"""The files of a saved pipeline: which of a Hub repo's files loading it needs, and the module files that let stock
diffusers load it with ``trust_remote_code=True``.

* *File selection*: a repo may hold more than the pipeline (training checkpoints, sample images) and several sets
  of weights per component (``.safetensors`` and ``.bin``, variants such as ``fp16``); `files_to_download` picks
  ``model_index.json``'s component folders and, in each, the one set of weights diffusers would load.
* *Module files*: ``model_index.json`` names a class from outside diffusers by ``[module file, class]``; for a
  BRICS pipeline (``["pipeline_brics", "BRICSPipeline"]``) and a BRICS vae (``["autoencoder_brics",
  "BRICSAutoencoder"]``) `module_file` writes a file whose only statement imports the class from the installed
  package, and `resolve_module_files` turns such entries back into the classes without running the files.

What the package root ``diffusers_brics`` exports is read from its ``__init__.py`` (`package_exports`), and the
exported classes a component can have are looked up in `diffusers_brics.models` (`exported_model`): importing the
root from here would close an import cycle (the root imports the pipelines).
"""

from __future__ import annotations

import ast
import functools
import json
import os
from pathlib import Path

from diffusers import pipelines as diffusers_pipelines
from diffusers.pipelines.pipeline_loading_utils import LOADABLE_CLASSES

from .. import models

PACKAGE = __name__.split(".", 1)[0]  # "diffusers_brics"
PACKAGE_INIT = Path(__file__).resolve().parent.parent / "__init__.py"
WEIGHT_SUFFIXES = (".safetensors", ".bin")
DOWNLOAD_KWARGS = ("cache_dir", "revision", "token", "force_download", "local_files_only")


# ---------------------------------------------------------------------- Hub file selection
def weight_variant(filename: str) -> str | None:
    """``"fp16"`` for ``diffusion_pytorch_model.fp16.safetensors`` (or its shards ``...fp16-00001-of-00002...``)."""
    parts = filename.rsplit("/", 1)[-1].split(".")
    return parts[1].split("-")[0] if len(parts) >= 3 else None


def files_to_download(files: list[str], components: list[str], variant: str | None = None,
                      use_safetensors: bool | None = None) -> list[str]:
    """The files of a repo that loading ``components`` needs: everything in their folders but unused weights.

    Per component, the weights of the requested ``variant`` (the plain ones when it has none, as diffusers falls
    back), in safetensors unless ``use_safetensors=False`` asks for ``.bin`` (either, when only one exists).
    """
    chosen = []
    for name in components:
        inside = [f for f in files if f.startswith(name + "/")]
        weights = [f for f in inside if f.endswith(WEIGHT_SUFFIXES)]
        chosen += [f for f in inside if f not in weights]
        wanted = [f for f in weights if weight_variant(f) == variant]
        if not wanted and variant is not None:
            wanted = [f for f in weights if weight_variant(f) is None]
        safetensors = [f for f in wanted if f.endswith(".safetensors")]
        pickled = [f for f in wanted if not f.endswith(".safetensors")]
        chosen += (pickled or safetensors) if use_safetensors is False else (safetensors or pickled)
    return chosen


def download_pipeline(repo_id: str, kwargs: dict) -> str:
    """The local snapshot folder of Hub repo ``repo_id`` holding ``model_index.json`` and what `files_to_download`
    picks for its components (with the ``variant`` and ``use_safetensors`` of ``kwargs``); the download keywords
    (``cache_dir``, ``revision``, ``token``, ``force_download``, ``local_files_only``) are taken out of ``kwargs``.

    Raises:
        FileNotFoundError: ``repo_id`` cannot be a repo id (``"name"`` or ``"org/name"``), so it names a local
            folder that does not exist.
    """
    from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise FileNotFoundError(
            f"pretrained_model_name_or_path {repo_id!r} is not a folder (and not a Hub repo id, which has the "
            f"form 'name' or 'org/name'); expected a folder holding model_index.json"
        ) from None
    download = {k: kwargs.pop(k) for k in DOWNLOAD_KWARGS if k in kwargs}
    index_file = Path(hf_hub_download(repo_id, "model_index.json", **download))
    index = json.loads(index_file.read_text())
    components = [name for name, value in index.items() if not name.startswith("_") and isinstance(value, list)]
    if download.get("local_files_only") or constants.HF_HUB_OFFLINE:  # what the cached snapshot holds
        files = [f.relative_to(index_file.parent).as_posix() for f in index_file.parent.rglob("*") if f.is_file()]
    else:
        files = HfApi().list_repo_files(repo_id, revision=download.get("revision"), token=download.get("token"))
    patterns = files_to_download(files, components, kwargs.get("variant"), kwargs.get("use_safetensors"))
    return snapshot_download(repo_id, allow_patterns=["model_index.json", *patterns], **download)


# ---------------------------------------------------------------------- module files for trust_remote_code
@functools.cache
def package_exports() -> frozenset[str]:
    """The names ``from diffusers_brics import ...`` offers: the package root's ``__all__``, read from its source."""
    tree = ast.parse(PACKAGE_INIT.read_text(encoding="utf-8"), filename=str(PACKAGE_INIT))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return frozenset(ast.literal_eval(node.value))
    return frozenset()


def exported_model(class_name: str) -> type | None:
    """The model class ``diffusers_brics.<class_name>`` where the package root exports one (as `BRICSAutoencoder`):
    the classes of a pipeline's components that the package exports are its models."""
    cls = getattr(models, class_name, None) if class_name in package_exports() else None
    return cls if isinstance(cls, type) else None


def is_external(module: str) -> bool:
    """Whether a ``model_index.json`` entry's module is outside the libraries stock diffusers loads classes from."""
    return module not in LOADABLE_CLASSES and not hasattr(diffusers_pipelines, module)


def module_file(module: str, class_name: str) -> tuple[str, str]:
    """``(name, source)`` of the module file that stands for ``module.class_name`` in a saved folder: named after
    the module's last part, its only statement imports the class from the installed package (from
    ``diffusers_brics`` itself where the package exports it, as ``BRICSPipeline`` and ``BRICSAutoencoder``)."""
    exported = module.startswith(PACKAGE + ".") and class_name in package_exports()
    package = PACKAGE if exported else module
    source = (f"# `{class_name}` of the installed diffusers-brics package (pip install diffusers-brics), for\n"
              "# diffusers' `from_pretrained(..., trust_remote_code=True)`: this file only imports it.\n"
              f"from {package} import {class_name}  # noqa: F401\n")
    return module.rsplit(".", 1)[-1], source


def resolve_module_files(index: dict) -> dict:
    """``model_index.json`` as `BRICSPipeline` loads it, without running any file of the folder: the pipeline entry
    ``[module file, class]`` becomes the class name, and a component ``[module file, class]`` whose class the
    installed ``diffusers_brics`` exports becomes ``[the class's module, class]``. Entries of older saves (the
    pipeline by name, components by module path) and of diffusers' own classes come back unchanged."""
    resolved = dict(index)
    if isinstance(index.get("_class_name"), (list, tuple)):
        resolved["_class_name"] = index["_class_name"][1]
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, (list, tuple)) or len(entry) != 2:
            continue
        module, class_name = entry
        cls = exported_model(class_name) if isinstance(class_name, str) else None
        if isinstance(module, str) and is_external(module) and cls is not None:
            resolved[name] = [cls.__module__, class_name]
    return resolved


def remote_code_entries(pipeline) -> dict[str, tuple[str, str]]:
    """``model_index.json`` key -> ``(module, class)`` of the classes of ``pipeline`` that need a module file: the
    pipeline's own (``_class_name``) and those of its components from outside diffusers."""
    entries = {"_class_name": (type(pipeline).__module__, type(pipeline).__name__)}
    for name in pipeline.components:
        module, class_name = pipeline.config[name]
        if module is not None and is_external(module):
            entries[name] = (module, class_name)
    return entries


def remote_code_files(pipeline) -> dict[str, str]:
    """``{path in a saved folder: source}`` of the module files that let stock diffusers load ``pipeline`` with
    ``trust_remote_code=True``: ``<module>.py`` for the pipeline class (``pipeline_brics.py`` for `BRICSPipeline`)
    and, per component whose class comes from outside diffusers (a `BRICSAutoencoder` vae),
    ``<component>/<module>.py``; each only imports its class from the installed package."""
    files = {}
    for name, (module, class_name) in remote_code_entries(pipeline).items():
        stem, source = module_file(module, class_name)
        files[f"{stem}.py" if name == "_class_name" else f"{name}/{stem}.py"] = source
    return files


def write_model_index(pipeline, json_file_path: str | os.PathLike) -> None:
    """Write ``pipeline``'s ``model_index.json`` naming the module files of `remote_code_files` (``"_class_name":
    ["pipeline_brics", "BRICSPipeline"]``, ``"vae": ["autoencoder_brics", "BRICSAutoencoder"]``), and the module
    files beside it."""
    folder = Path(json_file_path).parent
    for path, source in remote_code_files(pipeline).items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_text(source, encoding="utf-8")
    index = json.loads(pipeline.to_json_string())
    for name, (module, class_name) in remote_code_entries(pipeline).items():
        index[name] = [module_file(module, class_name)[0], class_name]
    Path(json_file_path).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
