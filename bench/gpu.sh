#!/usr/bin/env bash
# One command for a device session (bench/README.md, "GPU figures"): installs the carried wheels
# offline, builds random-weight models, runs bench/scale.py at 65,536 features over 1M tokens on
# the embedded model's shape and a Gemma-2-2B-wide one, then bench/gpu.py's correctness pass
# and causal timing. $OUT gets figures.txt (every name=value, prefixed with its step), one log per
# step (its stdout) and stderr.log (everything else): 6 files, within the 8 that come back.
# Dry run on CPU (the test suite's): DEVICE=cpu TINY=1 OUT=/tmp/x bench/gpu.sh
# BUNDLE: the folder `make gpu-bundle` filled (wheels/, model/); TOKENS: tokens per scale run.
set -uo pipefail
: "${OUT:?set OUT to the folder for figures and logs}"
DEVICE=${DEVICE:-cuda}
BUNDLE=${BUNDLE:-.gpu}
PY=${PYTHON:-python3}
cd "$(dirname "$0")/.."
# wandb: sae-lens imports it for training logs only; its 30 MB wheel does not fit the 64 MiB,
# so a stand-in that fails on use is on the path (before site-packages, in the dry run too)
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONPATH=.:bench/gpu_stub
ERR="$OUT/stderr.log"
: >"$ERR"
if [ -d "$BUNDLE/wheels" ] && [ -z "${TINY:-}" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$BUNDLE"/wheels/*.whl >>"$ERR" 2>&1 || { tail "$ERR"; exit 1; }
  export PYTHONPATH=/tmp/site:$PYTHONPATH
fi
if [ -n "${TINY:-}" ]; then
  TOKENS=${TOKENS:-2000} WIDTH=96 LAYER=2 PAIR=1 SIZES="--tiny" CHECK="--width 96 --causal-width 96 --texts 300 --features 1 --prompts 2"
else
  TOKENS=${TOKENS:-1000000} WIDTH=65536 LAYER=8 PAIR=4 SIZES="--device $DEVICE" CHECK=""
  nvidia-smi >>"$ERR" 2>&1
  # what every step imports, first: a broken install costs seconds, not the steps' minutes
  $PY -c "import torch, transformers, sae_lens, sqlmodel, safesail.workspace; print('torch',
    torch.__version__, 'transformers', transformers.__version__, 'sae_lens', sae_lens.__version__,
    'cuda', torch.cuda.is_available())" >>"$ERR" 2>&1 || { tail -20 "$ERR"; exit 1; }
fi
MODELS=$(mktemp -d)
fig() {  # every name=value word of a log's lines, one a line, prefixed with the step's name
  awk -v p="$2" '{for (i = 1; i <= NF; i++) if ($i ~ /^[a-z_0-9]+=/) print p $i}' "$1" >>"$OUT/figures.txt"
}
step() {  # step NAME SECONDS COMMAND...: its log in $OUT/NAME.log, its figures prefixed NAME.
  local name=$1 limit=$2; shift 2
  echo "[$(date +%T)] $name" | tee -a "$ERR" >&2
  timeout "$limit" "$@" >"$OUT/$name.log" 2>>"$ERR"
  local rc=$?
  echo "${name}.rc=$rc" >>"$OUT/figures.txt"
  fig "$OUT/$name.log" "$name."
}
: >"$OUT/figures.txt"
step models 45 $PY bench/gpu.py models "$BUNDLE/model" "$MODELS" $SIZES
for shape in smol wide; do
  step "scale_$shape" 150 $PY bench/scale.py --collect-only --model "$MODELS/$shape" --generated-corpus \
    --device "$DEVICE" --dtype bfloat16 --width $WIDTH --tokens $TOKENS --layer $LAYER --pair-every $PAIR
done
step check 100 $PY bench/gpu.py check "$MODELS/smol" --device "$DEVICE" $CHECK
rm -rf "$MODELS"
cat "$OUT/figures.txt"
