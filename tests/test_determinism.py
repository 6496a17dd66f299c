"""Same seed, same result: key codes, samples, batches against single images."""

import numpy as np
import torch
from builders import plain_unet

from diffusers_brics import BRICSAutoencoder, BRICSPipeline
from diffusers_brics.pipelines import default_scheduler


def seeded_autoencoder(seed: int) -> BRICSAutoencoder:
    torch.manual_seed(seed)
    return BRICSAutoencoder.from_preset("tiny").eval()


def test_the_same_seed_gives_the_same_model_and_key_codes():
    a, b, other = seeded_autoencoder(0), seeded_autoencoder(0), seeded_autoencoder(1)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(5)) * 2 - 1
    assert torch.equal(a.encode(images).latents, b.encode(images).latents)
    assert not torch.equal(a.encode(images).latents, other.encode(images).latents)
    # training-mode draws come from the generator only
    a.train(), b.train()
    one = a(images, generator=torch.Generator().manual_seed(3)).sample
    two = b(images, generator=torch.Generator().manual_seed(3)).sample
    assert torch.equal(one, two)


def test_a_batch_equals_its_images_one_by_one():
    model = seeded_autoencoder(0)
    with torch.no_grad():
        for grid in model.retrieval.grids:
            grid.embeddings.normal_(0, 0.5)
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        codes = model.encode(images).latents
        singles = torch.cat([model.encode(image[None]).latents for image in images])
        torch.testing.assert_close(codes, singles, rtol=1e-5, atol=1e-6)
        decoded = model.decode(codes).sample
        one_by_one = torch.cat([model.decode(code[None]).sample for code in codes])
        torch.testing.assert_close(decoded, one_by_one, rtol=1e-5, atol=1e-5)


def test_samples_repeat_and_a_batch_equals_its_seeds_one_by_one():
    torch.manual_seed(0)
    unet = plain_unet(2, block_out_channels=(8, 8), norm_num_groups=8)
    pipe = BRICSPipeline(unet=unet, scheduler=default_scheduler(), vae=seeded_autoencoder(0))
    pipe.set_progress_bar_config(disable=True)

    def sample(seeds):
        return pipe(batch_size=len(seeds), generator=[torch.Generator().manual_seed(s) for s in seeds],
                    num_inference_steps=3, output_type="np").images

    batch = sample([0, 1, 2, 3])
    assert np.array_equal(batch, sample([0, 1, 2, 3]))
    np.testing.assert_allclose(batch, np.concatenate([sample([s]) for s in range(4)]), atol=1e-5)
