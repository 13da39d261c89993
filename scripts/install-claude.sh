#!/usr/bin/env bash
# Installs Claude Code (npm package @anthropic-ai/claude-code) at the pinned
# version into a cache folder, unless it is already there. Its native
# executable sits in the @anthropic-ai/claude-code-linux-x64 dependency.
# Prints the path of the binary as its last line.
set -euo pipefail
source "$(dirname "$0")/lib/npm-pinned.sh"

CLAUDE_VERSION="2.1.197"
install_pinned_npm "@anthropic-ai/claude-code" "$CLAUDE_VERSION" claude \
  "node_modules/@anthropic-ai/claude-code-linux-x64/claude" "^$CLAUDE_VERSION "
