#!/usr/bin/env bash
# One GPU lease, two calls: the prepared benchmark (`kt bench`, then the structured probe), and the GPU tests,
# each on the lent machine's own python3 (its torch and triton), with kt from this checkout. Everything goes to
# $OUT as it is written (a call past the device's 600 s limit still returns what is there; at most 8 files come
# back, so the report's directory also travels as one tarball).
#
#   device run, carry [".whl"]:  bash benchmarks/gpu_session.sh 4        (about 7 minutes)
#   then, at once (the machine is let go after 30 s idle):  bash benchmarks/gpu_session.sh tests   (5 at most)
#
# or both in one call, tests first, which needs no quick second call (2026-12-04, by hand: 479 s in all, the
# tests cut after 17 of 37, a second call ran the rest; at 18:20 the same day, as below: 501 s, cut after 23):
#   device run, carry [".whl"], timeout_s 590:  bash benchmarks/gpu_session.sh all 3
#     = KT_TESTS_S=240 (the tests) + 3 minutes of kt bench + KT_LAYOUT_S=60 (the layout probe) + KT_PROBE_S=45
#       (the structured probe): about 9.5 minutes
#
# A lease is 15 minutes, the machine's start included. The first call: the machine's record, MINUTES of kt bench
# (it cuts its parts to fit), the layout probe (90 s at most) and the structured probe (150 s at most):
# machine.txt, report.md, results.csv, bench.tgz, probe.txt (both probes' lines), layout.csv, probe.csv. The second: the GPU tests (300 s at most), gpu-tests.txt. One call did both until the
# first H200 run, where the tests were cut after 10 of 24 and their output lost to the call's limit.
#
# .whl holds the wheels the lent image lacks (skops, prettytable, wcwidth, and the scikit-learn the shipped
# forests were saved with); docs/architecture.md ("GPU sessions") says how to fetch them.
set -u
part=${1:-4}
minutes_or_die() {
    case "$1" in
    '' | *[!0-9.]*)
        echo "gpu_session.sh: give the minutes of kt bench (e.g. 4), 'tests', or 'all MINUTES', got '$1'" >&2
        exit 2
        ;;
    esac
}
if [ "$part" = all ]; then
    minutes_or_die "${2:-3}"
    KT_TESTS_S=${KT_TESTS_S:-240} bash "$0" tests
    KT_LAYOUT_S=${KT_LAYOUT_S:-60} KT_PROBE_S=${KT_PROBE_S:-45} exec bash "$0" "${2:-3}"
fi
[ "$part" = tests ] || minutes_or_die "$part"
out=${OUT:-/tmp/kt-gpu-out}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ "$part" = tests ]; then
    # -v: a line per test as it ends, so a call cut at its limit still says which failed (-q's dots did not)
    timeout "${KT_TESTS_S:-300}" python3 -m pytest -v --tb=short -rfE -m gpu tests/test_gpu.py -k "not kt_bench" \
        -p no:cacheprovider >"$out/gpu-tests.txt" 2>&1
    tail -40 "$out/gpu-tests.txt"
    exit 0
fi
kt() { python3 -m kt.cli "$@"; }
{
    date -u
    nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit,temperature.gpu --format=csv
    python3 -c "import torch, triton, sklearn; print('torch', torch.__version__, 'triton', triton.__version__, 'sklearn', sklearn.__version__)"
} 2>&1 | tee "$out/machine.txt"
bench=/tmp/kt-bench
rm -rf "$bench"
kt bench --out "$bench" --minutes "$part" --quiet 2>&1 | tee /tmp/bench-stdout.txt
bench_rc=${PIPESTATUS[0]} # kt bench's own status, not tee's: the call's exit code says whether it failed
cp /tmp/bench-stdout.txt "$bench/" 2>/dev/null
for f in report.md results.csv; do
    [ -f "$bench/$f" ] && cp "$bench/$f" "$out/"
done
tar czf "$out/bench.tgz" -C "$(dirname "$bench")" "$(basename "$bench")" # bench.log, artifacts, the database
# whether x and y in the caller's row-major layout make the FFT and Monarch slow (benchmarks/layout_probe.py),
# then the configs the last bench showed slow against the kernels changed since (benchmarks/structured_probe.py);
# both print into probe.txt (8 files come back at most)
timeout "${KT_LAYOUT_S:-90}" python3 benchmarks/layout_probe.py --csv "$out/layout.csv" >"$out/probe.txt" 2>&1
timeout "${KT_PROBE_S:-150}" python3 benchmarks/structured_probe.py --csv "$out/probe.csv" >>"$out/probe.txt" 2>&1
grep -v -i "warn" "$out/probe.txt"
exit "$bench_rc"
