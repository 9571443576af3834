#!/usr/bin/env bash
# The GPU suite on the lent GPU machine, from the repository root (the device tool's `run`, carry [".whl"]):
#
#   bash benchmarks/gpu/run.sh [extra gpu_suite.py options, e.g. --smoke]
#
# 1. installs the carried wheels this image needs (benchmarks/gpu/install.py) into $SITE;
# 2. puts $SITE and the working tree (gpunet, worker, operator) on PYTHONPATH;
# 3. runs benchmarks/gpu_suite.py under a hard timeout, writing $OUT/h200.json and, beside it, its log, the
#    install log, nvidia-smi's view of the GPU, the GPU latency table it built and the trainer run's worker logs.
# Environment: OUT (default ./out), PYTHON (default python3), WHEELS (default .whl), SITE (default /tmp/gpunet-site),
# GPUNET_SUITE_TIMEOUT (hard limit in s, default 330), GPUNET_SUITE_BUDGET (the suite's own budget, default 300).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/out}
PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
SITE=${SITE:-/tmp/gpunet-site}
RUN_DIR=${RUN_DIR:-/tmp/gpunet-suite-run}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

"$PYTHON" benchmarks/gpu/install.py --wheels "$WHEELS" --target "$SITE" >"$OUT/install.log" 2>&1
rc=$?
cat "$OUT/install.log"
[ $rc -eq 0 ] || exit $rc
export PYTHONPATH="$SITE:$PWD:$PWD/worker:$PWD/operator${PYTHONPATH:+:$PYTHONPATH}"
export GPUNET_CARRIED="$SITE/gpunet-carried.json" GPUNET_SUITE_COMMAND="bash benchmarks/gpu/run.sh $*"
(nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,temperature.gpu --format=csv \
  || echo "nvidia-smi: not available") >"$OUT/nvidia-smi.csv" 2>&1

NAME=h200
for arg in "$@"; do [ "$arg" = --smoke ] && NAME=smoke; done  # a CPU rehearsal never writes h200.json
rm -rf "$RUN_DIR"
timeout -k 10 "${GPUNET_SUITE_TIMEOUT:-330}" "$PYTHON" benchmarks/gpu_suite.py --out "$OUT/$NAME.json" \
  --budget-s "${GPUNET_SUITE_BUDGET:-300}" --table "$OUT/latency.sqlite" --keep-run "$RUN_DIR" "$@" 2>&1 \
  | tee "$OUT/gpu_suite.log"
rc=${PIPESTATUS[0]}
for role in trainer profiler; do
  cp "$RUN_DIR/run/logs/local-$role-0.log" "$OUT/$role.log" 2>/dev/null || true
done
echo "run.sh: gpu_suite.py exited $rc; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
exit $rc
