#!/usr/bin/env bash
# One GPU lease, one call: the prepared benchmark (`kt bench`) and the GPU tests, on the lent machine's own
# python3 (its torch and triton), with kt from this checkout. Everything it writes goes to $OUT (at most 8
# files come back, so the report's directory also travels as one tarball).
#
#   device run, carry [".whl"]:  bash benchmarks/gpu_session.sh 6
#
# About 12 of a lease's 15 minutes: the machine's start, MINUTES of kt bench, the probe (150 s at most), the GPU
# tests (140 s at most). Seven files come back: machine.txt, report.md, results.csv, bench.tgz, probe.txt,
# probe.csv, gpu-tests.txt.
#
# .whl holds the wheels the lent image lacks (skops, prettytable, wcwidth, and the scikit-learn the shipped
# forests were saved with); docs/architecture.md ("GPU sessions") says how to fetch them.
set -u
minutes=${1:-6}
out=${OUT:-/tmp/kt-gpu-out}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
kt() { python3 -m kt.cli "$@"; }
{
    date -u
    nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit,temperature.gpu --format=csv
    python3 -c "import torch, triton, sklearn; print('torch', torch.__version__, 'triton', triton.__version__, 'sklearn', sklearn.__version__)"
} 2>&1 | tee "$out/machine.txt"
bench=/tmp/kt-bench
rm -rf "$bench"
kt bench --out "$bench" --minutes "$minutes" --quiet 2>&1 | tee /tmp/bench-stdout.txt
cp /tmp/bench-stdout.txt "$bench/" 2>/dev/null
for f in report.md results.csv; do
    [ -f "$bench/$f" ] && cp "$bench/$f" "$out/"
done
tar czf "$out/bench.tgz" -C "$(dirname "$bench")" "$(basename "$bench")"  # bench.log, artifacts, the database
# the configs the last bench showed slow against the kernels changed since (benchmarks/structured_probe.py)
timeout "${KT_PROBE_S:-150}" python3 benchmarks/structured_probe.py --csv "$out/probe.csv" 2>&1 \
    | grep -v -i "warn" | tee "$out/probe.txt"
if [ "${KT_GPU_TESTS:-1}" = 1 ]; then
    timeout 140 python3 -m pytest -q -m gpu tests/test_gpu.py -k "not kt_bench" -p no:cacheprovider 2>&1 \
        | tail -40 | tee "$out/gpu-tests.txt"
fi
