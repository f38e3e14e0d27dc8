"""The fastest CPU path for the embedded default's cartoon UNet: threads, channels_last, bf16, compile.

    python -m benchmarks.bench_cpu_paths [--steps 20] [--repeats 3] [--compile]

One training step (forward, v-prediction MSE, backward, AdamW) of params.yaml's train_cartoon model
(`class_embedding`: UNet2DModel (32, 64, 64), one layer per block, 16x16, batch 64, the one-hot
vector projected onto the time embedding) on in-memory batches, per variant:

  fp32, 1 thread / fp32, all threads (torch's default) / channels_last / bf16 autocast / torch.compile

Each variant runs `--repeats` times, interleaved so that load from other processes falls on all of
them; the best run of each is printed with its ratio to fp32 at torch's default threads. bf16 only
helps where the CPU has bf16 instructions (avx512_bf16 / AMX, printed); elsewhere it is emulated.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
import torch.nn.functional as F

from pipelines.cartoon import denoise


def cpu_flags() -> str:
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return "unknown"
    return ", ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags) or "none of avx2/avx512"


def build(channels_last: bool):
    """params.yaml's train_cartoon model, built by the stage's own code."""
    from tasks.cartoon.config import CartoonModelConfig
    from tasks.cartoon.schema import AttributeSchema
    from tasks.cartoon.train import build_unet_and_tau
    from tasks.config.params import stage_params
    from tasks.synthetic.cartoons import CARTOONSET_ATTRIBUTES

    section = stage_params("train_cartoon")
    model = CartoonModelConfig.from_params(section["model"], "train_cartoon.model")
    schema = AttributeSchema(*zip(*CARTOONSET_ATTRIBUTES))
    torch.manual_seed(0)
    unet, tau = build_unet_and_tau(model, schema, section["data"]["resolution"])
    if channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    return unet, tau, section["data"]["resolution"]


def run(variant: str, steps: int, batch: int, threads: int) -> float:
    torch.set_num_threads(threads)
    unet, proj, res = build(variant == "channels_last")
    fwd = torch.compile(unet) if variant == "compile" else unet
    opt = torch.optim.AdamW(list(unet.parameters()) + list(proj.parameters()), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(batch, 3, res, res, generator=g) * 2 - 1
    if variant == "channels_last":
        x0 = x0.contiguous(memory_format=torch.channels_last)
    onehot = torch.zeros(batch, proj.width)
    onehot[:, list(proj.offsets)] = 1
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if variant == "bf16" else contextlib.nullcontext()

    def step():
        noise, t = torch.randn(x0.shape, generator=g), torch.randint(0, 1000, (batch,), generator=g)
        alpha = torch.cos(t.float() / 1000 * torch.pi / 2).view(-1, 1, 1, 1)
        sigma = (1 - alpha**2).sqrt()
        with amp:
            pred = denoise(fwd, proj, alpha * x0 + sigma * noise, t, onehot)
        loss = F.mse_loss(pred.float(), alpha * noise - sigma * x0)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3 if variant != "compile" else 2):  # warm-up (and compilation)
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--compile", action="store_true", help="also torch.compile (minutes of compilation)")
    args = parser.parse_args()
    default_threads = torch.get_num_threads()
    variants = [
        ("fp32, 1 thread", "fp32", 1),
        (f"fp32, {default_threads} threads", "fp32", default_threads),
        ("channels_last", "channels_last", default_threads),
        ("bf16 autocast", "bf16", default_threads),
    ]
    if args.compile:
        variants.append(("torch.compile", "compile", default_threads))
    print(
        f"CPU flags: {cpu_flags()}; torch {torch.__version__}; batch {args.batch_size}, {args.steps} steps, "
        f"best of {args.repeats}"
    )
    best = {name: 0.0 for name, _, _ in variants}
    for _ in range(args.repeats):
        for name, variant, threads in variants:
            best[name] = max(best[name], run(variant, args.steps, args.batch_size, threads))
    base = best[f"fp32, {default_threads} threads"]
    for name, rate in best.items():
        print(f"{name:22s} {rate:8.1f} samples/s  {rate / base:5.2f}x")


if __name__ == "__main__":
    main()
