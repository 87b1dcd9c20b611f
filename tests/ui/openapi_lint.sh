#!/usr/bin/env bash
# openapi_lint.sh - validate docs/api.openapi.yaml with Redocly's OpenAPI
# validator (npm, pinned in tests/ui/package-lock.json), every rule of its
# recommended set an error (tests/ui/redocly.yaml). ctest runs it as
# docs/openapi; ./dev.sh installs the packages (npm ci), or this does.
set -euo pipefail
cd "$(dirname "$0")"
if [[ ! -x node_modules/.bin/redocly ]]; then
    # Several builds may run the suite at once: one installs.
    exec 9<package.json
    flock 9
    [[ -x node_modules/.bin/redocly ]] || npm ci --no-audit --no-fund >&2
fi
# Offline: no telemetry, no update check.
export REDOCLY_TELEMETRY=off REDOCLY_SUPPRESS_UPDATE_NOTICE=true
exec node_modules/.bin/redocly lint --config redocly.yaml --format=stylish ../../docs/api.openapi.yaml
