#!/usr/bin/env bash
# The label-efficiency tables on one GPU machine, in ONE call that ends before a hard deadline.
#
# Needs bench/pack/ (bench/make_device_pack.sh: the engine's missing packages and the data at the
# CPU preset spacing); only the repository travels. Runs, side by side on the GPU:
#   1. every method + both baselines at seed 1337 on ACDC and LA at the CPU preset
#      (bench/label_efficiency.py; baselines first, slowest methods next);
#   2. as time allows, seeds 1338 and 1339 for the baselines and the EXTRA_BEST best methods so far;
#   3. beside them, a short probe of the references' budget (--preset ssl4mis: 256x256, batch
#      12+12, SGD 0.01) for PROBE_ITERATIONS iterations, whose s/iter times 30,000 estimates
#      what the full preset would take (it needs its own call, and ACDC at 1.5 mm).
# No run starts after START_LIMIT_S; at HARD_LIMIT_S the runs still going are stopped, and the
# reports are rewritten from every run that finished. Everything the lead needs lands in $OUT
# (at most 8 files, one folder deep): label_efficiency.{md,json,png}, probe/label_efficiency.{md,json},
# device_run.log.
#
# The device call (from the repository root, bench/pack/ present and carried; about 9 minutes of
# command, plus the machine's start):
#   run(command="JOBS=14 START_LIMIT_S=330 HARD_LIMIT_S=525 bash bench/device_run.sh",
#       carry=["bench/pack"], timeout_s=600)
#   OUT=... bash bench/device_run.sh                       # on the GPU machine (defaults below)
#   DEVICE=cpu JOBS=2 ITERATIONS=20 ... bash bench/device_run.sh   # the same script on a CPU, tiny
set -u
T0=$(date +%s)
OUT=${OUT:-/tmp/device_out}
PACK=${PACK:-bench/pack}
WORK=${WORK:-/tmp/sslsegment_bench}
DEVICE=${DEVICE:-cuda}
JOBS=${JOBS:-14}
HARD_LIMIT_S=${HARD_LIMIT_S:-525}     # from the script's start: every run stopped by then
START_LIMIT_S=${START_LIMIT_S:-330}   # from the script's start: no run starts after it
ITERATIONS=${ITERATIONS:-3000}        # ACDC (CPU preset)
LA_ITERATIONS=${LA_ITERATIONS:-2000}  # LA (CPU preset)
METHODS=${METHODS:-all}
DATASETS=${DATASETS:-acdc,la}
EXTRA_SEEDS=${EXTRA_SEEDS:-1338,1339}
EXTRA_BEST=${EXTRA_BEST:-3}
PROBE_ITERATIONS=${PROBE_ITERATIONS:-200}   # 0: no probe of the references' budget
NUM_WORKERS=${NUM_WORKERS:-0}         # batch threads, not processes: the cores are shared by JOBS runs
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT" "$WORK"
LOG="$OUT/device_run.log"
say() { echo "[$(date -u +%H:%M:%S) +$(( $(date +%s) - T0 ))s] $*" | tee -a "$LOG"; }
left() { echo $(( HARD_LIMIT_S - ($(date +%s) - T0) )); }

export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONUNBUFFERED=1
if ! "$PYTHON" -c "import SimpleITK, monai, nrrd, slicerio" 2>/dev/null; then
    say "unpacking the engine's packages from $PACK/site.tar.xz"
    mkdir -p "$WORK/site" && "$PYTHON" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' \
        "$PACK/site.tar.xz" "$WORK/site" || { say "no packages"; exit 3; }   # Python's lzma: no xz binary needed
    export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ ! -d "$WORK/data/data" ]; then
    say "unpacking the data"
    "$PYTHON" bench/data_pack.py unpack --pack "$PACK" --out "$WORK/data" >>"$LOG" 2>&1 || { say "unpack failed"; exit 3; }
fi
say "$("$PYTHON" -c 'import torch, monai, SimpleITK; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "", "monai", monai.__version__, "sitk", SimpleITK.Version_VersionString())' 2>&1)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader >>"$LOG"

START_LIMIT=$(( START_LIMIT_S - ($(date +%s) - T0) ))
COMMON=(--device "$DEVICE" --data "$WORK/data/data" --num-workers "$NUM_WORKERS")
if [ "$PROBE_ITERATIONS" -gt 0 ]; then
    say "probe of the references' budget: $PROBE_ITERATIONS iterations"
    timeout -k 5 "$(left)" "$PYTHON" bench/label_efficiency.py --preset ssl4mis --iterations "$PROBE_ITERATIONS" \
        --acdc-spacing 3 --jobs 5 --time-limit "$START_LIMIT" "${COMMON[@]}" --scratch "$WORK/probe" \
        --results "$OUT/probe" --note "timing probe: the pack's 3 mm data, so slices are padded to 256x256" \
        >>"$OUT/probe.log" 2>&1 &
    PROBE=$!
fi
say "tables: jobs $JOBS, ACDC $ITERATIONS it, LA $LA_ITERATIONS it, runs start until +${START_LIMIT_S}s, stop at +${HARD_LIMIT_S}s"
timeout -k 5 "$(left)" "$PYTHON" bench/label_efficiency.py --datasets "$DATASETS" --methods "$METHODS" \
    --iterations "$ITERATIONS" --la-iterations "$LA_ITERATIONS" --seeds 1337 --extra-seeds "$EXTRA_SEEDS" \
    --extra-best "$EXTRA_BEST" --jobs "$JOBS" --time-limit "$START_LIMIT" "${COMMON[@]}" \
    --scratch "$WORK/runs" --results "$OUT" --note "bench/device_run.sh: $JOBS runs side by side" 2>&1 | tee -a "$LOG"
say "tables: exit ${PIPESTATUS[0]} (124: stopped at the hard limit)"
[ -n "${PROBE:-}" ] && { wait "$PROBE"; say "probe: exit $?"; }
# Runs stopped at the limit leave no result: the reports come from the finished ones.
"$PYTHON" bench/label_efficiency.py --report-only --scratch "$WORK/runs" --results "$OUT" >>"$LOG" 2>&1
[ -n "${PROBE:-}" ] && "$PYTHON" bench/label_efficiency.py --report-only --scratch "$WORK/probe" --results "$OUT/probe" >>"$LOG" 2>&1
[ -n "${PROBE:-}" ] && "$PYTHON" bench/probe_estimate.py "$WORK/probe" 30000 2>&1 | tee -a "$LOG"
rm -f "$OUT/probe/label_efficiency.png"   # keep $OUT within 8 files
[ -f "$OUT/probe.log" ] && { tail -n 40 "$OUT/probe.log" >>"$LOG"; rm -f "$OUT/probe.log"; }
"$PYTHON" bench/goals.py "$OUT/label_efficiency.json" 2>&1 | tee -a "$LOG"
say "done; files: $(cd "$OUT" && find . -type f | tr '\n' ' ')"
