#!/usr/bin/env bash
# tunelog GPU check: the training recipe (plain, DeepSpeed ZeRO-2, torch.compile if time remains) on a
# random-weight Llama-3.2-1B-shaped model, LoRA r=16 all-linear, seq 2048, micro-batch 8, bf16, side by side
# with the workplace's two anchor scripts (scripts/gpu/anchors/, verbatim copies of /work/shared/gpu/) in the
# same call: tokens/s, peak memory, MFU against the bf16 matmul peak measured in the call.
#
# HOW TO RUN IT
#   1. here (network, CPU):  scripts/gpu/prepare.sh        # fills .whl/ and .data/gpu/tokenizer (~12 MB)
#      optional logic check: .venv/bin/python scripts/gpu/gpu_recipe_bench.py --smoke --anchors --out /tmp/smoke
#   2. the device, one call (the whole check ~8.5 min; per-call limit 600 s, 15 min of device time per session):
#        run(command="bash scripts/gpu/run_gpu_check.sh 480", carry=[".whl", ".data/gpu"], timeout_s=590)
#      a shorter call that leaves time to rerun (recipe plain + zero2, the DeepSpeed anchor, the peak; ~5 min):
#        run(command="bash scripts/gpu/run_gpu_check.sh 300 plain,zero2", carry=[".whl", ".data/gpu"],
#            timeout_s=390)
#      then give_back() unless rerunning at once.
#   3. what comes back, under files_at: gpu_check.md (the table), gpu_recipe_bench.json (everything),
#      anchors/gpu_anchor.json + anchors/gpu_ds_anchor.json (the anchors' own), logs/ (each process's output).
#
# Arguments: BUDGET_S (default 480: seconds for the whole script, installs included), CONFIGS (default
# plain,zero2,compile; compile runs last, only if >= 150 s remain). The budget is shared out so that a stage
# that cannot finish is skipped and named in the results, and every stage rewrites the results: a call cut
# short still brings back what was measured. Nothing is fetched at run time: wheels come from the carried
# .whl/, the tokenizer from .data/gpu/. Where the machine has no `datasets` (it is not among what the
# workplace lists, and with pyarrow it is too large to carry), the recipe's tokenized rows are kept in
# memory by scripts/gpu/shim/datasets (the results name which one ran).
# Check this script on a CPU: PY=.venv/bin/python SMOKE=1 bash scripts/gpu/run_gpu_check.sh 120 plain
set -uo pipefail
cd "$(dirname "$0")/../.."
T0=$(date +%s)
BUDGET=${1:-480}
CONFIGS=${2:-plain,zero2,compile}
PY=${PY:-$(command -v python3 || command -v python)}
export OUT=${OUT:-/tmp/gpu-check-out}
mkdir -p "$OUT"
export TORCH_EXTENSIONS_DIR=/tmp/torch_ext HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
  TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 | tee "$OUT/nvidia-smi.txt"

# what the machine lacks, from the carried wheels only (the workplace's tested install line)
missing=""
for mod in deepspeed pydantic hjson; do
  "$PY" -c "import $mod" 2>/dev/null || missing="$missing $mod"
done
if [ -n "$missing" ]; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    echo "installing from .whl/ for:$missing"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      .whl/*.whl 2>&1 | tail -5
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "missing:$missing and no .whl/ carried (run scripts/gpu/prepare.sh here, carry .whl): ZeRO-2 will fail"
  fi
fi
"$PY" -c "import datasets" 2>/dev/null || echo "no datasets here: the recipe's rows go through scripts/gpu/shim"
if [ ! -f .data/gpu/tokenizer/tokenizer.json ] && [ ! -f .data/models/smollm2-135m-instruct/tokenizer.json ]; then
  echo "no tokenizer: carry .data/gpu (filled by scripts/gpu/prepare.sh)"; exit 2
fi
LEFT=$((BUDGET - ($(date +%s) - T0)))
# SMOKE=1 (with PY=.venv/bin/python): the same path on a CPU, tiny model, to check this script itself
"$PY" scripts/gpu/gpu_recipe_bench.py --anchors --budget "$LEFT" --configs "$CONFIGS" --out "$OUT" \
  ${SMOKE:+--smoke}
rc=$?
echo "run_gpu_check: exit $rc after $(($(date +%s) - T0)) s; results in $OUT"
exit $rc
