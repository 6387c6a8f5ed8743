#!/usr/bin/env bash
# Debian packages the tests need: Postgres and Redis server binaries for the Celery
# scale-out test (tests/scale/), Chromium for the operator journey's screenshots
# (tests/e2e/test_operator_journey.py). Installs only what is missing; the tests start
# their own throwaway servers under var/ (the packages' own system services are never
# started here).
set -euo pipefail

have_postgres() {
    command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}

missing=()
have_postgres || missing+=(postgresql)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "installing ${missing[*]} (apt)"
export DEBIAN_FRONTEND=noninteractive
# policy-rc.d exit 101: the packages' post-install scripts must not start system services
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
