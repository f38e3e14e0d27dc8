"""The scale profiles' training step, measured: samples/s, peak memory, FLOPs and model FLOPs utilisation,
and what caching latents saves against encoding with SD's VAE at every step.

    python -m benchmarks.bench_scale [--device cuda] [--steps 200] [--only cartoon|ldm|latents]
                                     [--ldm-width 1.0] [--compile]

- cartoon: configs/cartoon_seed.yaml's `UNet2DConditionModel` + Tau module (117M + 1.4M parameters), 64 px,
  its batch, v-prediction target, AdamW.
- ldm: configs/ffhq256_ldm.yaml's `UNet2DModel` on 32x32x4 latents, its batch.
- latents: the same LDM step on cached latents against (SD-config `AutoencoderKL` encode of 256 px images
  + the step), same batch: the ratio is what encode_latents saves per step; plus encode images/s.
  SD's VAE architecture (sd-vae-ft-mse's config) is built with random weights: a network's cost does not
  depend on its weights, and nothing is downloaded.

On CUDA the step runs under bf16 autocast (the profiles' precision); on CPU in float32. `--ldm-width`
scales the LDM's channels (0.25 on a CPU: memory and minutes), printed with the figures. Synthetic
inputs (random images, attributes, latents): these are throughput figures, not a training run; the
project's engine adds data loading, EMA and logging on top (benchmarks/bench_train.py measures those).
MFU = counted FLOPs per step (torch's FlopCounterMode: matmuls, convolutions, attention; forward and
backward) / step time / the device's dense bf16 peak (`--peak-tflops`, default 989 for H100/H200 SXM).
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
SD_VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    layers_per_block=2,
    norm_num_groups=32,
    block_out_channels=[128, 256, 512, 512],
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    sample_size=256,
)  # stabilityai/sd-vae-ft-mse


def profile(name: str) -> dict:
    return yaml.safe_load((ROOT / "configs" / name).read_text())


def autocast(device: str):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else contextlib.nullcontext()


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def cartoon_model(device: str):
    from diffusers import UNet2DConditionModel

    from pipelines.cartoon import AttributeTau
    from tasks.synthetic.cartoons import CARTOONSET_ATTRIBUTES

    cfg = profile("cartoon_seed.yaml")["train_cartoon"]
    m, res = cfg["model"], cfg["data"]["resolution"]
    names, counts = zip(*CARTOONSET_ATTRIBUTES)
    unet = UNet2DConditionModel(
        sample_size=res,
        in_channels=3,
        out_channels=3,
        block_out_channels=m["block_out_channels"],
        layers_per_block=m["layers_per_block"],
        down_block_types=m["down_block_types"],
        up_block_types=m["up_block_types"],
        norm_num_groups=m["norm_num_groups"],
        attention_head_dim=m["attention_head_dim"],
        cross_attention_dim=m["cross_attention_dim"],
        only_cross_attention=m["only_cross_attention"],
    ).to(device)
    tau = AttributeTau(
        names,
        counts,
        num_tokens=m["tau_tokens"],
        cross_attention_dim=m["cross_attention_dim"],
        depth=m["tau_depth"],
        hidden_dim=m["tau_hidden_dim"],
    ).to(device)
    batch = cfg["data"]["batch_size"]
    x0 = torch.rand(batch, 3, res, res, device=device) * 2 - 1
    onehot = torch.zeros(batch, sum(counts), device=device)
    onehot[:, torch.randint(0, sum(counts), (18,))] = 1

    def loss():
        noise, t = torch.randn_like(x0), torch.randint(0, 1000, (batch,), device=device)
        alpha = torch.cos(t.float() / 1000 * torch.pi / 2).view(-1, 1, 1, 1)
        sigma = (1 - alpha**2).sqrt()
        pred = unet(alpha * x0 + sigma * noise, t, encoder_hidden_states=tau(onehot)).sample
        return F.mse_loss(pred.float(), alpha * noise - sigma * x0)  # v-prediction, as the profile trains

    return [unet, tau], loss, batch


def ldm_unet(device: str, width: float):
    from diffusers import UNet2DModel

    m = profile("ffhq256_ldm.yaml")["train_ldm"]["model"]
    channels = [max(32, int(c * width) // 32 * 32) for c in m["block_out_channels"]]
    return UNet2DModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=channels,
        layers_per_block=m["layers_per_block"],
        down_block_types=m["down_block_types"],
        up_block_types=m["up_block_types"],
        attention_head_dim=m["attention_head_dim"],
        norm_num_groups=m["norm_num_groups"],
    ).to(device), channels


def ldm_model(device: str, width: float, vae=None, batch: int | None = None):
    """The LDM step on cached latents, or (with `vae`) on 256 px images encoded at every step."""
    unet, channels = ldm_unet(device, width)
    batch = batch or profile("ffhq256_ldm.yaml")["train_ldm"]["data"]["batch_size"]
    latents = torch.randn(batch, 4, 32, 32, device=device)
    images = torch.rand(batch, 3, 256, 256, device=device) * 2 - 1

    def loss():
        if vae is None:
            z = latents
        else:
            with torch.no_grad():
                z = vae.encode(images).latent_dist.sample() * 0.18215
        noise, t = torch.randn_like(z), torch.randint(0, 1000, (batch,), device=device)
        return F.mse_loss(unet(z + noise, t).sample.float(), noise)

    return [unet], loss, batch, channels


def measure(modules, loss_fn, batch: int, steps: int, device: str, compile_: bool, peak_tflops: float) -> dict:
    params = [p for m in modules for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-4)
    if compile_:
        for m in modules:
            m.forward = torch.compile(m.forward)

    def step():
        with autocast(device):
            loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):  # warm-up: allocator, cuDNN autotune, compilation
        step()
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    seconds = (time.perf_counter() - start) / steps
    out = {
        "parameters_M": sum(p.numel() for p in params) / 1e6,
        "batch": batch,
        "step_ms": seconds * 1e3,
        "samples_per_s": batch / seconds,
        "tflop_per_step": flops / 1e12,
        "achieved_tflops": flops / seconds / 1e12,
    }
    if device == "cuda":
        out["peak_memory_GiB"] = torch.cuda.max_memory_allocated() / 2**30
        out["mfu"] = flops / seconds / (peak_tflops * 1e12)
    else:
        out["max_rss_GiB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return out


def encode_rate(vae, batch: int, steps: int, device: str) -> float:
    images = torch.rand(batch, 3, 256, 256, device=device) * 2 - 1
    with torch.no_grad(), autocast(device):
        vae.encode(images)
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            _ = vae.encode(images).latent_dist.mean
        sync(device)
    return batch * steps / (time.perf_counter() - start)


def show(name: str, r: dict) -> None:
    print(
        f"{name:28s} " + "  ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--only", choices=["cartoon", "ldm", "latents"], default=None)
    parser.add_argument("--ldm-width", type=float, default=1.0, help="scale the LDM's channels (CPU: 0.25)")
    parser.add_argument("--batch-size", type=int, default=None, help="LDM/latents batch (default: the profile's)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the models' forward")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the device")
    args = parser.parse_args()
    dev = args.device
    torch.manual_seed(0)
    if dev == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        print(torch.cuda.get_device_name(), "torch", torch.__version__, "bf16 autocast", "compile" * args.compile)
    if args.only in (None, "cartoon"):
        modules, loss, batch = cartoon_model(dev)
        show("cartoon seed profile", measure(modules, loss, batch, args.steps, dev, args.compile, args.peak_tflops))
        del modules, loss
    if args.only in (None, "ldm"):
        modules, loss, batch, ch = ldm_model(dev, args.ldm_width, batch=args.batch_size)
        show(f"ldm ffhq256 {ch}", measure(modules, loss, batch, args.steps, dev, args.compile, args.peak_tflops))
        del modules, loss
    if args.only in (None, "latents"):
        from diffusers import AutoencoderKL

        vae = AutoencoderKL(**SD_VAE).to(dev).eval().requires_grad_(False)
        enc = sum(p.numel() for n, p in vae.named_parameters() if n.startswith(("encoder", "quant_conv"))) / 1e6
        steps = max(2, args.steps // 10)
        modules, loss, batch, ch = ldm_model(dev, args.ldm_width, batch=args.batch_size)
        cached = measure(modules, loss, batch, steps, dev, False, args.peak_tflops)
        modules, loss, batch, ch = ldm_model(dev, args.ldm_width, vae=vae, batch=args.batch_size)
        online = measure(modules, loss, batch, steps, dev, False, args.peak_tflops)
        rate = encode_rate(vae, batch, steps, dev)
        print(f"latents: SD-config VAE encoder {enc:.1f}M params, 256 px -> 32x32x4, LDM {ch}, batch {batch}")
        print(f"  cached latents   {cached['samples_per_s']:9.1f} samples/s")
        print(f"  encode each step {online['samples_per_s']:9.1f} samples/s")
        print(f"  ratio            {cached['samples_per_s'] / online['samples_per_s']:9.2f}x")
        print(f"  encode alone     {rate:9.1f} images/s")


if __name__ == "__main__":
    main()
