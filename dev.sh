#!/usr/bin/env bash
# dev.sh - one entry point for developers and CI.
#
#   ./dev.sh demo    build, then run examples/order-fulfillment/run.sh
#   ./dev.sh test    build build/ and build-asan/, run the whole suite under
#                    ASan/UBSan and the unit tests in the release build
#   ./dev.sh bench   build, then run bench/run.sh (installs wrk, nginx-light, the brokers
#                    and mosquitto-clients)
#   ./dev.sh deb     build, then the Debian package (build/patchbay_VERSION_ARCH.deb)
#   ./dev.sh build   install what is missing and build build/
#   ./dev.sh deps    only install what is missing
#
# Missing Debian packages are installed first (apt-get, with sudo when not root).
set -euo pipefail
cd "$(dirname "$0")"

PACKAGES=(build-essential cmake ninja-build pkg-config libmicrohttpd-dev libcurl4-openssl-dev
    libjansson-dev libjq-dev libonig-dev libyaml-dev libsqlite3-dev libssl-dev libpcre2-dev
    zlib1g-dev libnats-dev librabbitmq-dev libhiredis-dev libmosquitto-dev librdkafka-dev
    libpq-dev libmariadb-dev libxml2-dev python3 curl sqlite3)
# The real servers the system tests run against, on 127.0.0.1 with free ports
# and temporary directories (never the system's own instances).
TEST_PACKAGES=(nats-server rabbitmq-server redis-server mosquitto postgresql mariadb-server
    openssh-server openssh-client python3-aiosmtpd openssl libtest-json-schema-acceptance-perl
    nginx-light systemd dpkg-dev man-db chromium) # nginx for mTLS; systemd-analyze verify, dpkg-shlibdeps, man -l;
    # chromium for the dashboard's browser tests
# The bench's broker rows start the brokers the tests use; mosquitto-clients is MQTT's own client.
BENCH_PACKAGES=(wrk nginx-light nats-server rabbitmq-server redis-server redis-tools mosquitto
    mosquitto-clients)
# libFuzzer: the fuzz targets are fuzzed for a bounded time in ./dev.sh test.
FUZZ_PACKAGES=(clang libclang-rt-14-dev)
FUZZ_SECONDS=${FUZZ_SECONDS:-10}

say() { printf '==> %s\n' "$*" >&2; }

