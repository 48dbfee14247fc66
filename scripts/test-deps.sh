#!/usr/bin/env bash
# System pieces the test suite drives for real: Java (pycocoevalcap's METEOR and PTB tokenizer),
# headless Chromium (the web page test), openssl (a local TLS server), Prometheus' promtool
# (`promtool check metrics`), exiftool (reads back the bulk command's XMP sidecars), and
# playwright-core from npm (drives Debian's chromium).
# Idempotent: installs only what is missing. Needs root (or sudo) for apt.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v java >/dev/null || need+=(default-jre-headless)
command -v chromium >/dev/null || need+=(chromium chromium-driver)
command -v openssl >/dev/null || need+=(openssl)
command -v promtool >/dev/null || need+=(prometheus)
command -v exiftool >/dev/null || need+=(libimage-exiftool-perl)
if ((${#need[@]})); then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "test-deps: apt-get install ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq >/dev/null
    $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# playwright-core, pinned by tests/browser/package-lock.json; reinstalled when the lock changes.
stamp=tests/browser/node_modules/.lock-sha256
want=$(sha256sum tests/browser/package-lock.json | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "test-deps: npm ci (tests/browser)"
    npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error
    echo "$want" >"$stamp"
fi
