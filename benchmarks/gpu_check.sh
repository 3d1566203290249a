#!/usr/bin/env bash
# The GPU check: what a machine with one GPU measures first, in one call (about 6 minutes on an H100/H200).
#
#   bash benchmarks/gpu_check.sh                       # all parts
#   GPU_CHECK_PARTS="train attacks flow" bash benchmarks/gpu_check.sh
#   GPU_CHECK_PARTS=flow GPU_CHECK_DEVICE=cpu bash benchmarks/gpu_check.sh   # the flow part, dry, on a CPU
#
# Parts (GPU_CHECK_PARTS, default all):
#   train    a recovery-training step of both arms at Pythia-1.4B's real shape (random weights, the
#            profile's batch, accumulation and block length): tokens/s, MFU, peak memory, the
#            monotonic/baseline ratio;
#   gc       the same with gradient checkpointing (its memory and its cost in time);
#   attacks  one step of each gradient-guided attack at the 1.4B profile's attack shape, fp32 against
#            bf16 autocast: speedup, agreement of the candidate losses, the search budget in GPU hours;
#   flow     the paper-shape rehearsal (monollm.experiments.rehearsal: a Pythia-shaped model with a ~50k BPE, Pile-
#            layout shards) through the whole flow on CUDA, the hub profiles' code paths end to end.
#            Needs metaflow and datasets importable (the cluster image has them).
# Then the cost table (benchmarks/cost_table.py) from the rates just measured.
# The log goes to $OUT/gpu_check.log (or ./gpu_check.log) and a markdown report to gpu_check.md beside it.
# Each part has its own time limit, so one that hangs leaves the others their time.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false USERNAME=${USERNAME:-monollm}
parts=${GPU_CHECK_PARTS:-train gc attacks flow}
dir=${OUT:-.}
log=$dir/gpu_check.log
has() { [[ " $parts " == *" $1 "* ]]; }
{
  echo "== machine"; date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| transformers', transformers.__version__)"
  if has train; then
    echo "== training step, pythia-1.4b shape"
    timeout 180 python3 benchmarks/train_step.py --config config/pythia-1.4b.toml --random-init --steps 3 --rounds 2
  fi
  if has gc; then
    echo "== training step, pythia-1.4b shape, gradient checkpointing"
    timeout 90 python3 benchmarks/train_step.py --config config/pythia-1.4b.toml --random-init --steps 3 --rounds 1 \
        --grad-checkpointing on
  fi
  if has attacks; then
    echo "== attack steps (uat, hotflip, gcg), pythia-1.4b shape"
    timeout 180 python3 benchmarks/attack_step.py --config config/pythia-1.4b.toml --random-init --rounds 2 \
        --opt-examples 32 --examples 128
  fi
  if has flow; then
    echo "== the paper-shape rehearsal through the flow on ${GPU_CHECK_DEVICE:-cuda}"
    if python3 -c "import metaflow, datasets, zstandard" 2>/dev/null; then
      work=$(mktemp -d) repo=$(pwd)
      python3 -m monollm.experiments.rehearsal "$work/assets" >/dev/null 2>&1
      sed -i "s/^device = \"cpu\"/device = \"${GPU_CHECK_DEVICE:-cuda}\"/" "$work/assets/rehearsal.toml"
      mkdir -p "$work/ds"
      (cd "$work" && METAFLOW_HOME="$work/mf" METAFLOW_DATASTORE_SYSROOT_LOCAL="$work/ds" \
          METAFLOW_DEFAULT_DATASTORE=local METAFLOW_DEFAULT_METADATA=local PYTHONPATH="$repo:${PYTHONPATH:-}" \
          timeout 240 python3 "$repo/flows/mono_flow.py" --config config "$work/assets/rehearsal.toml" run \
          > "$work/flow.log" 2>&1)
      status=$?
      grep -vE "^\s*$" "$work/flow.log" | grep -vE "Loading weights|Writing model" | tail -40
      echo "flow exit status: $status"
    else
      echo "skipped: metaflow, datasets or zstandard is not importable here (pip install -r requirements.txt)"
    fi
  fi
  date -u
} 2>&1 | tee "$log"
{
  echo "# GPU check, $(date -u +%Y-%m-%d)"; echo; echo '```'; cat "$log"; echo '```'; echo
  has train && has attacks && python3 benchmarks/cost_table.py --from-log "$log"
} > "$dir/gpu_check.md" 2>&1
echo "report: $dir/gpu_check.md"
