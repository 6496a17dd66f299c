import os

import pytest
import torch

from diffusers_brics.training.checkpointing import (
    checkpoint_train_seconds,
    list_checkpoints,
    resolve_checkpoint,
    save_checkpoint,
)
from diffusers_brics.training.discriminator import StyleGAN2Discriminator
from diffusers_brics.training.ema import HalfLifeEMA
from diffusers_brics.training.losses import (
    VGGPerceptualLoss,
    discriminator_adversarial_loss,
    generator_adversarial_loss,
    gradient_penalty,
    kl_loss,
    r1_penalty,
)


def tiny_discriminator():
    return StyleGAN2Discriminator(resolution=16, channel_base=128, channel_max=16)


def test_discriminator_logits_and_minibatch_std():
    disc = tiny_discriminator()
    x = torch.rand(6, 3, 16, 16) * 2 - 1
    assert disc(x).shape == (6,)
    # minibatch std: identical samples in a group give a zero std feature
    feats = torch.ones(4, 2, 4, 4)
    torch.testing.assert_close(disc.minibatch_std(feats)[:, -1], torch.zeros(4, 4, 4), atol=1e-3, rtol=0)
    varied = disc.minibatch_std(torch.randn(4, 2, 4, 4))[:, -1]
    assert float(varied.min()) > 0.1 and torch.equal(varied, varied[0, 0, 0].expand(4, 4, 4))
    with pytest.raises(ValueError, match="power of two"):
        StyleGAN2Discriminator(resolution=24)


def test_r1_penalty_matches_manual_gradient():
    disc = tiny_discriminator()
    real = torch.randn(4, 3, 16, 16)
    penalty, logits = r1_penalty(disc, real)
    x = real.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(disc(x).sum(), x)
    torch.testing.assert_close(penalty, grad.square().sum(dim=(1, 2, 3)).mean())
    penalty.backward()  # differentiable w.r.t. the discriminator (second order)
    assert disc.from_rgb.weight.grad.abs().sum() > 0


def test_gradient_penalty_is_zero_for_unit_gradient_critic():
    critic = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 1, bias=False))
    with torch.no_grad():
        critic[1].weight.fill_(1.0 / (48**0.5))  # ||grad|| = 1 everywhere
    gp = gradient_penalty(lambda x: critic(x).squeeze(1), torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4))
    assert float(gp.detach()) < 1e-10


def test_gradient_penalty_draws_its_interpolates_from_the_generator():
    critic = lambda x: (x**3).sum(dim=(1, 2, 3))  # noqa: E731 (the gradient norm depends on where it is taken)
    real, fake = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    values = [gradient_penalty(critic, real, fake, torch.Generator().manual_seed(seed)) for seed in (1, 1, 2)]
    assert torch.equal(values[0], values[1]) and not torch.equal(values[0], values[2])


def test_adversarial_losses():
    real, fake = torch.tensor([2.0, 3.0]), torch.tensor([-1.0, 0.0])
    softplus = torch.nn.functional.softplus
    torch.testing.assert_close(discriminator_adversarial_loss(real, fake, "r1"), softplus(fake).mean() + softplus(-real).mean())
    torch.testing.assert_close(generator_adversarial_loss(fake, "r1"), softplus(-fake).mean())
    assert float(discriminator_adversarial_loss(real, fake, "wgan-gp")) == -3.0
    assert float(generator_adversarial_loss(fake, "wgan-gp")) == 0.5


class _FakeAccelerator:
    is_main_process = True

    def wait_for_everyone(self):
        pass

    def save_state(self, path):
        assert os.path.isdir(path)
        with open(os.path.join(path, "model.safetensors"), "w") as f:
            f.write("weights")


def test_checkpoints_are_atomic_pruned_and_resolved(tmp_path):
    acc = _FakeAccelerator()
    for step in (10, 20, 30):
        save_checkpoint(acc, str(tmp_path), step, total_limit=2)
    os.makedirs(tmp_path / "checkpoint-40.partial")  # an interrupted save is never picked up
    assert [s for s, _ in list_checkpoints(str(tmp_path))] == [20, 30]
    assert resolve_checkpoint(str(tmp_path), "latest")[0] == 30
    assert resolve_checkpoint(str(tmp_path), "checkpoint-20")[0] == 20
    with pytest.raises(FileNotFoundError, match="checkpoint-<step>"):
        resolve_checkpoint(str(tmp_path), "checkpoint-99")
    assert resolve_checkpoint(str(tmp_path / "empty"), "latest") is None
    assert checkpoint_train_seconds(str(tmp_path / "checkpoint-30")) is None  # saved without a training time
    save_checkpoint(acc, str(tmp_path), 50, total_limit=2, train_seconds=12.5)
    assert checkpoint_train_seconds(str(tmp_path / "checkpoint-50")) == 12.5


