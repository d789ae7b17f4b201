#!/usr/bin/env bash
# The GPU checks, as one script for a session that has the H200 for ~10 minutes (the device tool's run,
# which copies $OUT back: at most 8 files). Each step has its own timeout, so one hang cannot eat the others;
# every output goes to $OUT. Budget: tests 150 s + bench/train.py 300 s + bench/generate.py 120 s < 600 s.
#
#   bash bench/gpu_check.sh [WHEELS_DIR]        (run tool: command "bash bench/gpu_check.sh .whl", carry [".whl"])
#   CHECKS="train" bash bench/gpu_check.sh .whl  (a subset: any of tests train generate)
#
# The H200 image lacks a few packages (../shared/notes/gpu-h200.md). Fetch them here, once, into the
# git-ignored .whl/ (about 4 MB), pinned to the versions of this venv:
#   .venv/bin/pip freeze | grep -iE '^(datasets|evaluate|pydantic|pydantic[-_]core|annotated[-_]types|typing[-_]inspection|typing[-_]extensions|dill|multiprocess|fsspec)==' > /tmp/gpu-wheels.txt
#   .venv/bin/pip download --only-binary=:all: --python-version 3.12 --no-deps -d .whl -r /tmp/gpu-wheels.txt
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-check}
CHECKS=${CHECKS:-tests train generate}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [ -n "${1:-}" ]; then
  "$PYTHON" -m pip install --no-index --no-deps --target /tmp/site "$1"/*.whl >"$OUT/pip.txt" 2>&1 \
    || echo "pip install failed (see pip.txt)" >>"$OUT/summary.txt"
  export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
{ nvidia-smi; "$PYTHON" -c 'import sys, torch, transformers; print(sys.version, torch.__version__, transformers.__version__)'; } \
  >"$OUT/env.txt" 2>&1

step() {  # step NAME SECONDS COMMAND...: run with a timeout, output to $OUT/NAME.txt, rc and time to summary.txt
  local name=$1 limit=$2 start=$SECONDS
  shift 2
  timeout -k 10 "$limit" "$@" >"$OUT/$name.txt" 2>&1
  echo "$name: rc=$? in $((SECONDS - start)) s (limit $limit s; 124 = timed out)" | tee -a "$OUT/summary.txt"
}

tests=$(ls tests/test_train*.py tests/test_loss.py tests/test_sampling*.py tests/test_generate.py \
  tests/test_bench_train.py 2>/dev/null)
case " $CHECKS " in *" tests "*) step tests 150 "$PYTHON" -m pytest -q -rf --maxfail=5 -p no:cacheprovider $tests ;; esac
case " $CHECKS " in *" train "*) step bench_train 300 "$PYTHON" bench/train.py --device cuda --rounds 2 ;; esac
case " $CHECKS " in *" generate "*) step bench_generate 120 "$PYTHON" bench/generate.py --device cuda ;; esac
