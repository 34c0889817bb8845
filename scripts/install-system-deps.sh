#!/usr/bin/env bash
# System packages the workbench needs beyond pip: PostgreSQL (shared Optuna storage for several search workers) and
# Chromium (the browser tests and `make screenshots`, driven by Python Playwright; never `playwright install`).
# Installs with apt-get when missing (as root); otherwise says what to install. Idempotent.
set -euo pipefail
have_pg() { compgen -G "/usr/lib/postgresql/*/bin/initdb" > /dev/null || command -v initdb > /dev/null; }
have_chromium() { [ -x /usr/bin/chromium ]; }
missing=()
have_pg || missing+=(postgresql)
have_chromium || missing+=(chromium)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get > /dev/null; then
  echo "installing ${missing[*]} (apt-get): multi-worker search storage, browser tests"
  DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" > /dev/null \
    || { apt-get update > /dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" > /dev/null; }
else
  echo "missing system packages: run 'sudo apt-get install ${missing[*]}' (multi-worker search test, browser tests)" >&2
  exit 1
fi
