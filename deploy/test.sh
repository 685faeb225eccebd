#!/usr/bin/env bash
# Installs what the tests need, builds, and runs the whole suite (XCTest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh --tests
swift build --build-tests
swift test --skip-build --disable-swift-testing "$@"
