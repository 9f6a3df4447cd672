#!/usr/bin/env bash
# Several 4,000-label CIFAR-10 self-training runs side by side on one GPU, for a short GPU lease.
#
# A noised student on one GPU is bound by kernel launches (benchmarks/results/gpu_check_h200.md: 14,000-16,000
# images/s for cnn-m with `strong` augmentation, ~45,000 without), so one process leaves the GPU idle much of the
# time; several processes fill it. Each line of CONFIGS is `NAME OPTIONS…`, options of `fewlabels selftrain --recipe
# cifar-cpu`, run through benchmarks/selftrain_cifar10.py (`-- OPTIONS`; results go to
# benchmarks/results/selftrain_cifar10_4000_NAME.*, with the exact `fewlabels` command). Each run is stopped after
# SECONDS; a stopped run keeps the rounds it finished (runs/bench-…/roundN/results.json, metrics.jsonl), which are
# packed too.
#
#     FEWLABELS_SHARED=../shared bash benchmarks/gpu_selftrain_sweep.sh CONFIGS OUTDIR [SECONDS]
#     SMOKE=1 …   the same runs with --smoke (a minute on a CPU: checks the script, not the figures)
set -u
CONFIGS=$1
OUTDIR=${2:-runs/gpu_sweep}
SECONDS_RUN=${3:-500}
PY=${PYTHON:-python3}
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export FEWLABELS_UNPACKED=${FEWLABELS_UNPACKED:-/tmp/fewlabels-unpacked}
touch "$OUTDIR/start"

{ nvidia-smi 2>&1 | head -15; nproc; $PY -c "import torch, torchvision, timm
print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'timm', timm.__version__,
      'cuda', torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
  git rev-parse --short HEAD 2>/dev/null; } >"$OUTDIR/env.txt" 2>&1

# unpack the archive once, before the runs race to do it
$PY -c "import sys; sys.path.insert(0, 'benchmarks'); from _shared_data import unpacked; unpacked('cifar10')" \
    >>"$OUTDIR/env.txt" 2>&1 || { echo "no CIFAR-10 archive: set FEWLABELS_SHARED" >&2; exit 2; }

n=$(grep -cv '^\s*\(#\|$\)' "$CONFIGS")
threads=$(( $(nproc) / (n > 0 ? n : 1) )); threads=$(( threads > 0 ? threads : 1 ))
pids=()
while read -r name args; do
    case "$name" in ''|'#'*) continue ;; esac
    # shellcheck disable=SC2086  # ARGS are words on purpose
    OMP_NUM_THREADS=$threads timeout "$SECONDS_RUN" $PY benchmarks/selftrain_cifar10.py \
        --results-name "selftrain_cifar10_4000_$name" ${SMOKE:+--smoke} -- $args >"$OUTDIR/$name.log" 2>&1 &
    pids+=("$!:$name")
    echo "started $name: $args" >>"$OUTDIR/env.txt"
done <"$CONFIGS"
for p in "${pids[@]}"; do
    wait "${p%%:*}"; echo "${p#*:} rc=$? at $(( $(date +%s) - $(stat -c %Y "$OUTDIR/start") )) s" >>"$OUTDIR/env.txt"
done

# the figures and each round's small files (no checkpoints)
find benchmarks/results runs -newer "$OUTDIR/start" -type f \( -name '*.json' -o -name '*.jsonl' -o -name '*.md' \
    -o -name '*.png' \) -print0 | tar czf "$OUTDIR/results.tgz" --null -T -
cat "$OUTDIR/env.txt"
