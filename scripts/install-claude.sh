#!/usr/bin/env bash
# Installs Claude Code (npm package @anthropic-ai/claude-code) at the pinned
# version into a cache folder, unless it is already there. Its native
# executable sits in the @anthropic-ai/claude-code-linux-x64 dependency.
# Prints the path of the binary as its last line.
set -euo pipefail

CLAUDE_VERSION="2.1.197"
TOOLS_DIR="${MALA_TOOLS_DIR:-$HOME/.cache/mala-tools}"
PREFIX="$TOOLS_DIR/claude-$CLAUDE_VERSION"
BINARY="$PREFIX/node_modules/@anthropic-ai/claude-code-linux-x64/claude"

if [ -x "$BINARY" ] && "$BINARY" --version 2>/dev/null | grep -q "^$CLAUDE_VERSION "; then
  echo "claude $CLAUDE_VERSION already installed" >&2
  echo "$BINARY"
  exit 0
fi

command -v npm >/dev/null || { echo "error: npm is needed to install Claude Code (apt-get install npm)" >&2; exit 1; }
echo "installing @anthropic-ai/claude-code@$CLAUDE_VERSION into $PREFIX" >&2
mkdir -p "$PREFIX"
(cd "$PREFIX" && npm install --no-audit --no-fund --loglevel=error "@anthropic-ai/claude-code@$CLAUDE_VERSION" >&2)
[ -x "$BINARY" ] || { echo "error: $BINARY missing after npm install" >&2; exit 1; }
"$BINARY" --version >&2
echo "$BINARY"
