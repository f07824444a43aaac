#!/usr/bin/env bash
# Installs Debian's Chromium (for the headless UI test, tests/e2e/test_ui_browser.py) when it is
# missing. Playwright drives it through executable_path=/usr/bin/chromium; no browser is downloaded
# by a test tool. `make test` runs this (as root in CI). Where chromium cannot be installed (no
# root/sudo, no apt-get, apt fails) it says why and exits 0: the browser test then skips with that reason.
set -euo pipefail
if [ -x /usr/bin/chromium ] || command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "chromium is missing and there is no apt-get here; install chromium yourself (PRICEFIT_CHROMIUM=/path/to/chromium), or the browser test will be skipped" >&2
  exit 0
fi
if [ "$(id -u)" != "0" ] && ! command -v sudo >/dev/null 2>&1; then
  echo "chromium is missing and this user cannot install it (not root, no sudo); the browser test will be skipped" >&2
  exit 0
fi
SUDO=""; [ "$(id -u)" = "0" ] || SUDO="sudo"
echo "installing Debian chromium for the UI test..." >&2
if ! { $SUDO apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null; }; then
  echo "apt-get could not install chromium; the browser test will be skipped" >&2
  exit 0
fi
chromium --version >&2 || true
