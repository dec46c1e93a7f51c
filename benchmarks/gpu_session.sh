#!/usr/bin/env bash
# One GPU lease, two calls: the prepared benchmark (`kt bench`, then two standalone comparisons), and the GPU tests,
# each on the lent machine's own python3 (its torch and triton), with kt from this checkout. Everything goes to
# $OUT as it is written (a call past the device's 600 s limit still returns what is there; at most 8 files come
# back, so the report's directory also travels as one tarball).
#
#   device run, carry [".whl"]:  bash benchmarks/gpu_session.sh 4        (about 8.5 minutes)
#   then, at once (the machine is let go after 30 s idle):  bash benchmarks/gpu_session.sh tests   (5 at most)
#
# or both in one call, tests first, which needs no quick second call (2026-12-04, by hand: 479 s in all, the
# tests cut after 17 of 37, a second call ran the rest; at 18:20 the same day, with the layout and structured
# probes after kt bench: 501 s, the tests cut after 23):
#   device run, carry [".whl"], timeout_s 590:  bash benchmarks/gpu_session.sh all 3
#     = KT_TESTS_S=210 (the tests) + kt calibrate (about 10 s) + 3 minutes of kt bench (about 195 s) +
#       KT_DENSE_S=70 (dense_vs_cublas.py on 4096^3 fp16) + KT_STRUCTURED_S=70 (structured_vs_torch.py on the
#       Monarch): about 9.5 minutes; then at once, while the machine is warm, the GPU tests the first call did
#       not reach (`-k`, by name)
#
# A lease is 15 minutes, the machine's start included. The first call: the machine's record and `kt calibrate`
# (40 s at most), MINUTES of kt bench (it cuts its parts to fit) and the two comparisons (120 s at most each):
# machine.txt (with the calibrated profile), report.md, results.csv, bench.tgz, probe.txt (both comparisons'
# lines and tables), dense.csv, structured.csv. The second: the GPU tests (300 s at most), gpu-tests.txt. One
# call did both until the first H200 run, where the tests were cut after 10 of 24 and their output lost to the
# call's limit.
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
    KT_TESTS_S=${KT_TESTS_S:-210} bash "$0" tests
    KT_DENSE_S=${KT_DENSE_S:-70} KT_STRUCTURED_S=${KT_STRUCTURED_S:-70} exec bash "$0" "${2:-3}"
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
# kt calibrate, never run on a GPU before: the measured copy bandwidth and matmul ceilings, and the profile it
# writes, go into machine.txt (about 10 s)
{
    timeout "${KT_CALIBRATE_S:-40}" python3 -m kt.cli calibrate --out /tmp/kt-calibrated.json &&
        cat /tmp/kt-calibrated.json
} >>"$out/machine.txt" 2>&1
bench=/tmp/kt-bench
rm -rf "$bench"
kt bench --out "$bench" --minutes "$part" --quiet 2>&1 | tee /tmp/bench-stdout.txt
bench_rc=${PIPESTATUS[0]} # kt bench's own status, not tee's: the call's exit code says whether it failed
cp /tmp/bench-stdout.txt "$bench/" 2>/dev/null
for f in report.md results.csv; do
    [ -f "$bench/$f" ] && cp "$bench/$f" "$out/"
done
tar czf "$out/bench.tgz" -C "$(dirname "$bench")" "$(basename "$bench")" # bench.log, artifacts, the database
# the standalone comparisons, never run on a GPU until now, each on its first case and a small budget, resuming
# from kt bench's database (its quick tunes of the same problems): kt's dense 4096^3 fp16 against cuBLAS, and the
# Monarch n=4096 against two torch.bmm and dense F.linear, both sides timed by time_cuda_each (an idle before
# each, two rounds in reversed order). Both print into probe.txt; their CSVs beside it (8 files come back at
# most). The layout and structured probes answered their questions in the 2026-12-04 18:20 run (BENCHMARKS.md):
# run them by hand, `python3 benchmarks/layout_probe.py` and `benchmarks/structured_probe.py`.
timeout "${KT_DENSE_S:-120}" python3 benchmarks/dense_vs_cublas.py --shapes 4096x4096x4096 --dtypes float16 \
    --budget 16 --db "$bench/tuning.db" --csv "$out/dense.csv" >"$out/probe.txt" 2>&1
timeout "${KT_STRUCTURED_S:-120}" python3 benchmarks/structured_vs_torch.py --only monarch --budget 16 \
    --db "$bench/tuning.db" --csv "$out/structured.csv" >>"$out/probe.txt" 2>&1
grep -v -i "warn" "$out/probe.txt"
exit "$bench_rc"
