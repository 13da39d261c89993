#!/usr/bin/env bash
# Installs the OpenAI Codex CLI (npm package @openai/codex) at the pinned
# version into a cache folder, unless it is already there. Its native
# executable sits in the @openai/codex-linux-x64 dependency.
# Prints the path of the binary as its last line.
set -euo pipefail

CODEX_VERSION="0.171.0"
TOOLS_DIR="${MALA_TOOLS_DIR:-$HOME/.cache/mala-tools}"
PREFIX="$TOOLS_DIR/codex-$CODEX_VERSION"
BINARY="$PREFIX/node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex"

if [ -x "$BINARY" ] && "$BINARY" --version 2>/dev/null | grep -q "^codex-cli $CODEX_VERSION$"; then
  echo "codex $CODEX_VERSION already installed" >&2
  echo "$BINARY"
  exit 0
fi

command -v npm >/dev/null || { echo "error: npm is needed to install the Codex CLI (apt-get install npm)" >&2; exit 1; }
echo "installing @openai/codex@$CODEX_VERSION into $PREFIX" >&2
mkdir -p "$PREFIX"
(cd "$PREFIX" && npm install --no-audit --no-fund --loglevel=error "@openai/codex@$CODEX_VERSION" >&2)
[ -x "$BINARY" ] || { echo "error: $BINARY missing after npm install" >&2; exit 1; }
"$BINARY" --version >&2
echo "$BINARY"
