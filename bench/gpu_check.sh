#!/usr/bin/env bash
# GPU check in one command (at most ~8 minutes on one H200): environment report, crammed-bert
# (16 x 768, seq 128, vocab 32768, microbatch 256, batch 512) in bf16 + torch.compile against
# HF BertForMaskedLM of the same size, MFU against the bf16 matmul peak measured in the same
# run, the data-wait fraction, a 2-process DDP step when 2+ GPUs are listed; goals printed
# PASS/FAIL. JSON goes to bench/results/gpu_check_<machine>.json. Exit status 0 whatever the
# goals say. Without CUDA it runs the same check at a tiny size on the CPU (a smoke test).
#
#   bash bench/gpu_check.sh [bench.gpu_check options, e.g. --cpu, --no-save, --json PATH]
#
# Setup, for a bare copy of the repository: the Python is $PYTHON, else the repo's .venv
# (when it has torch), else python3 / python. The project is imported from this checkout
# (PYTHONPATH; no install needed). Required packages it lacks are printed; where a folder of
# wheels exists ($CRAMMING_WHEELS, default bench/.wheels) the missing ones are installed
# from it offline into a temporary folder. To make such a folder on a machine with internet:
#   python3 -m pip download --no-deps --only-binary=:all: -d bench/.wheels \
#       hydra-core omegaconf ...   (antlr4-python3-runtime 4.9.3 ships as an sdist only:
#   python3 -m pip wheel --no-deps -w bench/.wheels antlr4-python3-runtime==4.9.3)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 0
REPO=$PWD
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ] && .venv/bin/python -c 'import torch' 2>/dev/null; then
        PY=$REPO/.venv/bin/python
    else
        PY=$(command -v python3 || command -v python || true)
    fi
fi
echo "== gpu_check: python ${PY:-none}, repo $REPO"
if [ -z "$PY" ] || ! "$PY" -c 'import torch' 2>/dev/null; then
    echo "FAIL: no Python with torch found (set PYTHON=/path/to/python)"
    exit 0
fi
"$PY" -c 'import torch; print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuda available: {torch.cuda.is_available()}, devices: {torch.cuda.device_count()}")'
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi -L || true
else
    echo "nvidia-smi: not found"
fi

export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
missing=$("$PY" -m bench.gpu_check --list-missing 2>/dev/null | tail -n 1)
if [ -n "$missing" ]; then
    echo "missing Python packages: $missing"
    WHEELS=${CRAMMING_WHEELS:-$REPO/bench/.wheels}
    if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
        SITE=$(mktemp -d /tmp/gpu-check-site.XXXXXX)
        wheels=()
        for dist in $missing; do
            pattern=$(echo "$dist" | tr '-' '_')
            for wheel in "$WHEELS"/*.whl; do
                name=$(basename "$wheel" | cut -d- -f1 | tr '[:upper:]' '[:lower:]')
                [ "$name" = "$pattern" ] && wheels+=("$wheel")
            done
        done
        if [ ${#wheels[@]} -gt 0 ]; then
            echo "installing offline from $WHEELS into $SITE: ${wheels[*]##*/}"
            "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
                --target "$SITE" "${wheels[@]}" && export PYTHONPATH="$PYTHONPATH:$SITE"
        fi
        missing=$("$PY" -m bench.gpu_check --list-missing 2>/dev/null | tail -n 1)
        echo "still missing: ${missing:-nothing}"
    else
        echo "no wheel folder at $WHEELS (set CRAMMING_WHEELS); the check will stop after the environment report"
    fi
fi
if ! "$PY" -c 'import cramming' 2>/dev/null; then  # not expected: the checkout is on PYTHONPATH
    "$PY" -m pip install -q --no-deps --no-build-isolation -e "$REPO" || true
fi

timeout --signal=INT --kill-after=20 470 "$PY" -u -m bench.gpu_check "$@"
rc=$?
[ $rc -ne 0 ] && echo "gpu_check: python exited with status $rc (see above)"
exit 0
