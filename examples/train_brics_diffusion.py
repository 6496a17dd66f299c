"""Stage 2: train a UNet2DModel to generate BRICS key codes (latent diffusion on key codes).

    accelerate launch examples/train_brics_diffusion.py --autoencoder brics-emoji/autoencoder --output_dir brics-emoji-ldm

The dataset is encoded once by the trained autoencoder (relaxed-precision noise off) and the key codes are
cached as a `datasets` dataset on disk (``OUTPUT_DIR/key_codes``, reused by later runs; ``--encode_on_the_fly``
encodes every batch instead). Codes are mapped to diffusion space by the autoencoder's
``(z - shift_factor) * scaling_factor``, by default ``(z - 0.5) * 2`` onto ``[-1, 1]``.
Epsilon prediction with the Chen 2023 cosine-variant schedule (default, paper config b) or the cosine schedule
with min-SNR-gamma weighting (config a). ``--class_column`` trains a class-conditional UNet (class names are saved
with the pipeline: ``pipe(class_labels=["name"])``). The full `BRICSPipeline` is saved to ``OUTPUT_DIR`` at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.logging import get_logger
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.optimization import SchedulerType
from diffusers.utils import make_image_grid
from tqdm.auto import tqdm

from diffusers_brics import BRICSAutoencoder, BRICSPipeline
from diffusers_brics.schedules import cosine_variant_betas, min_snr_weights
from diffusers_brics.training.checkpointing import save_checkpoint
from diffusers_brics.training.data import (
    class_labels_of,
    image_column_of,
    image_transform,
    load_image_datasets,
    undecoded,
)
from diffusers_brics.training.loop import (
    StepLogs,
    add_common_arguments,
    check_common_arguments,
    check_in_sync,
    ema_copy,
    log_image,
    make_accelerator,
    make_ema,
    micro_batch_seed,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    prepare_with_schedule,
    register_checkpoint_hooks,
    resume,
    run_training,
    step_progress,
    time_is_up,
    unit_interval,
    weights_digest,
)
from diffusers_brics.training.hub import push_to_hub, write_model_card

logger = get_logger(__name__)

# UNet presets: the paper's LDM-like UNet (supp. A.5) and small ones for CPU runs.
UNET_PRESETS = {
    "paper": dict(block_out_channels=(256, 512, 768, 1024), layers_per_block=2, attention_resolutions=(32, 16, 8)),
    "small": dict(block_out_channels=(64, 128, 192), layers_per_block=2, attention_resolutions=(4,)),
    "tiny": dict(block_out_channels=(16, 32), layers_per_block=1, attention_resolutions=(4,)),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--autoencoder", required=True, help="a trained BRICSAutoencoder: local folder or Hub id")
    p.add_argument("--autoencoder_subfolder", default=None, help="e.g. 'autoencoder' for a stage-1 output folder")
    data = add_common_arguments(p, output_dir="brics-diffusion", ema_max_decay=0.9999)["data"]
    data.add_argument("--center_crop", action="store_true", help="with --encode_on_the_fly (cached codes always are)")
    data.add_argument("--random_flip", action="store_true", help="also cache the key codes of flipped images")
    data.add_argument("--encode_on_the_fly", action="store_true", help="encode every batch instead of caching")
    data.add_argument("--encode_batch_size", type=positive_int, default=64)
    data.add_argument("--class_column", default=None,
                      help="train a class-conditional UNet on this column (an imagefolder's 'label'; 'category' of the "
                           "embedded emoji)")
    model = p.add_argument_group("model")
    model.add_argument("--unet_preset", default="small", choices=sorted(UNET_PRESETS))
    model.add_argument("--schedule", choices=["cosine-variant", "cosine"], default="cosine-variant")
    model.add_argument("--snr_gamma", type=non_negative_float, default=None,
                       help="min-SNR loss weighting, 0 for none (default: 5 with --schedule cosine, paper config a; "
                       "none with cosine-variant, config b)")
    model.add_argument("--num_train_timesteps", type=positive_int, default=1000)
    train = p.add_argument_group("training")
    train.add_argument("--train_batch_size", type=positive_int, default=64)
    train.add_argument("--num_epochs", type=positive_int, default=100)
    train.add_argument("--max_train_steps", type=positive_int)
    train.add_argument("--learning_rate", type=positive_float, default=8e-5,
                       help="the release's command: 8e-5 (the paper's table: 8e-4)")
    train.add_argument("--lr_scheduler", default="cosine", choices=[t.value for t in SchedulerType])
    train.add_argument("--lr_warmup_steps", type=non_negative_int, default=500)
    train.add_argument("--adam_beta1", type=unit_interval, default=0.9)
    train.add_argument("--adam_beta2", type=unit_interval, default=0.999)
    train.add_argument("--adam_weight_decay", type=non_negative_float, default=0.0)
    train.add_argument("--adam_epsilon", type=positive_float, default=1e-8)
    train.add_argument("--max_grad_norm", type=positive_float, default=1.0)
    log = p.add_argument_group("validation")
    log.add_argument("--validation_steps", type=positive_int, default=1000)
    log.add_argument("--num_validation_images", type=positive_int, default=8)
    log.add_argument("--num_inference_steps", type=positive_int, default=100)
    args = p.parse_args(argv)
    check_common_arguments(p, args)
    if args.snr_gamma is None:
        args.snr_gamma = 5.0 if args.schedule == "cosine" else 0.0
    if args.num_inference_steps > args.num_train_timesteps:
        p.error(f"--num_inference_steps {args.num_inference_steps} exceeds --num_train_timesteps {args.num_train_timesteps}")
    return args


def build_unet(args, vae: BRICSAutoencoder, num_classes: int | None = None) -> UNet2DModel:
    """An LDM-like UNet on key codes: attention at the configured resolutions where the code is that large; with
    ``num_classes``, a class embedding added to the timestep embedding."""
    preset = UNET_PRESETS[args.unet_preset]
    channels, size = preset["block_out_channels"], vae.config.latent_size
    down, up = [], []
    for level in range(len(channels)):
        attention = (size // 2**level) in preset["attention_resolutions"]
        down.append("AttnDownBlock2D" if attention else "DownBlock2D")
        up.insert(0, "AttnUpBlock2D" if attention else "UpBlock2D")
    if size % 2 ** (len(channels) - 1):
        raise ValueError(f"key codes of size {size} cannot be halved {len(channels) - 1} times by --unet_preset {args.unet_preset}")
    return UNet2DModel(
        sample_size=size, in_channels=vae.latent_channels, out_channels=vae.latent_channels,
        block_out_channels=channels, layers_per_block=preset["layers_per_block"], down_block_types=tuple(down),
        up_block_types=tuple(up), norm_num_groups=min(32, channels[0]), attention_head_dim=max(8, channels[0] // 8),
        num_class_embeds=num_classes,
    )


def build_scheduler(args) -> DDPMScheduler:
    if args.schedule == "cosine-variant":
        return DDPMScheduler(num_train_timesteps=args.num_train_timesteps, prediction_type="epsilon", clip_sample=False,
                             trained_betas=cosine_variant_betas(args.num_train_timesteps).tolist())
    return DDPMScheduler(num_train_timesteps=args.num_train_timesteps, prediction_type="epsilon", clip_sample=False,
                         beta_schedule="squaredcos_cap_v2")


@torch.no_grad()
def encode_dataset(vae: BRICSAutoencoder, dataset, column: str, transform, batch_size: int, flip: bool, device,
                   labels: list[int] | None = None):
    """Key codes of every image, then (with ``flip``) of every mirror image, as a ``datasets.Dataset`` of arrays,
    with the class label of each image when ``labels`` are given."""
    import datasets

    vae.eval()
    codes, mirrored = [], []
    for start in tqdm(range(0, len(dataset), batch_size), desc="encoding key codes"):
        rows = dataset[start : start + batch_size][column]
        images = torch.stack([transform(image) for image in rows]).to(device, vae.dtype)
        codes.append(vae.encode(images).latents.float().cpu())
        if flip:
            mirrored.append(vae.encode(images.flip(-1)).latents.float().cpu())
    columns = {"key_codes": torch.cat(codes + mirrored).numpy()}
    if labels is not None:
        columns["class_labels"] = labels * (2 if flip else 1)
    return datasets.Dataset.from_dict(columns).with_format("torch")


def load_autoencoder(name_or_path: str, subfolder: str | None) -> BRICSAutoencoder:
    """The trained stage-1 autoencoder from a local folder or a Hub repo, or a FileNotFoundError naming the flag."""
    try:
        return BRICSAutoencoder.from_pretrained(name_or_path, subfolder=subfolder)
    except OSError as error:  # diffusers reports a missing folder as a failed Hub download
        where = f"--autoencoder {name_or_path!r}" + (f" with --autoencoder_subfolder {subfolder!r}" if subfolder else "")
        raise FileNotFoundError(
            f"{where}: no BRICSAutoencoder found, neither as a local folder holding config.json and the weights "
            f"(a stage-1 output folder needs --autoencoder_subfolder autoencoder) nor as a Hub repo ({error})"
        ) from error


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run_training(train, args, make_accelerator(args, "train_brics_diffusion"))


def train(args: argparse.Namespace, accelerator: Accelerator) -> None:
    """The whole run on every process; the main process also saves, evaluates and publishes the result."""
    vae = load_autoencoder(args.autoencoder, args.autoencoder_subfolder).to(accelerator.device)
    vae.requires_grad_(False).eval()
    resolution = vae.config.sample_size
    with accelerator.main_process_first():
        train_set, _ = load_image_datasets(args.dataset_name, args.dataset_config_name, args.train_data_dir,
                                           resolution, args.cache_dir, hold_out=False)
    column = image_column_of(train_set, args.image_column)
    train_set = undecoded(train_set, column)
    labels, class_names = class_labels_of(train_set, args.class_column) if args.class_column else (None, None)
    # Cached codes come from centre crops; random crops only when encoding on the fly.
    transform = image_transform(resolution, center_crop=args.center_crop or not args.encode_on_the_fly)
    examples = len(train_set) * (2 if args.random_flip and not args.encode_on_the_fly else 1)
    if examples < args.train_batch_size * accelerator.num_processes:
        raise ValueError(f"{examples} training examples, fewer than one batch of --train_batch_size "
                         f"{args.train_batch_size} per process on {accelerator.num_processes} process(es)")

    if args.encode_on_the_fly:
        def collate(rows):
            batch = {"images": torch.stack([transform(row[column]) for row in rows])}
            if labels is not None:
                batch["class_labels"] = torch.tensor([row["class_label_id"] for row in rows])
            return batch

        dataset = train_set if labels is None else train_set.add_column("class_label_id", labels)
    else:
        cache = os.path.join(args.output_dir, "key_codes")
        with accelerator.main_process_first():
            import datasets

            record = key_code_cache_record(args, vae, column, len(train_set))
            if os.path.isdir(cache):
                check_key_code_cache(cache, record)
                codes = datasets.load_from_disk(cache).with_format("torch")
                logger.info(f"reusing {len(codes)} cached key codes from {cache}")
            elif accelerator.is_main_process:
                codes = encode_dataset(vae, train_set, column, transform, args.encode_batch_size, args.random_flip,
                                       accelerator.device, labels)
                codes.save_to_disk(cache + ".partial")
                with open(os.path.join(cache + ".partial", CACHE_RECORD), "w") as f:
                    json.dump(record, f, indent=2)
                os.replace(cache + ".partial", cache)
            else:
                codes = datasets.load_from_disk(cache).with_format("torch")

        def collate(rows):
            batch = {"codes": torch.stack([row["key_codes"] for row in rows])}
            if labels is not None:
                batch["class_labels"] = torch.stack([row["class_labels"] for row in rows])
            return batch

        dataset = codes
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.train_batch_size, shuffle=True, drop_last=True,
                                         collate_fn=collate)

    unet = build_unet(args, vae, len(class_names) if class_names else None)
    noise_scheduler = build_scheduler(args)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                  weight_decay=args.adam_weight_decay, eps=args.adam_epsilon)
    unet, optimizer, loader, lr_scheduler, steps_per_epoch, max_steps = prepare_with_schedule(
        accelerator, args, unet, optimizer, loader)
    ema = make_ema(accelerator, unet, args)
    register_checkpoint_hooks(accelerator, "unet", ema)
    global_step, first_epoch, skip = resume(accelerator, args, steps_per_epoch, lr_scheduler)

    alphas_cumprod = noise_scheduler.alphas_cumprod.to(accelerator.device)
    generator = torch.Generator()
    progress = step_progress(accelerator, args, max_steps, global_step)
    epoch, start_time, micro_step, step_logs = first_epoch, time.monotonic(), 0, StepLogs()
    while global_step < max_steps:
        loader.set_epoch(epoch)
        batches = accelerator.skip_first_batches(loader, skip) if skip else loader
        skip = 0
        for batch in batches:
            generator.manual_seed(micro_batch_seed(args, global_step, micro_step, accelerator.process_index))
            if "codes" in batch:
                codes = batch["codes"]
            else:
                images = batch["images"].to(accelerator.device)
                if args.random_flip:
                    flip = (torch.rand(images.shape[0], generator=generator) < 0.5).view(-1, 1, 1, 1).to(images.device)
                    images = torch.where(flip, images.flip(-1), images)
                with torch.no_grad():
                    codes = vae.encode(images.to(vae.dtype)).latents
            # key codes [0, 1] -> diffusion space (by default [-1, 1])
            x0 = ((codes.float() - vae.config.shift_factor) * vae.config.scaling_factor).to(accelerator.device)
            noise = torch.randn(x0.shape, generator=generator).to(x0.device)
            timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (x0.shape[0],),
                                      generator=generator).to(x0.device)
            noisy = noise_scheduler.add_noise(x0, noise, timesteps)
            with accelerator.accumulate(unet):
                class_ids = batch["class_labels"].to(x0.device) if "class_labels" in batch else None
                prediction = unet(noisy, timesteps, class_labels=class_ids).sample
                loss = F.mse_loss(prediction.float(), noise, reduction="none").mean(dim=(1, 2, 3))
                if args.snr_gamma:
                    loss = loss * min_snr_weights(alphas_cumprod, timesteps, args.snr_gamma)
                loss = loss.mean()
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm:
                    accelerator.clip_grad_norm_(unet.parameters(), args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            step_logs.add({"loss": loss.item()})
            if not accelerator.sync_gradients:
                micro_step += 1
                continue
            micro_step = 0
            if ema is not None:
                ema.step(accelerator.unwrap_model(unet).parameters())
            global_step += 1
            progress.update(1)
            logs = {**step_logs.reduce(accelerator), "lr": lr_scheduler.get_last_lr()[0]}
            progress.set_postfix(loss=f"{logs['loss']:.4g}")
            accelerator.log(logs, step=global_step)
            if time_is_up(accelerator, args, start_time, global_step):
                max_steps = global_step
            if global_step % args.checkpointing_steps == 0 or global_step == max_steps:
                save_checkpoint(accelerator, args.output_dir, global_step, args.checkpoints_total_limit)
            if accelerator.is_main_process and global_step % args.validation_steps == 0:
                sample_grid(args, accelerator, unet, ema, vae, noise_scheduler, global_step, class_names)
            if global_step >= max_steps:
                break
        epoch += 1
    progress.close()
    check_in_sync(accelerator, unet)
    if accelerator.is_main_process:
        pipeline = ema_pipeline(accelerator, unet, ema, vae, noise_scheduler, class_names)
        pipeline.save_pretrained(args.output_dir)
        sample_grid(args, accelerator, unet, ema, vae, noise_scheduler, global_step, class_names)
        data = args.dataset_name or args.train_data_dir or "the embedded emoji images (Google Noto Emoji, Apache-2.0)"
        write_model_card(
            args.output_dir,
            title="BRICS latent diffusion pipeline",
            description=(
                f"A `BRICSPipeline`: a UNet trained for {global_step} steps on the key codes of {data} "
                f"({vae.config.latent_size}x{vae.config.latent_size}x{vae.latent_channels}), decoded by a BRICS "
                f"autoencoder to {resolution}x{resolution} images ({time.monotonic() - start_time:.0f} s of training).\n\n"
                "```python\nfrom diffusers_brics import BRICSPipeline\n"
                f"pipe = BRICSPipeline.from_pretrained(\"{args.hub_model_id or args.output_dir}\")\n"
                + ("images = pipe(batch_size=4).images\n```" if not class_names else
                   f"images = pipe(batch_size=4, class_labels={class_names[:1]!r}).images\n```\n\n"
                   f"Classes (`--class_column {args.class_column}`): " + ", ".join(class_names))
            ),
            config={k: v for k, v in vars(args).items() if v is not None and k != "hub_token"},
            image="samples.png",
            dataset=args.dataset_name,
            tags=("diffusers", "brics", "image-generation" if class_names else "unconditional-image-generation"),
        )
        if args.push_to_hub:
            push_to_hub(args.output_dir, args.hub_model_id, token=args.hub_token, private=args.hub_private_repo)


def ema_pipeline(accelerator, unet, ema, vae, noise_scheduler, class_names: list[str] | None) -> BRICSPipeline:
    """The pipeline with the EMA UNet weights (the live weights without EMA) and the class names, if any."""
    return BRICSPipeline(unet=ema_copy(accelerator, unet, ema), scheduler=noise_scheduler, vae=vae,
                         id2label=dict(enumerate(class_names)) if class_names else None)


CACHE_RECORD = "brics_key_code_cache.json"


def key_code_cache_record(args, vae: BRICSAutoencoder, column: str, images: int) -> dict:
    """What cached key codes depend on; it is stored with them, and a cache made from anything else is refused."""
    source = args.dataset_name or args.train_data_dir
    return {
        "data": os.path.abspath(source) if source and os.path.exists(source) else source or "embedded emoji",
        "dataset_config_name": args.dataset_config_name,
        "image_column": column,
        "images": images,
        "random_flip": args.random_flip,
        "class_column": args.class_column,
        "autoencoder_sha256": weights_digest(vae),
    }


def check_key_code_cache(cache: str, record: dict) -> None:
    """Raise a ValueError if the key codes cached in ``cache`` were not made as ``record`` says this run would."""
    path = os.path.join(cache, CACHE_RECORD)
    stored = None
    if os.path.isfile(path):
        with open(path) as f:
            stored = json.load(f)
    if stored == record:
        return
    if stored is None:
        what = f"have no record of what they were encoded from ({CACHE_RECORD})"
    else:
        what = "were encoded with other " + ", ".join(
            f"{key} ({stored.get(key)!r}; this run: {value!r})" for key, value in record.items() if stored.get(key) != value
        )
    raise ValueError(f"the key codes cached in {cache} {what}: delete that folder to re-encode, or use another "
                     "--output_dir")


def sample_grid(args, accelerator, unet, ema, vae, noise_scheduler, step, class_names: list[str] | None) -> None:
    """Samples from fixed seeds (cycling through the classes of a conditional UNet), logged and saved as
    ``samples.png``."""
    pipeline = ema_pipeline(accelerator, unet, ema, vae, noise_scheduler, class_names)
    pipeline.set_progress_bar_config(disable=True)
    count = args.num_validation_images
    generators = [torch.Generator().manual_seed(seed) for seed in range(count)]
    classes = [i % len(class_names) for i in range(count)] if class_names else None
    images = pipeline(batch_size=count, generator=generators, num_inference_steps=args.num_inference_steps,
                      class_labels=classes).images
    grid = make_image_grid(images, rows=1, cols=len(images))
    grid.save(os.path.join(args.output_dir, "samples.png"))
    log_image(accelerator, "samples", grid, step)


if __name__ == "__main__":
    main()
