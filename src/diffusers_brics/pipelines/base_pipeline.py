"""`BRICSDiffusionPipeline`, the base of the BRICS pipelines: how they are saved and loaded (local folders, Hub
repos, stock diffusers with ``trust_remote_code``).

What they share when generating lives beside it: argument checks and image/mask preparation in `inputs`, the
denoising loop and the decoding of its result in `sampling`.
"""

from __future__ import annotations

import os

from diffusers import DiffusionPipeline

from .hub_files import download_pipeline, remote_code_files, resolve_module_files, write_model_index


class BRICSDiffusionPipeline(DiffusionPipeline):
    """The base of the BRICS pipelines (`BRICSPipeline`, `BRICSTextToImagePipeline`): a ``unet`` denoising the
    key codes of a ``vae`` (a `BRICSAutoencoder`, or diffusers' `AutoencoderKL` / `VQModel`) with a ``scheduler``.

    A saved folder (or Hub repo) loads with ``<Pipeline>.from_pretrained`` and with stock diffusers'
    ``DiffusionPipeline.from_pretrained(..., trust_remote_code=True)``: `save_pretrained` writes module files that
    only import the classes from the installed package (`remote_code_files`) and names them in
    ``model_index.json``; ``from_pretrained`` of this package resolves them without running them.
    Generation: `diffusers_brics.pipelines.sampling.denoise` with a condition for the UNet and, optionally,
    classifier-free guidance, an image to start from and a mask to inpaint.
    """

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> "BRICSDiffusionPipeline":
        """Load from a local folder or a Hub repo id.

        diffusers' own download step refuses components from pip packages (it only knows diffusers,
        transformers and the like), so for a repo id the files are fetched with ``huggingface_hub`` first and
        the folder is loaded from the local cache. Only ``model_index.json`` and the folders of the components it
        lists are downloaded (not training checkpoints or sample images kept in the same repo), and of their weights
        only those that ``variant`` and ``use_safetensors`` select. ``cache_dir``, ``revision``, ``token``,
        ``force_download`` and ``local_files_only`` are honoured, and so are ``HF_HUB_OFFLINE``, ``HF_ENDPOINT`` and
        the usual proxy environment variables.

        Raises:
            FileNotFoundError: the argument is not a folder and cannot be a repo id (``"name"`` or ``"org/name"``),
                so it names a local folder that does not exist.
        """
        path = os.path.expanduser(str(pretrained_model_name_or_path))
        from_hub = not os.path.isdir(path)
        if from_hub:
            path = download_pipeline(path, kwargs)
        pipeline = super().from_pretrained(path, **kwargs)
        if from_hub:  # record the repo id, as diffusers does
            pipeline.register_to_config(_name_or_path=str(pretrained_model_name_or_path))
        return pipeline

    @classmethod
    def load_config(cls, *args, **kwargs):
        """diffusers' `load_config`, with the module files that `save_pretrained` writes resolved to the classes they
        import (`resolve_module_files`): `from_pretrained` then runs no file of the folder and needs no
        ``trust_remote_code``."""
        loaded = super().load_config(*args, **kwargs)
        if isinstance(loaded, tuple):
            return (resolve_module_files(loaded[0]), *loaded[1:])
        return resolve_module_files(loaded)

    def remote_code_files(self) -> dict[str, str]:
        """``{path in a saved folder: source}`` of the module files that let stock diffusers load the pipeline with
        ``trust_remote_code=True`` (see `diffusers_brics.pipelines.hub_files.remote_code_files`)."""
        return remote_code_files(self)

    def to_json_file(self, json_file_path: str | os.PathLike) -> None:
        """Write ``model_index.json`` (`save_pretrained` and `save_config` call this) in the form stock diffusers
        loads with ``trust_remote_code=True``: ``"_class_name": ["pipeline_brics", "BRICSPipeline"]`` and
        ``"vae": ["autoencoder_brics", "BRICSAutoencoder"]`` for a BRICS vae, naming the module files of
        `remote_code_files`, which are written beside it."""
        write_model_index(self, json_file_path)
