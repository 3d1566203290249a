#!/usr/bin/env bash
# The GPU check: what a lent GPU machine measures first, in one call (about 6 minutes on one H100/H200).
#
#   bash benchmarks/gpu_check.sh            # writes the report to stdout and, if set, $OUT/gpu_check.log
#
# 1. the card and the software there;
# 2. a recovery-training step of both arms at Pythia-1.4B's real shape (random weights, the
#    profile's batch, accumulation and block length): tokens/s, MFU, peak memory, the
#    monotonic/baseline ratio; then the same with gradient checkpointing (its memory);
# 3. one step of each gradient-guided attack at the 1.4B profile's attack shape, fp32 against
#    bf16 autocast: speedup, agreement of the candidate losses, the search budget in GPU hours.
# Each part has its own time limit, so one that hangs leaves the others their time.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
log=${OUT:-/tmp}/gpu_check.log
{
  echo "== machine"; date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| transformers', transformers.__version__)"
  echo "== training step, pythia-1.4b shape"
  timeout 180 python3 benchmarks/train_step.py --config config/pythia-1.4b.toml --random-init --steps 3 --rounds 2
  echo "== training step, pythia-1.4b shape, gradient checkpointing"
  timeout 90 python3 benchmarks/train_step.py --config config/pythia-1.4b.toml --random-init --steps 3 --rounds 1 \
      --grad-checkpointing on
  echo "== attack steps, pythia-1.4b shape"
  timeout 120 python3 benchmarks/attack_step.py --config config/pythia-1.4b.toml --random-init --rounds 2 \
      --opt-examples 32 --examples 128
  date -u
} 2>&1 | tee "$log"
