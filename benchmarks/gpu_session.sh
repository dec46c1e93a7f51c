#!/usr/bin/env bash
# One GPU lease: the GPU tests, the prepared benchmark (`kt bench`, then two standalone comparisons), each on the
# lent machine's own python3 (its torch and triton), with kt from this checkout. Each step writes into $OUT as it
# goes (a call past the device's 600 s limit still returns what is there; at most 8 files come back, so the
# report's directory also travels as one tarball).
#
#   device run, carry [".whl"], timeout_s 590:  KT_COMMIT=<this checkout's commit> bash benchmarks/gpu_session.sh all 3
#     = the tests (KT_TESTS_S=210 at most) + kt calibrate (40 s at most) + 3 minutes of kt bench (about 195 s) +
#       dense_vs_cublas.py on 4096^3 fp16 (KT_DENSE_S=70) + structured_vs_torch.py on the Monarch
#       (KT_STRUCTURED_S=70), all of it within KT_BUDGET_S (575 s by default) of the call's start: a step is cut
#       at that deadline and one with under 20 s left is skipped, so the call ends before the device cuts it
#   then at once, while the machine is warm (it is let go after 30 s idle):  bash benchmarks/gpu_session.sh rest
#     = the GPU tests the first call did not reach (its list of tests run stays in the machine's /tmp)
#
# Or in two calls: `bash benchmarks/gpu_session.sh 4` (the benchmark, about 8.5 minutes), then `... tests` (300 s
# at most). KT_COMMIT names the commit in the report: the lent machine's copy of the checkout has no .git. With
# less device time left than a whole call, give KT_BUDGET_S the seconds there are.
#
# History: the first H200 run (2026-11-30) did both in one call and lost the tests' output to the call's limit;
# 2026-12-04, by hand: 479 s in all, the tests cut after 17 of 37, a second call by name ran the rest; at 18:20
# the same day, with the layout and structured probes after kt bench: 501 s, the tests cut after 23.
#
# Files: machine.txt (with the calibrated profile), report.md, results.csv, bench.tgz, probe.txt (both
# comparisons' lines and tables), dense.csv, structured.csv; gpu-tests.txt (or gpu-tests-rest.txt).
#
# .whl holds the wheels the lent image lacks (skops, prettytable, wcwidth, and the scikit-learn the shipped
# forests were saved with); docs/architecture.md ("GPU sessions") says how to fetch them. Without them every kt
# step would fail for minutes: the script stops at once instead (exit 3).
set -u
part=${1:-4}
usage() {
    echo "gpu_session.sh: give the minutes of kt bench (0.5 to 600, e.g. 4), 'tests', 'rest', or 'all MINUTES', got '$1'" >&2
    exit 2
}
minutes_or_die() { # kt bench's --minutes takes 0.5 to 600: refused here, not after the tests
    awk -v m="$1" 'BEGIN { exit !(m ~ /^[0-9]+(\.[0-9]+)?$/ && m >= 0.5 && m <= 600) }' || usage "$1"
}
case "$part" in
all) minutes_or_die "${2:-3}" ;;
tests | rest) ;;
*) minutes_or_die "$part" ;;
esac
out=${OUT:-/tmp/kt-gpu-out}
mkdir -p "$out"
if [ -z "${KT_SITE_READY:-}" ]; then
    if compgen -G ".whl/*.whl" >/dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            .whl/*.whl || exit 1
        export PYTHONPATH=/tmp/site
    fi
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 KT_SITE_READY=1
    if ! python3 -c "import skops.io, prettytable, sklearn" 2>"$out/imports.txt"; then
        echo "gpu_session.sh: skops, prettytable or scikit-learn does not import on this machine: carry .whl" \
            "(docs/architecture.md, 'GPU sessions'): $(tail -1 "$out/imports.txt")" >&2
        exit 3
    fi
    rm -f "$out/imports.txt"
fi
if [ "$part" = all ]; then
    export KT_END=${KT_END:-$(($(date +%s) + ${KT_BUDGET_S:-575}))}
    KT_TESTS_S=${KT_TESTS_S:-210} bash "$0" tests
    KT_DENSE_S=${KT_DENSE_S:-70} KT_STRUCTURED_S=${KT_STRUCTURED_S:-70} exec bash "$0" "${2:-3}"
fi
step() { # step CAP COMMAND...: COMMAND cut after CAP seconds or at KT_END, whichever is first; skipped under 20 s
    local cap=$1
    shift
    if [ -n "${KT_END:-}" ] && [ $((KT_END - $(date +%s))) -lt "$cap" ]; then
        cap=$((KT_END - $(date +%s)))
    fi
    if [ "$cap" -lt 20 ]; then
        echo "gpu_session.sh: skipped, ${cap} s left before the call's deadline: $*" >&2
        return 124
    fi
    timeout -k 5 "$cap" "$@"
}
ran=${KT_TESTS_RAN:-/tmp/kt-gpu-tests-ran.txt} # the tests run, for `rest`: the machine's /tmp lasts while warm
if [ "$part" = tests ] || [ "$part" = rest ]; then
    log="$out/gpu-tests.txt"
    skip=()
    if [ "$part" = rest ]; then
        log="$out/gpu-tests-rest.txt"
        if [ -f "$ran" ]; then
            while IFS= read -r id; do skip+=(--deselect "$id"); done <"$ran"
        fi
        echo "gpu_session.sh: leaving out the $((${#skip[@]} / 2)) tests run before on this machine" >&2
    fi
    # -v: a line per test as it ends, so a call cut at its limit still says which failed (-q's dots did not)
    step "${KT_TESTS_S:-300}" python3 -m pytest -v --tb=short -rfE -m gpu tests/test_gpu.py -k "not kt_bench" \
        -p no:cacheprovider ${skip[@]+"${skip[@]}"} >"$log" 2>&1
    grep -oE '^tests/test_gpu\.py::[^ ]+ (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)' "$log" | cut -d' ' -f1 >>"$ran"
    tail -40 "$log"
    exit 0
fi
{
    date -u
    nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit,temperature.gpu --format=csv
    python3 -c "import torch, triton, sklearn; print('torch', torch.__version__, 'triton', triton.__version__, 'sklearn', sklearn.__version__)"
    echo "kt commit: ${KT_COMMIT:-not given (KT_COMMIT)}"
} 2>&1 | tee "$out/machine.txt"
# kt calibrate, never run on a GPU before: the measured copy bandwidth and matmul ceilings, and the profile it
# writes, go into machine.txt (about 10 s)
{
    step "${KT_CALIBRATE_S:-40}" python3 -m kt.cli calibrate --out /tmp/kt-calibrated.json &&
        cat /tmp/kt-calibrated.json
} >>"$out/machine.txt" 2>&1
bench=/tmp/kt-bench
rm -rf "$bench"
# cut at the deadline by SIGTERM, which kt answers by writing what it has (its own clock keeps to --minutes)
step 600 python3 -m kt.cli bench --out "$bench" --minutes "$part" --quiet 2>&1 | tee /tmp/bench-stdout.txt
bench_rc=${PIPESTATUS[0]} # kt bench's own status, not tee's: the call's exit code says whether it failed
cp /tmp/bench-stdout.txt "$bench/" 2>/dev/null
for f in report.md results.csv; do
    [ -f "$bench/$f" ] && cp "$bench/$f" "$out/"
done
tar czf "$out/bench.tgz" -C "$(dirname "$bench")" "$(basename "$bench")" # bench.log, artifacts, the database
# the standalone comparisons, each on its first case and a small budget, resuming from kt bench's database (its
# quick tunes of the same problems): kt's dense 4096^3 fp16 against cuBLAS, and the Monarch n=4096 against two
# torch.bmm and dense F.linear, both sides timed by time_cuda_each (an idle before each, two rounds in reversed
# order). Both print into probe.txt; their CSVs beside it (8 files come back at most). The layout and
# structured probes answered their questions in the 2026-12-04 18:20 run (BENCHMARKS.md): run them by hand,
# `python3 benchmarks/layout_probe.py` and `benchmarks/structured_probe.py`.
step "${KT_DENSE_S:-120}" python3 benchmarks/dense_vs_cublas.py --shapes 4096x4096x4096 --dtypes float16 \
    --budget 16 --db "$bench/tuning.db" --csv "$out/dense.csv" >"$out/probe.txt" 2>&1
step "${KT_STRUCTURED_S:-120}" python3 benchmarks/structured_vs_torch.py --only monarch --budget 16 \
    --db "$bench/tuning.db" --csv "$out/structured.csv" >>"$out/probe.txt" 2>&1
grep -v -i "warn" "$out/probe.txt"
exit "$bench_rc"
