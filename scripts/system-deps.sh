#!/usr/bin/env bash
# Debian packages the test suites need, installed only when missing (so a fresh machine with
# Python, make and apt passes `make test`): Chromium for the browser tests (Playwright drives
# /usr/bin/chromium; it never downloads a browser) and PostgreSQL 15's server binaries for the
# registry-on-PostgreSQL tests.
set -euo pipefail
want=()
[ -x /usr/bin/chromium ] || want+=(chromium)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || want+=(postgresql)
[ ${#want[@]} -eq 0 ] && exit 0
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "installing Debian packages the tests need: ${want[*]}"
$SUDO apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${want[@]}" >/dev/null
