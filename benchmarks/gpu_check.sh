#!/usr/bin/env bash
# The CUDA checks that fit one short GPU lease, in order of what they tell:
#   1. the machine (nvidia-smi, torch / torchvision / timm versions),
#   2. the CUDA unit test (augmentation on the GPU = on the CPU) and train_throughput.py on the GPU,
#   3. selftrain_cifar10.py --smoke (the whole self-training path on CUDA),
#   4. a 4,000-label CIFAR-10 self-training run sized to SECONDS from the measured images/s,
#   5. the whole test suite with CUDA visible (what time is left).
# Logs and a tarball of the results go to OUTDIR. Needs the CIFAR-10 archive: FEWLABELS_SHARED=../shared.
#
#     FEWLABELS_SHARED=../shared bash benchmarks/gpu_check.sh OUTDIR [SECONDS]
set -u
OUTDIR=${1:-runs/gpu_check}
SECONDS_RUN=${2:-300}
PY=${PYTHON:-python3}
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export FEWLABELS_UNPACKED=${FEWLABELS_UNPACKED:-/tmp/fewlabels-unpacked}
TAG=${GPU_TAG:-gpu}

pack() {  # the figures (JSON, Markdown) and each round's small files, no checkpoints
    find benchmarks/results runs -newer "$OUTDIR/env.txt" -type f \( -name '*.json' -o -name '*.jsonl' \
        -o -name '*.md' -o -name '*.png' -o -name '*.csv' -o -name '*.log' \) -print0 |
        tar czf "$OUTDIR/results.tgz" --null -T -
}

{ nvidia-smi; nproc; $PY -c "import torch, torchvision, timm, sklearn
print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'timm', timm.__version__,
      'sklearn', sklearn.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"; } \
    >"$OUTDIR/env.txt" 2>&1

{ timeout 60 $PY -m pytest -q -p no:cacheprovider tests/test_augment.py -k cuda
  echo "cuda test rc=$?"
  timeout 90 $PY benchmarks/train_throughput.py --steps "${THROUGHPUT_STEPS:-100}" --repeats 5 --noised --results-name "train_throughput_$TAG"
  echo "throughput rc=$?"; } >"$OUTDIR/throughput.log" 2>&1

timeout 120 $PY benchmarks/selftrain_cifar10.py --smoke --results-name "selftrain_$TAG" >"$OUTDIR/smoke.log" 2>&1
smoke=$?
echo "smoke rc=$smoke" >>"$OUTDIR/smoke.log"

if [ "$smoke" = 0 ]; then
    # Size the students to SECONDS: images/s of fit() on cnn-m (no augmentation) from step 2, times 0.5 for
    # augmentation, evaluation and pool labelling; the teacher's 120 epochs on 4,000 images and a 10-epoch fine-tune
    # come first; each student epoch is ~54,000 images (4,000 labelled + ~40,000 pseudo-labelled at a 1:3 ratio).
    read -r EPOCHS AUG DROP DPR < <($PY - "$TAG" "$SECONDS_RUN" <<'EOF'
import json, sys
tag, seconds = sys.argv[1], float(sys.argv[2])
try:
    ips = json.load(open(f"benchmarks/results/train_throughput_{tag}.json"))["images_per_s_median"]["ours_bf16_cl"]
except OSError:  # the throughput run did not finish: the shortest students
    ips = 0.0
budget = 0.5 * ips * seconds - 130 * 4000
epochs = int(max(6, min(40, budget // (3 * 54000))))
noise = epochs >= 15  # at 6-10 epochs noise makes students under-fit (selftrain_ablation.md)
print(epochs, "strong" if noise else "weak", 0.2 if noise else 0.0, 0.1 if noise else 0.0)
EOF
)
    echo "students: $EPOCHS epochs, augment $AUG, drop $DROP, drop-path $DPR" >"$OUTDIR/selftrain.log"
    timeout "$SECONDS_RUN" $PY benchmarks/selftrain_cifar10.py --results-name "selftrain_cifar10_4000_$TAG" -- \
        --teacher-model cnn-m-p2 --teacher-epochs 120 --rounds 3 --student-models cnn-m-p2,cnn-m-p2,cnn-m-p2 \
        --student-epochs "$EPOCHS" --student-augment "$AUG" --student-drop-rate "$DROP" \
        --student-drop-path-rate "$DPR" --tta-flip --tta-translate 1 --finetune-epochs 10 \
        >>"$OUTDIR/selftrain.log" 2>&1
    echo "selftrain rc=$?" >>"$OUTDIR/selftrain.log"
fi
pack

timeout "${PYTEST_SECONDS:-100}" $PY -m pytest -q -p no:cacheprovider tests >"$OUTDIR/pytest.log" 2>&1
echo "pytest rc=$?" >>"$OUTDIR/pytest.log"
pack

ls -la "$OUTDIR"
