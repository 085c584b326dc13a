#!/usr/bin/env bash
# Installs what the operations tests need, when missing: `promtool` (Debian `prometheus`), which
# checks the alerting rules in deploy/prometheus/, and headless Chromium with its WebDriver
# (Debian `chromium`, `chromium-driver`) for the dashboard's test. Progress goes to stderr.
# Idempotent.
set -euo pipefail
log() { echo "fetch-ops-tools: $*" >&2; }
SUDO=
[[ $(id -u) == 0 ]] || SUDO=sudo
install() {
    $SUDO apt-get install -y -qq --no-install-recommends "$@" > /dev/null 2>&1 ||
        { $SUDO apt-get update -qq > /dev/null && $SUDO apt-get install -y -qq --no-install-recommends "$@" > /dev/null; }
}
if ! command -v promtool > /dev/null; then
    log "installing promtool (Debian prometheus)"
    install prometheus
    # The package starts a Prometheus service; the tests need only promtool.
    if command -v systemctl > /dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
        systemctl stop prometheus 2>/dev/null || true
    fi
fi
log "promtool: $(command -v promtool)"
if ! command -v chromedriver > /dev/null || ! command -v chromium > /dev/null; then
    log "installing chromium and chromium-driver (Debian)"
    install chromium chromium-driver
fi
log "chromedriver: $(command -v chromedriver)"
