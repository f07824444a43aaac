#!/usr/bin/env bash
# Installs Debian's Chromium (for the headless UI test) when it is missing. Playwright drives it
# through executable_path; no browser is downloaded by a test tool.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" != "0" ] && ! command -v sudo >/dev/null; then
  echo "chromium is missing and this user cannot install it; the browser test will be skipped" >&2
  exit 0
fi
SUDO=""; [ "$(id -u)" = "0" ] || SUDO="sudo"
echo "installing Debian chromium for the UI test..." >&2
$SUDO apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
