#!/usr/bin/env bash
# System packages the suite needs beyond PyPI: Debian's chromium for the UI browser test.
# Idempotent; skips quietly when chromium is already there or when not root (the browser test
# then skips itself with a message naming this script).
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != "0" ]; then
  echo "system-deps: chromium missing and not root; run: sudo apt-get install -y chromium" >&2
  exit 0
fi
echo "system-deps: installing chromium (Debian package) for the UI browser test" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends chromium >/dev/null
