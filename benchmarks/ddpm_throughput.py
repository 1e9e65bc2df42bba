"""DDPM throughput: our training loop against a plain reference loop, and sampling speed per scheduler.

The reference is written the way diffusers' example `train_unconditional.py` trains (fp32, eager, AdamW,
EMA, DataLoader batches moved to the device each step). Ours is `defectgen.diffusion.training.train_loop` with
its speed-ups on (bf16, channels_last, torch.compile, fused AdamW where there is a GPU). Both train the same
UNet config on the same data, at each resolution, in one run; then sampling images/s for DDPM-1000, DDIM-50 and
DPM-Solver-20 (a full reverse trajectory, batch of --sample-batch).

    python benchmarks/ddpm_throughput.py --preset tiny --steps 20            # CPU smoke run
    python benchmarks/ddpm_throughput.py --preset base --steps 200           # GPU: the issue's configuration

Results go to benchmarks/results/ddpm_throughput_<device>_<preset>.json with the hardware named.

`--conditional DATA` instead measures the model and data path the proof trains: the class- and mask-conditional
DDPM on DATA's labeled/ and train/good (its examples as `train_ddpm` makes them: crops, flips, a Perlin mask drawn
for every normal), tiny preset, 64 px, batch 8. Three loops in one run: diffusers' example loop over the same
examples (a DataLoader, plain AdamW, per-tensor EMA), ours with the proof's settings, and ours with each CPU
option named in --variants. Run it from an older checkout too (copy this file there) for "before" figures:

    python benchmarks/ddpm_throughput.py --conditional ../shared/datasets/magnetic-tile --steps 60 --tag after
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import command_line, provenance  # noqa: E402
from defectgen.diffusion.ddpm import build_model  # noqa: E402
from defectgen.diffusion.losses import unconditional_loss  # noqa: E402
from defectgen.diffusion.samplers import perturb_and_denoise  # noqa: E402
from defectgen.diffusion.training import TrainConfig, train_loop  # noqa: E402


def make_images(n: int, resolution: int, seed: int = 0) -> torch.Tensor:
    """Smooth random textures in [-1, 1]: the same data for both loops."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 8, 8, generator=g)
    x = F.interpolate(low, size=(resolution, resolution), mode="bicubic", align_corners=False)
    return (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1) * 2 - 1


class TensorExamples:
    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self):
        return len(self.images)

    def example(self, index, rng):
        return {"image": self.images[index]}


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (Linux: KiB)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def example_step(loss: torch.Tensor, unet, opt, sched, ema) -> float:
    """The rest of a diffusers example step after the loss: backward, clipping, AdamW, schedule, EMA."""
    loss.backward()
    torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
    opt.step()
    sched.step()
    opt.zero_grad()
    ema.step(unet.parameters())
    return loss.item()


