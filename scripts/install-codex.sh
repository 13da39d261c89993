#!/usr/bin/env bash
# Installs the OpenAI Codex CLI (npm package @openai/codex) at the pinned
# version into a cache folder, unless it is already there. Its native
# executable sits in the @openai/codex-linux-x64 dependency.
# Prints the path of the binary as its last line.
set -euo pipefail
source "$(dirname "$0")/lib/npm-pinned.sh"

CODEX_VERSION="0.171.0"
install_pinned_npm "@openai/codex" "$CODEX_VERSION" codex \
  "node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex" \
  "^codex-cli $CODEX_VERSION$"
