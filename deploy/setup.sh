#!/usr/bin/env bash
# Installs what trainerd needs to build and run on Debian/Ubuntu, skipping what is already there:
# C libraries (zlib, OpenSSL's libcrypto, libzmq, SQLite for the daemon's job store) with pkg-config, Fashion-MNIST
# from Debian's dataset package, the text of Debian's fortunes package (the character-level language model's
# corpus), and dygraphs (libjs-dygraphs: the charts of the daemon's dashboard and of `trainerd report`).
# With --tests it also makes sure there are systemd-analyze (the unit files' test), Slurm and munge (the Slurm test's
# one-node cluster), Chromium (the dashboard's and the report's tests run in it, headless) and, in Python, NumPy (the tests' independent evaluator), prometheus-client (its parser checks
# the metrics file) and kubernetes-validate (Kubernetes' own schemas check the manifests).
set -euo pipefail

# Installs the Debian packages named that are not installed yet (root or sudo).
install_missing() {
    local missing=() package sudo=""
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
    done
    ((${#missing[@]})) || return 0
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "setup: installing ${missing[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

install_missing pkg-config zlib1g-dev libssl-dev libzmq3-dev libsqlite3-dev dataset-fashion-mnist fortunes libjs-dygraphs

if ! command -v swift >/dev/null 2>&1; then
    echo "setup: the Swift 6 toolchain is needed (https://www.swift.org/install/linux/) and 'swift' is not on PATH" >&2
    exit 1
fi

# Installs a package from PyPI unless its module imports already.
install_python_package() {
    local module=$1 package=$2 purpose=$3
    python3 -c "import $module" 2>/dev/null && return 0
    echo "setup: installing $package ($purpose)" >&2
    python3 -m pip install --quiet "$package" || echo "setup: $package unavailable; the tests that need it say so" >&2
}

if [ "${1:-}" = "--tests" ]; then
    install_missing slurm-wlm munge  # the Slurm test's one-node cluster
    command -v systemd-analyze >/dev/null 2>&1 || install_missing systemd  # systemd-analyze, for the unit files' test
    command -v curl >/dev/null 2>&1 || install_missing curl  # a client of its own for the daemon's API tests
    command -v chromium >/dev/null 2>&1 || install_missing chromium  # a real browser for the dashboard's tests
    install_python_package numpy numpy "the independent evaluator of trained weights"
    install_python_package prometheus_client prometheus-client "its parser checks the metrics file"
    install_python_package kubernetes_validate kubernetes-validate "Kubernetes' schemas check the manifests"
fi