def reference_loop(preset: str, resolution: int, images: torch.Tensor, steps: int, warmup: int, batch: int,
                   device: torch.device) -> dict:
    """train_unconditional.py's inner loop: fp32, eager, AdamW, EMA, a DataLoader, loss.backward()."""
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    torch.manual_seed(0)
    model = build_model("ddpm", resolution, 3, preset)
    unet, noise_scheduler = model.unet.to(device).train(), model.scheduler
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    sched = get_scheduler("cosine", opt, num_warmup_steps=0, num_training_steps=steps + warmup)
    ema = EMAModel(unet.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=3 / 4)
    ema.to(device)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images), batch_size=batch, shuffle=True,
                                         drop_last=True)
    losses, t0, done = [], None, 0
    reset_peak(device)
    while done < steps + warmup:
        for (x0,) in loader:
            if done == warmup:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
            x0 = x0.to(device)
            noise = torch.randn(x0.shape, device=device)
            t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (x0.shape[0],), device=device)
            loss = F.mse_loss(unet(noise_scheduler.add_noise(x0, noise, t), t).sample, noise)
            losses.append(example_step(loss, unet, opt, sched, ema))
            done += 1
            if done >= steps + warmup:
                break
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    return {"images_per_s": steps * batch / seconds, "seconds": seconds, "peak_memory_mb": peak_memory_mb(device),
            "final_loss": float(np.mean(losses[-max(1, steps // 5):]))}


def our_loop(preset: str, resolution: int, images: torch.Tensor, steps: int, warmup: int, batch: int,
             device: torch.device, fast: bool) -> dict:
    torch.manual_seed(0)
    model = build_model("ddpm", resolution, 3, preset)
    cfg = TrainConfig(steps=steps + warmup, batch_size=batch, lr=1e-4, warmup_steps=0, checkpoint_every=0,
                      progress=False, mixed_precision="bf16" if fast else "no", channels_last=fast, compile=fast,
                      fused_optimizer=fast, log_every=10**9)
    times, losses = [], []

    def callback(step, loss):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter())
        losses.append(loss)

    reset_peak(device)
    with tempfile.TemporaryDirectory() as tmp:
        train_loop(model.unet, unconditional_loss(model.scheduler), TensorExamples(images), tmp, cfg,
                   save_fn=lambda m, p: None, callback=callback, log=lambda m: None)
    seconds = times[-1] - times[warmup - 1]
    return {"images_per_s": steps * batch / seconds, "seconds": seconds, "peak_memory_mb": peak_memory_mb(device),
            "final_loss": float(np.mean(losses[-max(1, steps // 5):])),
            "settings": {"mixed_precision": cfg.mixed_precision, "channels_last": cfg.channels_last,
                         "compile": cfg.compile, "fused_optimizer": fast}}


def sampling(preset: str, resolution: int, batch: int, device: torch.device, plans) -> dict:
    torch.manual_seed(0)
    model = build_model("ddpm", resolution, 3, preset)
    unet = model.unet.to(device).eval()
    x0 = torch.zeros(batch, 3, resolution, resolution, device=device)
    mask = torch.ones(batch, 1, resolution, resolution, device=device)  # strength 1 + full mask: a full trajectory
    results = {}
    for sampler, steps in plans:
        perturb_and_denoise(unet, model.scheduler, x0, mask, list(range(batch)), 1.0, 0.0, sampler, 2)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        perturb_and_denoise(unet, model.scheduler, x0, mask, list(range(batch)), 1.0, 0.0, sampler, steps)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        results[f"{sampler}-{steps}"] = {"images_per_s": batch / seconds, "seconds": seconds, "batch": batch}
    return results


class _Examples(torch.utils.data.Dataset):
    """Conditional examples for a DataLoader, as diffusers' example scripts feed theirs: made item by item."""

    def __init__(self, data):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.data.example(i, np.random.default_rng(i))


def conditional_model(data_root: Path, resolution: int, preset: str):
    """The proof's conditional DDPM and its training examples, built the way `train_ddpm` builds them."""
    from defectgen.diffusion.data import read_training_samples
    from defectgen.diffusion.ddpm import ConditionalDdpm

    normals, labeled = read_training_samples(data_root / "train" / "good", data_root / "labeled")
    torch.manual_seed(0)
    model = ConditionalDdpm.build(resolution, 1, preset, sorted({s.class_name or "defect" for s in labeled}))
    return model, model.examples(normals, labeled, "random", 0)


def conditional_reference(data_root: Path, resolution: int, preset: str, steps: int, warmup: int,
                          batch: int) -> dict:
    """diffusers' example loop (train_unconditional.py's structure) on the conditional model and examples."""
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    model, data = conditional_model(data_root, resolution, preset)
    unet, loss_fn = model.module().train(), model.loss(0.1)
    opt = torch.optim.AdamW(unet.parameters(), lr=5e-4, weight_decay=1e-6)
    sched = get_scheduler("cosine", opt, num_warmup_steps=0, num_training_steps=steps + warmup)
    ema = EMAModel(unet.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=3 / 4)
    loader = torch.utils.data.DataLoader(_Examples(data), batch_size=batch, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(0))
    losses, t0, done = [], None, 0
    while done < steps + warmup:
        for b in loader:
            if done == warmup:
                t0 = time.perf_counter()
            losses.append(example_step(loss_fn(unet, b), unet, opt, sched, ema))
            done += 1
            if done >= steps + warmup:
                break
    seconds = time.perf_counter() - t0
    return {"images_per_s": steps * batch / seconds, "seconds": seconds,
            "loss_mean": float(np.mean(losses[warmup:])), "loss_curve": loss_curve(losses)}


def loss_curve(losses: list[float], window: int = 25) -> list[float]:
    """Mean loss per `window` steps: what "keeps the loss curve" compares between two loops."""
    return [float(np.mean(losses[i:i + window])) for i in range(0, len(losses), window)]


def conditional_ours(data_root: Path, resolution: int, preset: str, steps: int, warmup: int, batch: int,
                     **options) -> dict:
    """`train_loop` on the conditional model and examples, with the proof's settings plus `options`."""
    model, data = conditional_model(data_root, resolution, preset)
    cfg = TrainConfig(steps=steps + warmup, batch_size=batch, lr=5e-4, warmup_steps=0, checkpoint_every=0,
                      checkpoint_minutes=0, progress=False, log_every=10**9, **options)
    times, losses = [], []

    def callback(step, loss):
        times.append(time.perf_counter())
        losses.append(loss)

    with tempfile.TemporaryDirectory() as tmp:
        train_loop(model.module(), model.loss(0.1), data, tmp, cfg, save_fn=lambda m, p: None, callback=callback,
                   log=lambda m: None)
    seconds = times[-1] - times[warmup - 1]
    return {"images_per_s": steps * batch / seconds, "seconds": seconds, "loss_mean": float(np.mean(losses[warmup:])),
            "loss_curve": loss_curve(losses), "options": options}


def conditional_main(args) -> None:
    """--conditional: the reference loop, ours as the proof runs it, and ours with each variant, in one run."""
    named = {"channels_last": {"channels_last": True}, "bf16": {"mixed_precision": "bf16"},
             "channels_last+bf16": {"channels_last": True, "mixed_precision": "bf16"}}
    variants = {"proof settings": {}}
    for v in args.variants:
        name, _, value = v.partition("=")
        variants[name] = json.loads(value) if value else named[name]
    report = {"benchmark": "ddpm_throughput", "mode": "conditional", "tag": args.tag, "data": args.conditional.name,
              "preset": args.preset, "resolution": args.resolutions[0], **provenance(torch.device("cpu")),
              "batch_size": args.batch_size, "timed_steps": args.steps, "warmup_steps": args.warmup,
              "command": command_line("benchmarks/ddpm_throughput.py", sys.argv[1:]), "results": {}}
    out = args.out or Path(__file__).parent / "results" / (
        f"ddpm_throughput_cpu_conditional{'_' + args.tag if args.tag else ''}.json")
    runs = {"reference (diffusers example loop)": lambda: conditional_reference(
        args.conditional, args.resolutions[0], args.preset, args.steps, args.warmup, args.batch_size)}
    for name, options in variants.items():
        runs[f"defectgen: {name}"] = lambda o=options: conditional_ours(
            args.conditional, args.resolutions[0], args.preset, args.steps, args.warmup, args.batch_size, **o)
    for name, fn in runs.items():
        report["results"][name] = fn()
        print(name, json.dumps(report["results"][name]), flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="base", choices=["tiny", "small", "base"])
    ap.add_argument("--resolutions", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--steps", type=int, default=100, help="timed training steps per loop")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation, allocator)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--images", type=int, default=256, help="size of the synthetic training set")
    ap.add_argument("--sample-batch", type=int, default=8)
    ap.add_argument("--samplers", nargs="+", default=["ddpm:1000", "ddim:50", "dpm:20"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--conditional", type=Path, default=None,
                    help="an MVTec-layout dataset with labeled/: time the proof's conditional DDPM on it")
    ap.add_argument("--variants", nargs="*", default=["channels_last", "bf16"],
                    help="--conditional: our loop again with these options (channels_last, bf16, "
                    "channels_last+bf16, or NAME={json TrainConfig fields})")
    ap.add_argument("--tag", default="", help="--conditional: suffix of the result file")
    args = ap.parse_args()
    if args.conditional is not None:
        if args.preset == "base" and "--preset" not in sys.argv:
            args.preset = "tiny"
        if "--resolutions" not in sys.argv:
            args.resolutions = [64]
        if "--batch-size" not in sys.argv:
            args.batch_size = 8
        return conditional_main(args)
    device = torch.device(args.device)
    fast = device.type == "cuda"  # bf16/compile/fused are GPU features; on a CPU both loops run fp32 eager
    plans = [(s.split(":")[0], int(s.split(":")[1])) for s in args.samplers]
    report = {"benchmark": "ddpm_throughput", "preset": args.preset, **provenance(device),
              "batch_size": args.batch_size, "timed_steps": args.steps, "warmup_steps": args.warmup,
              "results": {}}
    out = args.out or Path(__file__).parent / "results" / f"ddpm_throughput_{device.type}_{args.preset}.json"
    if out.is_file():  # keep results of other resolutions from earlier runs of the same preset and device
        previous = json.loads(out.read_text())
        report["results"] = {k: v for k, v in previous.get("results", {}).items()
                             if k not in {str(r) for r in args.resolutions}}
    for r in args.resolutions:
        images = make_images(args.images, r)
        ref = reference_loop(args.preset, r, images, args.steps, args.warmup, args.batch_size, device)
        ours = our_loop(args.preset, r, images, args.steps, args.warmup, args.batch_size, device, fast)
        samp = sampling(args.preset, r, args.sample_batch, device, plans)
        report["results"][str(r)] = {"train_reference": ref, "train_defectgen": ours,
                                     "speedup": ours["images_per_s"] / ref["images_per_s"], "sampling": samp,
                                     "batch_size": args.batch_size, "timed_steps": args.steps}
        print(json.dumps({r: report["results"][str(r)]}, indent=1), flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")  # after every resolution: partial runs still count
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
