#!/usr/bin/env bash
# Installs citygate with the video extra and runs the embedded demo (configs/demo.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --disable-pip-version-check -e ".[video]"
exec citygate run configs/demo.yaml "$@"