def test_class_labels_of_a_column():
    import datasets

    from diffusers_brics.training.data import class_labels_of

    strings = datasets.Dataset.from_dict({"kind": ["dog", "cat", "dog"], "size": [10, 2, 2]})
    assert class_labels_of(strings, "kind") == ([1, 0, 1], ["cat", "dog"])
    assert class_labels_of(strings, "size") == ([1, 0, 0], ["2", "10"])  # numbers in numeric order
    folder = strings.cast_column("kind", datasets.ClassLabel(names=["dog", "cat"]))  # as an imagefolder's 'label'
    assert class_labels_of(folder, "kind") == ([0, 1, 0], ["dog", "cat"])
    with pytest.raises(ValueError, match="class_column 'label' is not in the dataset; columns: kind, size"):
        class_labels_of(strings, "label")


def test_micro_batch_seeds_are_distinct_and_reproducible():
    from diffusers_brics.training.distributed import micro_batch_seed

    seeds = [micro_batch_seed(0, 3, step, micro, process) for step in range(50) for micro in range(3) for process in range(4)]
    assert len(set(seeds)) == len(seeds)
    assert micro_batch_seed(0, 3, 7, 2, 1) == micro_batch_seed(0, 3, 7, 2, 1)
    assert micro_batch_seed(1, 3, 7, 2, 1) != micro_batch_seed(0, 3, 7, 2, 1)


