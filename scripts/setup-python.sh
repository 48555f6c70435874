#!/usr/bin/env bash
# Creates .venv with the real jina 3.34 and the public jcloud client, pinned as
# ../shared/data/jina/constraints.txt says (plain pip backtracks for 20+ minutes).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="${ZEROFLOW_VENV:-$root/.venv}"
constraints="$root/../shared/data/jina/constraints.txt"
if [ -x "$venv/bin/jina" ] && "$venv/bin/python" -c 'import jina, jcloud' 2>/dev/null; then
  echo "python venv ready at $venv"; exit 0
fi
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet uv
"$venv/bin/uv" pip install --python "$venv/bin/python" \
  jina==3.34.0 docarray jcloud==0.3 'setuptools<81' -c "$constraints"
echo "python venv ready at $venv"