ensure_packages() {
    local missing=() p
    for p in "$@"; do
        if ! dpkg -s "$p" 2>/dev/null | grep -q '^Status: install ok installed'; then
            missing+=("$p")
        fi
    done
    ((${#missing[@]} == 0)) && return 0
    say "installing: ${missing[*]}"
    local sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        sudo=(sudo)
    fi
    "${sudo[@]}" apt-get update
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "${missing[@]}"
}

# Node.js and npm run the webhook tests' reference client (the standardwebhooks
# npm package). A machine may already have them from elsewhere: look for the
# commands, and install Debian's packages only when they are missing.
ensure_node() {
    command -v node >/dev/null && command -v npm >/dev/null && return 0
    ensure_packages nodejs npm
}

# npm packages the tests run (each tests/system/<dir> with a package-lock.json:
# the webhook tests' reference client, the OAuth2 mock server, Prism mocking an
# OpenAPI spec; and tests/ui: Playwright, which drives Chromium for the
# dashboard's browser tests, and Redocly's OpenAPI validator), installed as
# locked; the tests also install them on first use.
ensure_npm_packages() {
    local lock dir
    for lock in tests/system/*/package-lock.json tests/ui/package-lock.json; do
        dir=$(dirname "$lock")
        [[ -d $dir/node_modules ]] && continue
        say "npm ci in $dir"
        (cd "$dir" && SCARF_ANALYTICS=false npm ci --no-audit --no-fund)
    done
}

# Debian starts the servers it installs where it can; the tests start their
# own, so the system's instances are stopped (they would only take memory).
stop_system_services() {
    local svc
    command -v service >/dev/null || return 0
    for svc in rabbitmq-server redis-server mosquitto mariadb postgresql nats-server; do
        service "$svc" stop >/dev/null 2>&1 || true
    done
}

# build DIR [cmake args...]
build() {
    local dir=$1
    shift
    if [[ ! -f $dir/build.ninja ]]; then
        say "configuring $dir"
        cmake -S . -B "$dir" -G Ninja "$@"
    fi
    say "building $dir"
    ninja -C "$dir"
}

build_release() { build build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPB_WERROR=ON; }
build_asan() { build build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPB_SANITIZE=ON -DPB_WERROR=ON; }

# CI: every build type with gcc and clang, warnings as errors (built, not run).
# gcc RelWithDebInfo is build/ itself (build_release), so it is not built twice.
build_matrix() {
    local cc type
    for cc in gcc clang; do
        for type in Debug RelWithDebInfo Release; do
            if [[ $cc == gcc && $type == RelWithDebInfo && $(basename "${CC:-cc}") =~ ^(cc|gcc)$ ]]; then
                continue
            fi
            say "building build-matrix/$cc-$type"
            if [[ ! -f build-matrix/$cc-$type/build.ninja ]]; then
                CC=$cc cmake -S . -B "build-matrix/$cc-$type" -G Ninja \
                    -DCMAKE_BUILD_TYPE="$type" -DPB_WERROR=ON >/dev/null
            fi
            ninja -C "build-matrix/$cc-$type" patchbay pb_sink
        done
    done
}

# run_ctest LOG ctest-args... : run ctest, tee its output, add to the totals.
PASSED=0
FAILED=0
run_ctest() {
    local log=$1 rc=0 total failed
    shift
    ctest "$@" 2>&1 | tee "$log" || rc=$?
    total=$(sed -n 's/.*tests failed out of \([0-9][0-9]*\).*/\1/p' "$log" | tail -n1)
    failed=$(sed -n 's/.*, \([0-9][0-9]*\) tests\{0,1\} failed out of.*/\1/p' "$log" | tail -n1)
    if [[ -z $total ]]; then
        # No summary line: no tests found, or ctest itself failed.
        total=0
        failed=0
        if ((rc != 0)) || ! grep -q 'No tests were found' "$log"; then
            failed=1
        fi
    fi
    PASSED=$((PASSED + total - failed))
    FAILED=$((FAILED + failed))
    ((rc == 0))
}

cmd_test() {
    ensure_packages "${PACKAGES[@]}" "${FUZZ_PACKAGES[@]}" "${TEST_PACKAGES[@]}"
    stop_system_services
    ensure_node
    ensure_npm_packages
    build_release
    build_asan
    if [[ ${CI:-} == true ]]; then
        if build_matrix; then
            PASSED=$((PASSED + 1))
        else
            say "a build of the matrix failed"
            FAILED=$((FAILED + 1))
        fi
    fi
    local logdir status=0
    logdir=$(mktemp -d)
    export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
    export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
    say "whole suite under ASan/UBSan (build-asan), but the PostgreSQL-store reruns"
    run_ctest "$logdir/asan.log" --test-dir build-asan --output-on-failure -j2 -LE postgres ||
        status=1
    say "unit tests and the system tests again on a PostgreSQL store, release build (build)"
    run_ctest "$logdir/unit.log" --test-dir build --output-on-failure -j2 -L "unit|postgres" ||
        status=1
    say "fuzzing each target for ${FUZZ_SECONDS}s (build-fuzz, clang + libFuzzer)"
    if tests/fuzz/run.sh "$FUZZ_SECONDS"; then
        PASSED=$((PASSED + 1))
    else
        FAILED=$((FAILED + 1))
        status=1
    fi
    rm -rf "$logdir"
    echo "$PASSED passed, $FAILED failed"
    if ((FAILED > 0)); then
        status=1
    fi
    return "$status"
}

cmd_demo() {
    ensure_packages "${PACKAGES[@]}"
    if [[ ! -f build/build.ninja ]]; then
        cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPB_WERROR=ON
    fi
    say "building what the demo runs"
    ninja -C build patchbay pb_sink
    exec examples/order-fulfillment/run.sh
}

cmd_bench() {
    ensure_packages "${PACKAGES[@]}" "${BENCH_PACKAGES[@]}"
    ensure_node
    build_release
    exec bench/run.sh
}

cmd_build() {
    ensure_packages "${PACKAGES[@]}"
    build_release
}

# The .deb: CPack from the release build (dpkg-shlibdeps computes Depends).
cmd_deb() {
    ensure_packages "${PACKAGES[@]}" dpkg-dev
    build_release
    (cd build && cpack --config CPackConfig.cmake)
    ls build/*.deb
}

cmd_deps() {
    ensure_packages "${PACKAGES[@]}"
    ensure_node
    ensure_npm_packages
}

case ${1:-} in
test) cmd_test ;;
demo) cmd_demo ;;
bench) cmd_bench ;;
deb) cmd_deb ;;
build) cmd_build ;;
deps) cmd_deps ;;
*)
    echo "usage: $0 demo|test|bench|build|deb|deps" >&2
    exit 2
    ;;
esac