def test_example_draws_follow_the_example_not_the_split_of_the_step():
    from types import SimpleNamespace

    from diffusers_brics.training.distributed import example_generators
    from diffusers_brics.training.loop import Trainer

    def positions(processes: int, accumulation: int, batch: int) -> list[list[int]]:
        """Each micro-batch's positions, in the order accelerate deals out the batches of one process of them all."""
        out = []
        for micro_step in range(accumulation):
            for rank in range(processes):
                trainer = SimpleNamespace(micro_step=micro_step, config=SimpleNamespace(train_batch_size=batch),
                                          accelerator=SimpleNamespace(num_processes=processes, process_index=rank))
                out.append(list(Trainer.example_positions(trainer, batch)))
        return out

    assert positions(1, 1, 8) == [list(range(8))]
    assert positions(2, 1, 4) == positions(1, 2, 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert positions(2, 2, 2) == [[0, 1], [2, 3], [4, 5], [6, 7]]

    def noise(seed, step, first, count):
        return torch.stack([torch.randn(3, generator=g) for g in example_generators(seed, step, range(first, first + count))])

    whole = noise(0, 5, 0, 8)
    torch.testing.assert_close(torch.cat([noise(0, 5, 0, 4), noise(0, 5, 4, 4)]), whole, rtol=0, atol=0)
    assert len({tuple(row.tolist()) for row in whole}) == 8  # no two examples draw alike
    assert not torch.equal(noise(0, 6, 0, 8), whole) and not torch.equal(noise(1, 5, 0, 8), whole)


@pytest.mark.parametrize("name", ["linear", "cosine", "constant_with_warmup"])
def test_resume_follows_the_new_schedule_from_its_first_step(name):
    from diffusers.optimization import get_scheduler

    from diffusers_brics.training.resume import follow_schedule

    def run(total_steps, steps, state=None):
        parameter = torch.nn.Parameter(torch.zeros(1))
        optimizer = torch.optim.AdamW([parameter], lr=1e-3)
        scheduler = get_scheduler(name, optimizer, num_warmup_steps=1, num_training_steps=total_steps)
        if state is not None:  # a resume: restore both, as accelerate's load_state does
            optimizer.load_state_dict(state[0])
            scheduler.load_state_dict(state[1])
            follow_schedule(scheduler)
        for _ in range(steps):
            optimizer.step()
            scheduler.step()
        return optimizer, scheduler

    straight = run(4, 2)
    # same schedule: the restored rates are rewritten bit for bit
    resumed = run(4, 0, (straight[0].state_dict(), straight[1].state_dict()))
    assert resumed[0].param_groups[0]["lr"] == straight[0].param_groups[0]["lr"]
    # a checkpoint of a 2-step run, resumed into a 4-step run: the next step takes the 4-step schedule's rate
    short = run(2, 2)
    extended = run(4, 0, (short[0].state_dict(), short[1].state_dict()))
    assert extended[0].param_groups[0]["lr"] == straight[0].param_groups[0]["lr"]
    assert extended[1].get_last_lr() == straight[1].get_last_lr()


def test_step_logs_average_micro_batches_and_processes():
    from types import SimpleNamespace

    from accelerate import Accelerator

    from diffusers_brics.training.reporting import StepLogs

    logs = StepLogs()
    logs.add({"loss": 1.0, "r1": 4.0})
    logs.add({"loss": 3.0})  # a key logged by some micro-batches only is averaged over those
    assert logs.reduce(Accelerator(cpu=True)) == {"loss": 2.0, "r1": 4.0}
    assert logs.reduce(Accelerator(cpu=True)) == {}  # reset for the next step

    other_rank = torch.tensor([6.0, 0.0])  # (loss, r1) of a second process
    two = SimpleNamespace(num_processes=2, device="cpu",
                          reduce=lambda t, reduction: (t + other_rank) / 2 if reduction == "mean" else None)
    logs.add({"r1": 4.0, "loss": 2.0})
    assert logs.reduce(two) == {"loss": 4.0, "r1": 2.0}


def test_the_progress_bar_names_the_steps_and_the_time_budget():
    from types import SimpleNamespace

    from diffusers_brics.training.config import LoopConfig
    from diffusers_brics.training.reporting import step_progress

    main = SimpleNamespace(is_local_main_process=True)
    with step_progress(main, LoopConfig(output_dir="o"), 12000, 5299) as bar:
        assert (bar.desc, bar.total, bar.n) == ("steps", 12000, 5299)
    with step_progress(main, LoopConfig(output_dir="o", max_train_seconds=1980), 12000, 5299) as bar:
        assert (bar.desc, bar.total, bar.n) == ("steps of 12000, budget 1980 s", None, 5299)  # no ETA for one limit


def test_dataset_name_reads_saved_datasets_and_data_folders(tmp_path):
    import datasets

    from diffusers_brics.data import load_emoji_dataset
    from diffusers_brics.training.data import load_image_datasets

    images = load_emoji_dataset(32, "test").select(range(20))
    images.save_to_disk(tmp_path / "dataset")
    datasets.DatasetDict(train=images, validation=images.select(range(3))).save_to_disk(tmp_path / "dataset_dict")
    images.to_parquet(str(tmp_path / "parquet" / "train.parquet"))
    for folder, sizes in (("dataset", (19, 1)), ("dataset_dict", (20, 3)), ("parquet", (19, 1))):
        train, held_out = load_image_datasets(str(tmp_path / folder), validation_fraction=0.05)
        assert (len(train), len(held_out)) == sizes, folder
    for missing in (str(tmp_path / "missing"), "./missing"):
        with pytest.raises(FileNotFoundError, match="dataset_name .* is not a folder"):
            load_image_datasets(missing)


def test_columns_that_cannot_work_are_refused(tmp_path):
    import datasets

    from diffusers_brics.training.data import class_labels_of, image_column_of, load_image_datasets

    table = datasets.Dataset.from_dict({"score": [0.5, 0.25], "tags": [["a"], ["b"]], "name": ["x", "y"]})
    for column in ("score", "tags"):
        with pytest.raises(ValueError, match=f"class_column '{column}' holds"):
            class_labels_of(table, column)
    with pytest.raises(ValueError, match="image_column 'name' holds Value"):
        image_column_of(table, "name")
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="train_data_dir .* holds no images"):
        load_image_datasets(train_data_dir=str(tmp_path))


def test_checkpoint_limit_and_discriminator_widths_are_checked(tmp_path):
    with pytest.raises(ValueError, match="total_limit must be >= 1"):
        save_checkpoint(None, str(tmp_path), 1, total_limit=0)
    with pytest.raises(ValueError, match="channel_base 1 and channel_max 256 leave no channels at resolution 32"):
        StyleGAN2Discriminator(resolution=32, channel_base=1, channel_max=256)


