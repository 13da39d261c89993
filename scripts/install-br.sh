#!/usr/bin/env bash
# Installs br (crates.io package beads_rust) at the pinned version, unless it
# is already installed. br builds only with a nightly toolchain (~13 minutes).
# Prints the path of the binary as its last line.
set -euo pipefail

BR_VERSION="0.7.6"

installed_version() { "$1" --version 2>/dev/null | awk '{print $2}'; }

for candidate in "${MALA_TEST_BR:-}" "$HOME/.cargo/bin/br" "$(command -v br 2>/dev/null || true)"; do
  if [ -n "$candidate" ] && [ -x "$candidate" ] && [ "$(installed_version "$candidate")" = "$BR_VERSION" ]; then
    echo "br $BR_VERSION already installed" >&2
    echo "$candidate"
    exit 0
  fi
done

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "installing a nightly toolchain (br needs it to build)" >&2
  rustup toolchain install nightly --profile minimal >&2 || {
    echo "error: br needs a nightly Rust toolchain and none could be installed" >&2
    exit 1
  }
fi

echo "building br $BR_VERSION with cargo +nightly (about 13 minutes)" >&2
cargo +nightly install beads_rust --locked --version "$BR_VERSION" >&2
echo "$HOME/.cargo/bin/br"
