#!/usr/bin/env bash
# fewlabels' GPU recipe against USB's FixMatch at the same budget on one GPU, on the same 4,000-label CIFAR-10 split
# and the same 10,000 test images (issue 31), for a short device lease.
#
# A lease is 15 minutes of device time and a call at most 10, so the two runs go in two calls, one after the other
# on the same warm machine (the second within its 30 s of idle), each PHASE of this script in one:
#
#     # here, once: the wheels USB lacks there, and the data archive, both git-ignored
#     bash benchmarks/peers/gpu_wheels.sh
#     mkdir -p shared-data/data && cp ../shared/data/cifar10-jpeg.tar.gz shared-data/data/
#     # device calls (carry: [".whl", "shared-data"]), then collect here from what came back under $OUT
#     bash benchmarks/peers/gpu_side_by_side.sh "$OUT" 5 fewlabels   # setup, fewlabels selftrain --budget-minutes 5
#     bash benchmarks/peers/gpu_side_by_side.sh "$OUT" 5 usb         # USB FixMatch, --budget-minutes 5
#
# PHASE all runs both in one process (a CPU check, or a longer lease). SMOKE=1: cnn-tiny models for an epoch or two
# and a few USB iterations tested on 1,000 images, to check the script on a CPU in a few minutes (PY and USB_PY then
# name the two venvs' pythons, with SKIP_WHEELS=1).
# On the device USB runs from the wheels installed into /tmp/usb-site, with benchmarks/peers/stubs standing in for
# the aim and wandb loggers it imports and never uses (PATCHES.md); the CPU patches of patch_usb.py are applied and
# change nothing where CUDA is present. Each run's figures (final.json, budget.json, environment.json; USB's JSON
# line) are copied to OUTDIR with the machine's nvidia-smi.
set -u
OUTDIR=${1:?OUTDIR}
MINUTES=${2:-5}
PHASE=${3:-all}
PY=${PY:-python3}
USB_PY=${USB_PY:-$PY}
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1 FEWLABELS_SHARED=${FEWLABELS_SHARED:-$PWD/shared-data}
ARRAYS=${ARRAYS:-$HOME/.cache/fewlabels/peers/cifar10_4000}
SMOKE_ARGS=()
[ -n "${SMOKE:-}" ] && SMOKE_ARGS=(--test-images 1000)
FL_RUN=runs/peers-fewlabels-gpu-${MINUTES}m${SMOKE:+-smoke}

{ nvidia-smi 2>&1 | head -15; nproc; git rev-parse --short HEAD 2>/dev/null; date -u; } >"$OUTDIR/env_$PHASE.txt"

# setup (idempotent): the split exported by fewlabels' own code, USB's wheels patched
PYTHONPATH="$PWD" $PY benchmarks/peers/export_split.py --out "$ARRAYS" >>"$OUTDIR/env_$PHASE.txt" 2>&1 \
    || { echo "export_split failed (no CIFAR-10 archive? set FEWLABELS_SHARED)" >&2; tail -5 "$OUTDIR/env_$PHASE.txt"; exit 2; }
USB_PATH=benchmarks/peers/stubs
if [ -z "${SKIP_WHEELS:-}" ] && [ "$PHASE" != fewlabels ]; then
  if [ ! -d /tmp/usb-site/semilearn ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/usb-site .whl/*.whl || exit 2
  fi
  USB_PATH=/tmp/usb-site:$USB_PATH
  PYTHONPATH=$USB_PATH $USB_PY benchmarks/peers/patch_usb.py >>"$OUTDIR/env_$PHASE.txt" 2>&1 || exit 2
fi

if [ "$PHASE" = fewlabels ] || [ "$PHASE" = all ]; then
  data=$($PY -c "import json, sys; print(json.load(open(sys.argv[1]))['data'])" "$ARRAYS/meta.json")
  length=(--budget-minutes "$MINUTES")
  [ -n "${SMOKE:-}" ] && length=(--teacher-model cnn-tiny --student-models cnn-tiny --teacher-epochs 2 --student-epochs 1
                                   --finetune-epochs 0 --threshold 0)
  PYTHONPATH="$PWD" $PY -m fewlabels selftrain --recipe cifar-gpu --data "$data" --split "$ARRAYS/split.json" \
      "${length[@]}" --eval-every 1000 --out "$FL_RUN" >"$OUTDIR/fewlabels.log" 2>&1
  echo "fewlabels rc=$?" >>"$OUTDIR/env_$PHASE.txt"
  for f in final.json budget.json environment.json rounds.md; do cp "$FL_RUN/$f" "$OUTDIR/fewlabels_$f" 2>/dev/null; done
fi
if [ "$PHASE" = usb ] || [ "$PHASE" = all ]; then
  budget=$MINUTES
  [ -n "${SMOKE:-}" ] && budget=0.2
  PYTHONPATH=$USB_PATH $USB_PY benchmarks/peers/usb_run.py --algorithm fixmatch --budget-minutes "$budget" \
      --arrays "$ARRAYS" --results "$OUTDIR/usb_results.jsonl" --save-dir /tmp/usb-runs "${SMOKE_ARGS[@]}" \
      --note "gpu_side_by_side.sh" >"$OUTDIR/usb.log" 2>&1
  echo "usb rc=$?" >>"$OUTDIR/env_$PHASE.txt"
fi
cat "$OUTDIR/env_$PHASE.txt"
