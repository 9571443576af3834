"""Benchmark: FLOPs vs our latency table as predictors of measured end-to-end latency (issue 12, part 4).

EfficientNet-X (Li et al., CVPR 2021, papers 001/002) argues that FLOPs are a poor latency proxy: off by up to
400% on matrix/tensor machines. GPUNet's answer is the per-layer latency table (paper 3.2). This script
Sobol-samples N networks of a preset (default ``gpunet``, Table 1), counts each one's FLOPs
(``torch.utils.flop_counter.FlopCounterMode`` via :func:`gpunet.model.model_stats`; a multiply-add is 2
FLOPs), measures its layers into a latency table and the whole network end to end (ONNX Runtime, CPU, one
thread; with ``--backend torch --device cuda --precision fp16`` torch CUDA FP16), and prints for each
predictor:

- Spearman's rho and Kendall's tau against the measured latency (rank agreement; a monotone rescaling of the
  predictor does not change them);
- the mean and the worst relative error ``|predicted - measured| / measured`` after mapping the predictor to
  ms with a linear fit ``a * x + b`` (least squares on relative error, :func:`gpunet.latency.fit_calibration`),
  each network predicted by a fit on the *other* networks (leave-one-out), so both predictors get the same,
  honest treatment; and for the table also the raw sum (no fit), the paper's estimate.

The table is built and the networks measured by ``latency_fidelity.measure_sample`` (the same procedure as
``benchmarks/latency_fidelity.py``); networks are timed in groups of ``--group`` with their runs interleaved.

    .venv/bin/python benchmarks/flops_vs_latency.py -n 30 [--preset gpunet] [--runs 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency_fidelity import measure_sample  # noqa: E402

from gpunet.latency import LatencyTable, fit_calibration, get_backend, leave_one_out  # noqa: E402
from gpunet.latency.estimate import layer_latencies  # noqa: E402
from gpunet.space import load_space  # noqa: E402


def predictor_report(name: str, values: np.ndarray, measured: np.ndarray, *, raw_ms: bool) -> dict:
    """Rank agreement and relative errors of one predictor (an ``n`` array) against ``measured`` (ms).

    ``raw_ms``: the values are already in ms (the table sum), so their own errors are reported too.
    """
    from scipy.stats import kendalltau, spearmanr

    features = np.zeros((len(values), 6))
    features[:, 0] = values  # the linear calibration maps column 0 to ms
    loo = leave_one_out(features, measured, "linear")
    fit = fit_calibration(features, measured, "linear")
    rel = np.abs(loo - measured) / measured
    out = {
        "predictor": name,
        "spearman": float(spearmanr(values, measured).statistic),
        "kendall": float(kendalltau(values, measured).statistic),
        "fit": {"a": fit.coef[0], "b_ms": fit.intercept},
        "mre_fit_loo": float(rel.mean()),
        "worst_rel_error_fit_loo": float(rel.max()),
        "worst_network_fit_loo": int(rel.argmax()),
    }
    if raw_ms:
        raw = np.abs(values - measured) / measured
        out |= {"mre_raw": float(raw.mean()), "worst_rel_error_raw": float(raw.max()),
                "worst_network_raw": int(raw.argmax())}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=30, help="networks to sample (Sobol)")
    parser.add_argument("--preset", default="gpunet")
    parser.add_argument("--seed", type=int, default=0, help="Sobol scrambling seed")
    parser.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "torch"])
    parser.add_argument("--device", default="cpu", help="torch backend: cpu or cuda[:i]")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16"], help="torch backend on CUDA: fp16")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of the backend")
    parser.add_argument("--runs", type=int, default=10, help="timed runs per layer and per network")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the timed runs (1 = none)")
    parser.add_argument("--group", type=int, default=5, help="networks timed together (bounds memory)")
    parser.add_argument("--table", type=Path, default=None, help="reuse/keep a table (default: a temporary one)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures and per-network rows here")
    args = parser.parse_args()
    if args.n < 4:
        parser.error(f"-n: got {args.n}; expected at least 4 networks (leave-one-out fits need 3)")
    if args.backend == "onnxruntime" and (args.device != "cpu" or args.precision != "fp32"):
        parser.error("--device/--precision: the onnxruntime backend measures fp32 on the CPU; use --backend torch")

    from gpunet.model import model_stats  # torch only after the arguments are checked

    t_start = time.perf_counter()
    space = load_space(args.preset)
    options = {"runs": args.runs, "warmup": args.warmup, "rounds": args.rounds}
    if args.backend == "torch":
        options |= {"device": args.device, "precision": args.precision}
    if not args.device.startswith("cuda"):
        options["threads"] = args.threads
    backend = get_backend(args.backend, **options)
    target = backend.target()
    vectors = space.sobol(args.n, seed=args.seed)
    archs = [space.decode(v) for v in vectors]
    t0 = time.perf_counter()
    stats = [model_stats(a) for a in archs]
    flops_seconds = time.perf_counter() - t0
    flops = np.array([s.flops for s in stats], dtype=np.float64)
    with tempfile.TemporaryDirectory() as tmp:
        table = LatencyTable(args.table or Path(tmp) / "t.sqlite")
        sample = measure_sample(archs, backend, table, group=args.group)
        largest = [sorted(((k.text.split(" | ")[0], ms) for k, ms in layer_latencies(a, table, target)),
                          key=lambda item: -item[1])[:3] for a in archs]
        table.close()
    backend.close()
    measured, table_ms = sample.measured_ms, sample.features[:, 0]
    reports = [predictor_report("FLOPs", flops / 1e9, measured, raw_ms=False),
               predictor_report("latency table", table_ms, measured, raw_ms=True)]
    total = time.perf_counter() - t_start

    print(f"{args.preset}: {args.n} Sobol networks (seed {args.seed}), {target.text}")
    print(f"FLOPs counted in {flops_seconds:.1f} s: {flops.min() / 1e9:.3g}-{flops.max() / 1e9:.3g} GFLOPs")
    print(f"{sample.layers} unique layers: {sample.build.measured} measured in {sample.build.seconds:.1f} s; "
          f"{args.n} networks end to end in {sample.network_seconds:.1f} s "
          f"({args.runs} runs, {args.warmup} warm-up, {args.rounds} rounds, groups of {args.group})")
    print(f"measured: {measured.min():.2f}-{measured.max():.2f} ms (median {np.median(measured):.2f}); "
          f"table sum: {table_ms.min():.2f}-{table_ms.max():.2f} ms")
    print(f"{'predictor':14s} {'spearman':>8s} {'kendall':>8s} {'MRE fit':>8s} {'worst fit':>9s} "
          f"{'MRE raw':>8s} {'worst raw':>9s}   (fit: linear, leave-one-out)")
    for r in reports:
        raw = (f"{r['mre_raw']:8.1%} {r['worst_rel_error_raw']:9.1%}" if "mre_raw" in r else f"{'-':>8s} {'-':>9s}")
        print(f"{r['predictor']:14s} {r['spearman']:8.3f} {r['kendall']:8.3f} {r['mre_fit_loo']:8.1%} "
              f"{r['worst_rel_error_fit_loo']:9.1%} {raw}")
    worst = reports[1]["worst_network_raw"]
    print(f"worst table estimate: network {worst}, {table_ms[worst]:.1f} ms vs {measured[worst]:.1f} ms measured; its "
          "largest layers: " + "; ".join(f"{text} {ms:.1f} ms" for text, ms in largest[worst]))
    print(f"total {total:.0f} s")
    if args.json:
        rows = [{"vector": v.tolist(), "params": s.params, "flops": s.flops, "table_ms": float(t), "measured_ms": float(m),
                 "largest_layers_ms": big} for v, s, t, m, big in zip(vectors, stats, table_ms, measured, largest)]
        data = {"preset": args.preset, "n": args.n, "seed": args.seed, "target": target.to_dict(),
                "runs": args.runs, "warmup": args.warmup, "rounds": args.rounds, "layers": sample.layers,
                "seconds": {"flops": flops_seconds, "layers": sample.build.seconds, "networks": sample.network_seconds,
                            "total": total},
                "predictors": reports, "networks": rows}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
