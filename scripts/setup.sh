#!/usr/bin/env bash
# Installs everything gradcomp's build, tests and demo need on a fresh Debian machine, then
# builds and installs gradcomp (editable) against the pinned torch. Idempotent.
#   GRADCOMP_BUILD_TESTS=1  also build the GoogleTest binaries (in build/cmake)
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=(libgtest-dev ccache clang-format dataset-fashion-mnist iproute2)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  echo "setup: apt-get install ${missing[*]}"
  "${sudo_cmd[@]}" apt-get update -q
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q "${missing[@]}"
fi

echo "setup: pip install -r requirements-dev.txt"
python3 -m pip install -q --disable-pip-version-check -r requirements-dev.txt

echo "setup: building gradcomp (pip install --no-build-isolation -e .)"
python3 -m pip install -q --disable-pip-version-check --no-build-isolation -e .
python3 -c "import gradcomp; print('setup: gradcomp', gradcomp.__version__, 'compressors:', ', '.join(gradcomp.compressor_names()))"
