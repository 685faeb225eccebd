#!/usr/bin/env bash
# Builds trainerd (release) after installing what it needs, then runs it with the given arguments:
#   deploy/trainerd.sh train configs/fmnist-mlp.yaml --run-dir runs/fmnist-mlp
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh
swift build -c release --product trainerd >&2
exec .build/release/trainerd "$@"
