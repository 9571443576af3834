"""Trainer throughput: images/s of :func:`gpunet.train.train_candidate` against a plain timm training loop.

    .venv/bin/python benchmarks/trainer_throughput.py --images 4000 --epochs 2 --repeats 2 --threads 1

Same network (a `gpunet-tiny` architecture), same data (a class-balanced Fashion-MNIST subset through the same
transforms and DataLoader settings), same timm optimizer (RMSprop-TF) and ModelEmaV3. The plain loop is what a
timm user writes: forward, loss, backward, step, EMA update. Our trainer adds the epoch evaluation and the
atomic checkpoint, which are timed separately (see checkpoint_cost.py); the ratio compares the training loops'
images/s. Runs alternate (plain, ours, plain, ours, ...) and the median of each is reported.
Target (issue 5): ratio >= 0.95.
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
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--vector-seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    import torch
    from timm.optim import create_optimizer_v2
    from timm.utils import ModelEmaV3
    from torch import nn

    from gpunet.data import build_datasets
    from gpunet.model import build_model
    from gpunet.spec import load_spec, parse_training
    from gpunet.train import recipe_architecture, train_candidate

    torch.set_num_threads(args.threads)
    spec = load_spec(ROOT / "examples" / "fashion-mnist.yaml")
    training = parse_training({**spec.training.to_dict(), "epochs": args.epochs,
                               "dataset": {"kind": "fashion-mnist", "trainSubset": args.images, "valSubset": 1000}})
    space = spec.space()
    arch = space.decode(space.sample(1, seed=args.vector_seed)[0].tolist())
    datasets = build_datasets(training.dataset, training.recipe, arch.resolution, arch.in_chans)
    train_ds = datasets[0]
    r = training.recipe

    def plain() -> float:
        torch.manual_seed(0)
        model = build_model(recipe_architecture(arch, training, 10))
        opt = create_optimizer_v2(model, opt=r.optimizer, lr=r.lr, weight_decay=r.weight_decay, momentum=r.momentum, eps=r.opt_eps)
        ema = ModelEmaV3(model, decay=r.ema, use_warmup=True) if r.ema else None
        loss_fn = nn.CrossEntropyLoss()
        seen, spent, step = 0, 0.0, 0
        for epoch in range(args.epochs):
            loader = torch.utils.data.DataLoader(train_ds, batch_size=training.batch_size, shuffle=True, drop_last=True,
                                                 generator=torch.Generator().manual_seed(epoch))
            model.train()
            t0 = time.perf_counter()
            for x, y in loader:
                loss = loss_fn(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                if ema is not None:
                    ema.update(model, step=step)
                seen += y.numel()
            spent += time.perf_counter() - t0
        return seen / spent

    def ours() -> tuple[float, float]:
        reports = []
        with tempfile.TemporaryDirectory() as tmp:
            train_candidate(arch, training, Path(tmp) / "c.pt", on_epoch=lambda rep: reports.append(rep) or "continue",
                            datasets=datasets)
        per_epoch = (len(train_ds) // training.batch_size) * training.batch_size  # drop_last, as in the plain loop
        images = per_epoch * len(reports)
        loop_s = sum(per_epoch / rep.images_per_s for rep in reports)
        wall_s = sum(rep.epoch_s for rep in reports)
        return images / loop_s, images / wall_s

    results = {"plain": [], "ours": [], "ours_end_to_end": []}
    for _ in range(args.repeats):
        results["plain"].append(plain())
        loop, end_to_end = ours()
        results["ours"].append(loop)
        results["ours_end_to_end"].append(end_to_end)
    med = {k: statistics.median(v) for k, v in results.items()}
    summary = {"images": args.images, "epochs": args.epochs, "threads": args.threads, "resolution": arch.resolution,
               "params": sum(p.numel() for p in build_model(arch).parameters()),
               "plain_images_per_s": round(med["plain"], 1), "ours_images_per_s": round(med["ours"], 1),
               "ratio": round(med["ours"] / med["plain"], 3),
               "ours_end_to_end_images_per_s": round(med["ours_end_to_end"], 1),
               "runs": {k: [round(x, 1) for x in v] for k, v in results.items()}}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"plain timm loop: {summary['plain_images_per_s']} images/s; gpunet trainer loop: {summary['ours_images_per_s']} "
              f"images/s; ratio {summary['ratio']} (target >= 0.95)")
        print(f"gpunet trainer end to end (incl. top-1 evaluation of raw + EMA weights and the checkpoint): "
              f"{summary['ours_end_to_end_images_per_s']} images/s; runs {summary['runs']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
