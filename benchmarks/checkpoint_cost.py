"""Checkpoint cost per epoch, as a percentage of the epoch's time, and checkpoint sizes of GPUNet-scale models.

    .venv/bin/python benchmarks/checkpoint_cost.py --images 4000 --epochs 3

1. A `gpunet-tiny` candidate trained with the demo's recipe (examples/fashion-mnist.yaml) on a Fashion-MNIST
   subset: per epoch, the time of the atomic checkpoint (torch.save to a temporary file, fsync, rename) against
   the epoch's wall time (training + evaluation + checkpoint).
2. GPUNet-1 and GPUNet-2 (gpunet/archs/gpunet-*.json, ImageNet heads) with RMSprop-TF state and an EMA copy, i.e.
   what a trainer writes per epoch on ImageNet: size and save time. An ImageNet epoch of such a model takes
   minutes on 8 GPUs, so the percentage there is far lower than on the CPU demo.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=4000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    import copy

    import torch
    from timm.optim import create_optimizer_v2

    from gpunet.archs import released_path
    from gpunet.nvidia import load_architecture
    from gpunet.model import build_model
    from gpunet.spec import load_spec, parse_training
    from gpunet.train import save_checkpoint, train_candidate

    torch.set_num_threads(args.threads)
    spec = load_spec(ROOT / "examples" / "fashion-mnist.yaml")
    training = parse_training({**spec.training.to_dict(), "epochs": args.epochs,
                               "dataset": {"kind": "fashion-mnist", "trainSubset": args.images, "valSubset": 2000}})
    space = spec.space()
    arch = space.decode(space.sample(1, seed=0)[0].tolist())
    reports = []
    with tempfile.TemporaryDirectory() as tmp:
        train_candidate(arch, training, Path(tmp) / "c.pt", on_epoch=lambda rep: reports.append(rep) or "continue")
        tiny_mb = (Path(tmp) / "c.pt").stat().st_size / 1e6
    shares = [100 * rep.checkpoint_s / rep.epoch_s for rep in reports]
    out = {"tiny": {"epochs": len(reports), "epoch_s": [round(r.epoch_s, 2) for r in reports],
                    "checkpoint_ms": [round(1000 * r.checkpoint_s, 2) for r in reports], "checkpoint_mb": round(tiny_mb, 3),
                    "percent_of_epoch_median": round(statistics.median(shares), 3)}}
    for name in ("gpunet-1", "gpunet-2"):
        big = load_architecture(released_path(name))
        model = build_model(big)
        opt = create_optimizer_v2(model, opt="rmsproptf", lr=0.06, eps=1e-3)
        model(torch.zeros(2, 3, 64, 64)).sum().backward()
        opt.step()  # materialise the optimizer's state
        state = {"model": model.state_dict(), "ema": copy.deepcopy(model).state_dict(), "optimizer": opt.state_dict()}
        times = []
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(3):
                t0 = time.perf_counter()
                save_checkpoint(Path(tmp) / "c.pt", state)
                times.append(time.perf_counter() - t0)
            size = (Path(tmp) / "c.pt").stat().st_size / 1e6
        out[name] = {"params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2), "checkpoint_mb": round(size, 1),
                     "save_ms_median": round(1000 * statistics.median(times), 1)}
    if args.json:
        print(json.dumps(out))
    else:
        t = out["tiny"]
        print(f"gpunet-tiny candidate: checkpoint {t['checkpoint_mb']} MB, {t['checkpoint_ms']} ms per epoch of "
              f"{t['epoch_s']} s -> median {t['percent_of_epoch_median']}% of the epoch")
        for name in ("gpunet-1", "gpunet-2"):
            b = out[name]
            print(f"{name}: {b['params_m']} M params, checkpoint (weights + EMA + RMSprop state) {b['checkpoint_mb']} MB, "
                  f"save {b['save_ms_median']} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
