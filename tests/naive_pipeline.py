"""A pipeline with a `BRICSAutoencoder` component that keeps diffusers' own `from_pretrained` (no override).

Loading it from a local folder works; loading it by Hub repo id goes through `DiffusionPipeline.download`, which
refuses the component because its module (``diffusers_brics.models.autoencoder_brics``) is neither a file of the
repo nor a library diffusers knows.
"""

from diffusers import DiffusionPipeline, UNet2DModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from diffusers_brics import BRICSAutoencoder


class NaiveBRICSPipeline(DiffusionPipeline):
    def __init__(self, unet: UNet2DModel, scheduler: SchedulerMixin, vae: BRICSAutoencoder):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, vae=vae)
