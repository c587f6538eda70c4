#!/usr/bin/env bash
# One GPU check in one call (bench/gpu_check.py says what each row measures).
#
#   bash bench/gpu_check.sh [--out DIR] [gpu_check.py options]    # on the GPU machine ($OUT by default)
#   bash bench/gpu_check.sh --cpu --out DIR                       # tiny sizes on a CPU (CI)
#
# On the GPU machine it first installs bench/wheels (made here by bench/gpu_wheels.sh and carried
# with the call) offline, without dependencies, into a folder of its own put first on PYTHONPATH,
# so the machine's torch and its other packages stay as they are; then it runs the check. The
# table lands in DIR: gpu_check.md, gpu_check.json, log.txt (the end of every row's log) and
# install.txt (what was installed, the machine's versions).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_check_out}"
cpu=0
prev=""
for a in "$@"; do
    [ "$a" = "--cpu" ] && cpu=1
    [ "$prev" = "--out" ] && out="$a"
    prev="$a"
done
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ "$cpu" = 0 ]; then
    site=/tmp/lwm_gpu_check_site
    if ! ls bench/wheels/*.whl >/dev/null 2>&1; then
        echo "gpu_check: no wheels in bench/wheels: run 'bash bench/gpu_wheels.sh' where PyPI is reachable," \
             "and carry bench/wheels with the call" >&2
        exit 2
    fi
    t0=$(date +%s)
    {
        echo "python: $(command -v python3) $(python3 -V 2>&1)"
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
            bench/wheels/*.whl
        echo "pip exit $? after $(( $(date +%s) - t0 )) s; installed into $site:"
        ls bench/wheels
        echo "the machine's own (pip show):"
        python3 -m pip show torch transformers tokenizers accelerate huggingface-hub pyarrow numpy fsspec pandas \
            safetensors peft typing-extensions packaging regex 2>/dev/null | grep -E "^(Name|Version):" | paste - -
    } > "$out/install.txt" 2>&1
    export PYTHONPATH="$site:$PYTHONPATH"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >> "$out/install.txt" 2>&1 || true
fi
exec python3 bench/gpu_check.py "$@"
