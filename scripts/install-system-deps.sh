#!/usr/bin/env bash
# System packages the workbench needs beyond pip: PostgreSQL (shared Optuna storage for several search workers).
# Installs with apt-get when missing (as root); otherwise says what to install. Idempotent.
set -euo pipefail
have_pg() { compgen -G "/usr/lib/postgresql/*/bin/initdb" > /dev/null || command -v initdb > /dev/null; }
if have_pg; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get > /dev/null; then
  echo "installing postgresql (apt-get) for multi-worker search storage"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql > /dev/null \
    || { apt-get update > /dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql > /dev/null; }
else
  echo "PostgreSQL is not installed: run 'sudo apt-get install postgresql' (needed by the multi-worker search test)" >&2
  exit 1
fi
