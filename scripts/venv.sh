# scripts/venv.sh -- the project's virtual environment, sourced by scripts/demo and scripts/test.
#
# Why a venv: on a stock Debian the python3 on PATH is the system's, "externally managed"
# (PEP 668), and pip refuses to install into it; where pip does install globally, it changes
# packages other programs rely on. So everything goes into .venv/ in the checkout, made with the
# python3 first on PATH (as root on Debian, python3-venv is installed with apt-get if missing).
#
# Why a stamp: pip takes half a minute even when nothing changed, and needs the network.
# .venv/.kubedns-stamp records what was installed: the interpreter (implementation, X.Y version,
# base prefix) and the venv's own path, a hash of setup.cfg and pyproject.toml, and the extras.
# While it matches, pip is not run at all, so a second start needs no network. A different
# interpreter or a moved checkout recreates the venv; changed packaging files or a new extra
# reinstall into it. Delete .venv (or just the stamp) to force a fresh install.
#
# Usage (bash, from the project root):
#   source scripts/venv.sh
#   kubedns_venv [EXTRA]        # e.g. "test"; afterwards .venv/bin is first on PATH
#
# The package goes in as `pip install -e '.[EXTRA]' --config-settings editable_mode=compat`: the
# compat editable mode puts the checkout on sys.path, which is how twistd finds
# twisted/plugins/kubedns_plugin.py.

_kubedns_apt_updated=

# True when this script may install Debian packages: root, with apt-get.
kubedns_can_apt() {
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null
}

# apt-get install PACKAGE...; `apt-get update` runs once per script run, before the first install.
kubedns_apt_install() {
  if [ -z "$_kubedns_apt_updated" ]; then
    apt-get update -qq
    _kubedns_apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# Make sure `python3 -m venv` can create a venv with pip in it (Debian ships ensurepip apart,
# in python3-venv). Installs it as root on Debian; otherwise says what to install.
kubedns_venv_support() {
  python3 -c 'import venv, ensurepip' 2>/dev/null && return 0
  if kubedns_can_apt; then
    local version
    version=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    echo "scripts: installing python3-venv (python3 has no venv/ensurepip)" >&2
    kubedns_apt_install python3-venv "python$version-venv" 2>/dev/null || kubedns_apt_install python3-venv
    python3 -c 'import venv, ensurepip' 2>/dev/null && return 0
  fi
  echo "scripts: $(command -v python3) cannot create a virtual environment (no venv/ensurepip module);" \
    "on Debian: apt-get install python3-venv" >&2
  return 1
}

# The interpreter python3 stands for: a venv made from it and python3 itself print the same line.
_kubedns_python_id() {
  python3 -c 'import sys; print(sys.implementation.name, "%d.%d" % sys.version_info[:2], sys.base_prefix)'
}

_kubedns_stamp_field() {  # FIELD STAMPFILE -> value of the line "FIELD value"
  sed -n "s/^$1 //p" "$2" 2>/dev/null
}

# True when .venv in the current directory holds what `kubedns_venv [EXTRA]` would install.
# Leaves what it computed in _kubedns_env_id, _kubedns_files and _kubedns_want for kubedns_venv.
kubedns_venv_current() {
  local extra="${1:-}" venv="$PWD/.venv"
  local stamp="$PWD/.venv/.kubedns-stamp" have

  # Never build the venv from its own interpreter (a shell that already has .venv/bin on PATH).
  PATH=$(printf '%s' "$PATH" | tr ':' '\n' | { grep -vxF "$venv/bin" || true; } | paste -sd: -)
  if ! command -v python3 >/dev/null; then
    echo "scripts: no python3 on PATH (on Debian: apt-get install python3 python3-venv)" >&2
    return 2
  fi
  _kubedns_env_id="$(_kubedns_python_id) $venv"
  _kubedns_files=$(cat setup.cfg pyproject.toml 2>/dev/null | sha256sum | cut -d' ' -f1)
  have=$(_kubedns_stamp_field extras "$stamp")
  _kubedns_want=$(printf '%s\n' ${have//,/ } $extra | sort -u | paste -sd, -)  # what is there plus what is asked
  [ -x "$venv/bin/python" ] && [ "$(_kubedns_stamp_field env "$stamp")" = "$_kubedns_env_id" ] \
    && [ "$(_kubedns_stamp_field files "$stamp")" = "$_kubedns_files" ] && [ "$_kubedns_want" = "$have" ]
}

# Create (or reuse) .venv in the current directory, install the package into it unless the stamp
# says it is already there, and put .venv/bin first on PATH.
kubedns_venv() {
  local extra="${1:-}" venv="$PWD/.venv"
  local stamp="$PWD/.venv/.kubedns-stamp" spec current=0

  kubedns_venv_current "$extra" || current=$?
  [ "$current" != 2 ] || return 1
  if [ "$current" = 0 ]; then
    echo "scripts: .venv is up to date (pip not run; delete .venv to reinstall)" >&2
  else
    if ! [ -x "$venv/bin/python" ] || [ "$(_kubedns_stamp_field env "$stamp")" != "$_kubedns_env_id" ]; then
      kubedns_venv_support || return 1
      echo "scripts: creating .venv with $(command -v python3) ($(python3 -V 2>&1))" >&2
      python3 -m venv --clear "$venv" || return 1
    fi
    rm -f "$stamp"  # an interrupted install must not look complete
    spec=.
    [ -z "$_kubedns_want" ] || spec=".[$_kubedns_want]"
    echo "scripts: pip install -e '$spec' into .venv" >&2
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$spec" \
      --config-settings editable_mode=compat || return 1
    printf 'env %s\nfiles %s\nextras %s\n' "$_kubedns_env_id" "$_kubedns_files" "$_kubedns_want" >"$stamp"
  fi

  export VIRTUAL_ENV="$venv"
  export PATH="$venv/bin:$PATH"
  unset PYTHONHOME
  hash -r
}
