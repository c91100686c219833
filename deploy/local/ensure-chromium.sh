#!/usr/bin/env bash
# Makes sure headless Chromium and its WebDriver (chromedriver) are installed, from
# Debian's packages: the console's browser test (tests/tests/suite/console.rs) drives them.
# Exits non-zero with a clear message if it can't.
set -euo pipefail

if command -v chromedriver >/dev/null 2>&1 && [ -x /usr/bin/chromium ]; then
  echo "Chromium and chromedriver are installed ($(chromedriver --version | head -1))"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "error: chromium/chromedriver are missing and this user cannot install packages (no root, no sudo)." >&2
    echo "       install them: apt-get install -y chromium chromium-driver" >&2
    exit 1
  fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: chromium/chromedriver are missing and apt-get is unavailable; install Chromium and a matching chromedriver" >&2
  exit 1
fi
echo "Chromium is not installed; installing chromium and chromium-driver from Debian's packages..."
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
echo "Chromium and chromedriver are installed ($(chromedriver --version | head -1))"