def test_unreadable_images_are_named(tmp_path):
    import io

    import numpy as np
    from PIL import Image

    from diffusers_brics.training.data import image_transform

    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(buffer, format="PNG")
    transform = image_transform(4)
    assert transform({"bytes": buffer.getvalue(), "path": None}).shape == (3, 4, 4)
    (tmp_path / "cut.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ValueError, match="image .*cut.png cannot be read"):
        transform({"bytes": None, "path": str(tmp_path / "cut.png")})


def test_vgg_perceptual_loss_is_the_release_l1_over_four_vgg16_maps(lpips_weights_dir):
    from diffusers_brics.metrics import LPIPS

    loss = VGGPerceptualLoss()
    assert len(loss.convs) == 10  # VGG16 up to relu4_3
    x, y = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    # The same ImageNet VGG16 as LPIPS-VGG's backbone (checked against the lpips package): same maps for the same
    # input, here the release's preprocessing (ImageNet normalisation of [0, 1] images, bilinear resize to 224).
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    prepared = torch.nn.functional.interpolate(((x + 1) / 2 - mean) / std, size=(224, 224), mode="bilinear",
                                               align_corners=False)
    reference = LPIPS("vgg").features(prepared)[:4]
    ours = loss.features(x)
    assert [tuple(f.shape[1:]) for f in ours] == [(64, 224, 224), (128, 112, 112), (256, 56, 56), (512, 28, 28)]
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b)
    expected = sum((a - b).abs().mean() for a, b in zip(ours, loss.features(y)))
    torch.testing.assert_close(loss(x, y), expected)
    assert float(loss(x, x)) == 0.0
    x.requires_grad_(True)
    loss(x, y).backward()
    assert x.grad.abs().sum() > 0 and all(p.grad is None for p in loss.parameters())
    native = VGGPerceptualLoss(resolution=None)
    assert tuple(native.features(x)[0].shape[2:]) == (32, 32)
    with pytest.raises(ValueError, match="one shape"):
        loss(x, y[:1])


def test_kl_mean_is_the_sum_over_the_elements_of_a_code():
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    # a hand-made posterior over 2 codes of 1x1x2 elements: mu (1, 0) and (0, 2), log-variances 0 and log 4
    mean = torch.tensor([[1.0, 0.0], [0.0, 2.0]]).view(2, 2, 1, 1)
    logvar = torch.tensor([[0.0, float(torch.tensor(4.0).log())], [0.0, 0.0]]).view(2, 2, 1, 1)
    posterior = DiagonalGaussianDistribution(torch.cat([mean, logvar], dim=1))
    # KL(N(mu, var) || N(0, 1)) = 0.5 (mu^2 + var - 1 - log var) per element:
    # code 1: 0.5 * 1 + 0.5 * (4 - 1 - log 4); code 2: 0 + 0.5 * 4
    code1 = 0.5 + 0.5 * (3 - float(torch.tensor(4.0).log()))
    code2 = 2.0
    torch.testing.assert_close(kl_loss(posterior, "sum"), torch.tensor((code1 + code2) / 2))
    torch.testing.assert_close(kl_loss(posterior, "mean"), torch.tensor((code1 + code2) / 2 / 2))
    with pytest.raises(ValueError, match="reduction"):
        kl_loss(posterior, "max")


def test_half_life_ema_follows_stylegan2():
    param = torch.nn.Parameter(torch.zeros(3))
    ema = HalfLifeEMA([param], halflife_images=10_000 * 8 / 32, batch_size=8, rampup=0.05)
    # step k (0-based) after k * 8 images: beta = 0.5 ** (8 / max(min(2500, 0.05 * 8 k), 1e-8))
    betas = [0.5 ** (8 / max(min(2500, 0.05 * 8 * k), 1e-8)) for k in range(5)]
    assert betas[0] == 0.0  # the first step copies the weights
    for k, beta in enumerate(betas):
        assert ema.get_decay(k + 1) == pytest.approx(beta, rel=1e-12)
    assert ema.get_decay(10_000) == pytest.approx(0.5 ** (1 / 312.5))  # after the ramp-up: half-life 312.5 steps
    assert HalfLifeEMA([param], 2500, 8, rampup=None).get_decay(1) == pytest.approx(0.5 ** (8 / 2500))
    with torch.no_grad():
        param.fill_(1.0)
    ema.step([param])
    torch.testing.assert_close(ema.shadow_params[0], torch.ones(3))
    state = ema.state_dict()
    assert state["halflife_images"] == 2500 and state["batch_size"] == 8 and state["rampup"] == 0.05
    with pytest.raises(ValueError, match="halflife_images"):
        HalfLifeEMA([param], 0, 8)
