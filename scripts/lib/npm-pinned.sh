# Installs npm package $1 at version $2 into $TOOLS_DIR/$3-$2, unless the
# binary $4 (relative to that folder) already answers --version with a line
# matching $5. Prints the binary's path as its last line. Sourced by the
# install scripts of the pinned agent CLIs.
install_pinned_npm() {
  local package="$1" version="$2" name="$3" relative="$4" version_line="$5"
  local tools_dir="${MALA_TOOLS_DIR:-$HOME/.cache/mala-tools}"
  local prefix="$tools_dir/$name-$version"
  local binary="$prefix/$relative"
  if [ -x "$binary" ] && "$binary" --version 2>/dev/null | grep -q "$version_line"; then
    echo "$name $version already installed" >&2
    echo "$binary"
    return 0
  fi
  command -v npm >/dev/null || { echo "error: npm is needed to install $package (apt-get install npm)" >&2; return 1; }
  echo "installing $package@$version into $prefix" >&2
  mkdir -p "$prefix"
  (cd "$prefix" && npm install --no-audit --no-fund --loglevel=error "$package@$version" >&2)
  [ -x "$binary" ] || { echo "error: $binary missing after npm install" >&2; return 1; }
  "$binary" --version >&2
  echo "$binary"
}
