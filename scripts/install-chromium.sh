#!/usr/bin/env bash
# Installs Debian's Chromium and ChromeDriver (packages chromium and
# chromium-driver) for the dashboard's browser tests, unless both are already
# installed. Prints chromium's path, then chromedriver's, as its last two lines.
set -euo pipefail

CHROMIUM="${MALA_TEST_CHROMIUM:-/usr/bin/chromium}"
CHROMEDRIVER="${MALA_TEST_CHROMEDRIVER:-/usr/bin/chromedriver}"

if [ -x "$CHROMIUM" ] && [ -x "$CHROMEDRIVER" ]; then
  echo "chromium and chromedriver already installed" >&2
else
  SUDO=""
  if [ "$(id -u)" != 0 ]; then
    SUDO="sudo"
  fi
  echo "installing Debian's chromium and chromium-driver" >&2
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver >&2 || {
    echo "error: could not install chromium and chromium-driver with apt-get" >&2
    exit 1
  }
  CHROMIUM=/usr/bin/chromium
  CHROMEDRIVER=/usr/bin/chromedriver
fi
echo "$CHROMIUM"
echo "$CHROMEDRIVER"
