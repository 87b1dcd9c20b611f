#!/usr/bin/env bash
# run.sh - build the libFuzzer targets with clang and fuzz each for a while.
#
#   tests/fuzz/run.sh [SECONDS] [TARGET...]     default: 30 s each, every target
#   tests/fuzz/run.sh --regress [TARGET...]     only replay the checked-in corpus
#   tests/fuzz/run.sh --merge [TARGET...]       fold what earlier runs found into
#                                               tests/fuzz/corpus/ (minimised)
#
# Builds build-fuzz/ (CC=clang, -DPB_FUZZ=ON, ASan+UBSan). Each target starts
# from its checked-in seeds (tests/fuzz/corpus/NAME/) and keeps what it finds
# in build-fuzz/corpus/NAME/; a crash leaves its input in
# build-fuzz/artifacts/ and makes the script exit 1. A summary (executions,
# coverage, corpus size, crashes) is printed and kept in
# build-fuzz/fuzz-summary.txt. Needs clang and libclang-rt-14-dev (Debian 12).
set -euo pipefail
cd "$(dirname "$0")/../.."

mode=fuzz
secs=30
if [[ ${1:-} == --regress ]]; then
    mode=regress
    shift
elif [[ ${1:-} == --merge ]]; then
    mode=merge
    shift
elif [[ ${1:-} =~ ^[0-9]+$ ]]; then
    secs=$1
    shift
fi

if ! command -v clang >/dev/null; then
    echo "run.sh: clang not found; install it: apt-get install -y clang libclang-rt-14-dev" >&2
    exit 2
fi
if ! echo 'int LLVMFuzzerTestOneInput(const char *d, long n) { return 0; }' |
    clang -x c -fsanitize=fuzzer,address,undefined -o /dev/null - 2>/dev/null; then
    echo "run.sh: clang cannot link libFuzzer; install it: apt-get install -y libclang-rt-14-dev" >&2
    exit 2
fi

dir=build-fuzz
if [[ ! -f $dir/build.ninja ]]; then
    CC=clang cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DPB_FUZZ=ON -DPB_SANITIZE=ON -DPB_WERROR=OFF >/dev/null
fi
all=()
for src in tests/fuzz/fuzz_*.c; do
    name=$(basename "$src" .c)
    all+=("${name#fuzz_}")
done
targets=("$@")
((${#targets[@]})) || targets=("${all[@]}")
ninja -C "$dir" "${targets[@]/#/fuzz_}" >/dev/null

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$PWD/tests/fuzz/lsan.supp}
mkdir -p "$dir/artifacts" "$dir/logs"
summary=$dir/fuzz-summary.txt
: >"$summary"
status=0
printf '%-12s %7s %10s %8s %8s %7s\n' target seconds execs cov corpus crashes | tee -a "$summary"
for t in "${targets[@]}"; do
    bin=$dir/fuzz_$t
    seeds=tests/fuzz/corpus/$t
    work=$dir/corpus/$t
    mkdir -p "$work" "$seeds"
    log=$dir/logs/$t.log
    rc=0
    opts=$ASAN_OPTIONS
    # libjq has no frame pointers: the jq_start suppression needs full stacks.
    [[ $t == jq ]] && opts=$opts:fast_unwind_on_malloc=0
    case $mode in
    regress)
        ASAN_OPTIONS=$opts "$bin" -runs=0 "$seeds" >"$log" 2>&1 || rc=$?
        ;;
    merge)
        ASAN_OPTIONS=$opts "$bin" -merge=1 "$seeds" "$work" >"$log" 2>&1 || rc=$?
        ;;
    fuzz)
        ASAN_OPTIONS=$opts "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
            -artifact_prefix="$dir/artifacts/$t-" "$work" "$seeds" >"$log" 2>&1 || rc=$?
        ;;
    esac
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n1 | cut -d' ' -f2)
    crashes=0
    if ((rc != 0)); then
        crashes=1
        status=1
        echo "run.sh: $t failed (exit $rc); see $log and $dir/artifacts/$t-*" >&2
        grep -m1 -A30 -E 'ERROR: |runtime error|property broken' "$log" >&2 || tail -n 30 "$log" >&2
    fi
    n=$(find "$work" -type f | wc -l)
    printf '%-12s %7s %10s %8s %8s %7s\n' "$t" "$([[ $mode == fuzz ]] && echo "$secs" || echo -)" \
        "${execs:--}" "${cov:--}" "$n" "$crashes" | tee -a "$summary"
done
exit $status
