#!/usr/bin/env bash
# The GPU checks in one go, sized to fit 8 minutes on one GPU: the GPU test set and the GPU benchmarks.
#
#   tools/gpu_check.sh                        # on a machine with NVIDIA GPUs
#   GPU_CHECK_DRY_RUN=1 tools/gpu_check.sh    # the same stages on CPU at tiny sizes (tools/gpu_kit.sh dry-run)
#   GPU_CHECK_STAGES="pytest scoring" tools/gpu_check.sh   # only these stages (flops pytest train scoring)
#
# Everything lands in $OUT (default runs/gpu-check), 8 files, flat, each written as its stage ends (and
# summary.json after every stage), so a run cut short still returns what it measured:
#   summary.json   each stage's status (passed, failed, timed-out, out-of-time, skipped, not-requested), seconds
#                  and note; the script's exit status once it ends
#   env.json       python, torch and CUDA, the GPUs, which of the job stack's modules import, the kit
#   pytest.log, pytest.xml      pytest -m gpu tests/gpu
#   flops.json, train.json, scoring.json   bench results (bench.run_all's format): MFU, samples/s, rows/s
#   bench.log      this script's lines, nvidia-smi and the benchmarks' output
#
# Python: $GPU_CHECK_PYTHON, else .venv/bin/python when it exists, else python3 (a GPU image's python with
# CUDA torch). Nothing is downloaded: the offline kit in .kit/ (tools/gpu_kit.sh build: ray, mlflow and the
# rest the image lacks) is unpacked into the scratch folder and put first on the import path. Stages whose
# modules are missing are skipped and named in summary.json; a machine whose torch has no CUDA stops at once.
#
# Exit status (also summary.json's "exit"):
#   0  every requested stage passed (stages left out of GPU_CHECK_STAGES are not-requested, not failures)
#   1  a stage failed, ran past its cap (timed-out), or never started for want of time (out-of-time)
#   2  none of that, but a requested stage was skipped: modules it needs do not import (the kit is missing)
#   3  no CUDA here and not a dry run: nothing ran
#   4  GPU_CHECK_STAGES names a stage that does not exist: nothing ran
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
OUT=${OUT:-$REPO/runs/gpu-check}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
DRY=${GPU_CHECK_DRY_RUN:-0}
# 8 minutes on a GPU machine; the dry run on 2 shared CPU cores runs the GPU tests on CPU and needs longer
BUDGET_S=${GPU_CHECK_BUDGET_S:-$([ "$DRY" = 1 ] && echo 1200 || echo 480)}
WORK=${GPU_CHECK_WORK:-$(mktemp -d /tmp/gpu-check.XXXXXX)}
mkdir -p "$WORK"
START=$(date +%s)
# offline machines: nothing may reach for a hub (every model here is built from a local config)
export PYTHONUNBUFFERED=1 MLFLOW_DISABLE_TELEMETRY=true TOKENIZERS_PARALLELISM=false RAY_DATA_DISABLE_PROGRESS_BARS=1
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TEXT_JOBS_CACHE="$WORK/cache"

say() { echo "[gpu_check $(($(date +%s) - START))s] $*" | tee -a "$OUT/bench.log"; }
left() { echo $((BUDGET_S - ($(date +%s) - START))); }
KILL_AFTER_S=10  # SIGTERM at a stage's limit, SIGKILL this much later

# the files of one run: an earlier run's in the same $OUT would read as this one's
rm -f "$OUT"/{summary,env,flops,train,scoring}.json "$OUT"/{summary.json.part,pytest.log,pytest.xml,bench.log}
ALL_STAGES=" flops pytest train scoring "
for stage in ${GPU_CHECK_STAGES:-}; do
    [[ "$ALL_STAGES" == *" $stage "* ]] || { say "GPU_CHECK_STAGES: no stage '$stage' (of$ALL_STAGES)"; exit 4; }
done

if [ -n "${GPU_CHECK_PYTHON:-}" ]; then PY=$GPU_CHECK_PYTHON
elif [ -x .venv/bin/python ]; then PY=$REPO/.venv/bin/python
else PY=$(command -v python3); fi
# The offline kit: unpacked with Python's tarfile (the machine may lack xz), first on the path; the repo too,
# for Ray's workers (nothing is installed there)
KIT=$(compgen -G "$REPO/.kit/*.tar.xz" | tail -1)
# its wheels are CPython 3.12's: another Python would find Ray and crash loading its binary (a virtualenv
# here with the stack installed runs without it)
if [ -n "$KIT" ] && ! "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
    KIT="none ($(basename "$KIT") is for CPython 3.12; $PY is $("$PY" -V 2>&1))"
fi
[ -f "$KIT" ] && "$PY" -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='data')" \
    "$KIT" "$WORK/kit" && export PYTHONPATH="$WORK/kit:$REPO${PYTHONPATH:+:$PYTHONPATH}"
say "python: $PY; kit: ${KIT:-none}; out: $OUT; work: $WORK; budget ${BUDGET_S}s; dry run: $DRY"
command -v nvidia-smi >/dev/null && nvidia-smi >>"$OUT/bench.log" 2>&1

# What this machine has: torch's CUDA, the GPUs, which modules of the job stack import, the kit's manifest.
"$PY" - "$OUT/env.json" "$WORK/kit/gpu-kit.json" <<'PYTHON'
import importlib, importlib.util, json, os, platform, sys
env = {"python": platform.python_version(), "executable": sys.executable, "modules": {}}
# snownlp and cn_clip are data the jobs find by path, never import (the kit strips what importing them loads)
found_only = {"snownlp", "cn_clip"}
for name in ("torch", "transformers", "tokenizers", "safetensors", "pyarrow", "pandas", "numpy", "yaml", "ray",
             "mlflow", "sqlalchemy", "alembic", "sklearn", "psutil", "pynvml", "pypinyin", "snownlp", "cn_clip",
             "pytest"):
    try:
        if name in found_only:
            spec = importlib.util.find_spec(name)
            if spec is None:
                raise ModuleNotFoundError(f"No module named '{name}'")
            env["modules"][name] = os.path.dirname(spec.origin)
            continue
        module = importlib.import_module(name)
        env["modules"][name] = getattr(module, "__version__", "present")
    except Exception as error:  # noqa: BLE001 -- a broken install counts as missing, with its reason
        env["modules"][name] = None
        env.setdefault("missing", {})[name] = f"{type(error).__name__}: {error}"
try:
    import torch
    env.update(torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available(),
               gpus=[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
               if torch.cuda.is_available() else [])
except ImportError:
    env.update(torch_cuda=None, cuda_available=False, gpus=[])
if os.path.isfile(sys.argv[2]):
    kit = json.load(open(sys.argv[2]))
    env["kit"] = {"built": kit["built"], "packages": kit["packages"]}
json.dump(env, open(sys.argv[1], "w"), indent=1)
PYTHON
env_py() {  # a one-liner over env.json: e is the whole, m its modules, sys.argv[2:] the arguments
    "$PY" -c "import json, sys; e = json.load(open(sys.argv[1])); m = e['modules']; $1" "$OUT/env.json" "${@:2}"
}
read -r CUDA GPUS <<<"$(env_py "print(int(e['cuda_available']), len(e['gpus']))")"
has() { env_py "sys.exit(0 if all(m.get(n) for n in sys.argv[2:]) else 1)" "$@"; }
missing() { env_py "print(' '.join(n for n in sys.argv[2:] if not m.get(n)))" "$@"; }

STAGES=()  # name|status|seconds|note, for summary.json
# summary.json again after every stage: a run killed from outside keeps the stages it finished
record() { STAGES+=("$1|$2|$3|$4"); say "$1: $2 (${3}s) $4"; write_summary; }
write_summary() {  # [EXIT]: the exit status, once the script ends (null while it runs)
    "$PY" - "$OUT/summary.json" "$DRY" "$CUDA" "$GPUS" "$(($(date +%s) - START))" "${1:-}" "${STAGES[@]}" <<'PYTHON'
import json, os, sys
path, dry, cuda, gpus, seconds, code, *stages = sys.argv[1:]
rows = [dict(zip(("stage", "status", "seconds", "note"), s.split("|", 3))) for s in stages]
tmp = path + ".part"
json.dump({"dry_run": dry == "1", "cuda": cuda == "1", "gpus": int(gpus), "seconds": int(seconds),
           "exit": int(code) if code else None, "stages": rows}, open(tmp, "w"), indent=1)
os.replace(tmp, path)
PYTHON
}
finish() { write_summary "$1"; say "exit status $1"; exit "$1"; }

if [ "$DRY" != 1 ] && [ "$CUDA" != 1 ]; then
    say "no CUDA here: torch $("$PY" -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda)' 2>&1)"
    say "this machine's torch cannot run the GPU checks; install a CUDA build of torch, or use GPU_CHECK_DRY_RUN=1"
    record preflight no-cuda 0 "torch.cuda.is_available() is false"
    finish 3
fi
if [ "$DRY" = 1 ]; then DEVICE=cpu; PRECISION=fp32; else DEVICE=cuda; PRECISION=bf16; fi

# run_stage NAME CAP_S LOG MODULES... -- COMMAND...: output appended to LOG; skipped when a module is missing,
# killed at its cap or when the budget runs out
run_stage() {
    local name=$1 cap=$2 log=$3; shift 3
    local needs=()
    while [ "$1" != "--" ]; do needs+=("$1"); shift; done
    shift
    if [ -n "${GPU_CHECK_STAGES:-}" ] && [[ " $GPU_CHECK_STAGES " != *" $name "* ]]; then
        record "$name" not-requested 0 "not in GPU_CHECK_STAGES"; return
    fi
    if ! has "${needs[@]}"; then record "$name" skipped 0 "missing modules: $(missing "${needs[@]}")"; return; fi
    local limit remaining
    remaining=$(($(left) - KILL_AFTER_S - 5))  # a stage killed late and the summary still end inside the budget
    limit=$(( cap < remaining ? cap : remaining ))
    if [ "$limit" -lt 20 ]; then record "$name" out-of-time 0 "$(left)s of the ${BUDGET_S}s budget left"; return; fi
    say "$name: $* (limit ${limit}s)"
    local t0 rc
    t0=$(date +%s)
    timeout --kill-after=$KILL_AFTER_S "$limit" "$@" >>"$log" 2>&1
    rc=$?
    local took=$(($(date +%s) - t0)) note=""
    [ "$name" = pytest ] && note=$(grep -E '(passed|failed|skipped|error)' "$OUT/pytest.log" | tail -1 | tr -d '=|')
    if [ $rc -eq 0 ]; then record "$name" passed "$took" "$note"
    elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then record "$name" timed-out "$took" "killed after ${limit}s $note"
    else record "$name" failed "$took" "exit status $rc $note"; fi
}

JOB_STACK=(torch transformers tokenizers safetensors pyarrow pandas yaml ray mlflow sqlalchemy alembic sklearn psutil
           pypinyin snownlp cn_clip)
# Each stage's cap (seconds); together they fit the budget, in order of importance.
if [ "$DRY" = 1 ]; then
    FLOPS_ARGS=(--quick); SCORE_ARGS=(--quick)
    # eager and the job: compiling MiniRBT on 2 cores takes 2-3 minutes and uses nothing the kit carries
    TRAIN_ARGS=(--rows 64 --repeats 2 --batch-size 16 --paths plain1 ray1)
    CAPS=(150 600 300 200)
    export GPU_TESTS_ON_CPU=1  # tests/gpu on 2 CPU workers over gloo: the job stack, not the device
else
    # estimated for one H200 and 16 cores (none measured yet): ~20 s before the first stage (the kit unpacked,
    # the stack imported once); flops 20 s; pytest 3-4 min (seven Ray jobs, one compiled); train 1.5 min
    # (compiling MiniRBT ~40 s); scoring 1 min; each killed at its cap, 460 s together; the 480 s budget, counted
    # from the start, shortens a later stage's limit when the earlier ones ran long
    FLOPS_ARGS=(--repeats 3 --steps 10); SCORE_ARGS=(--rows 40000 --repeats 2)
    TRAIN_ARGS=(--rows 8192 --repeats 3 --batch-size 64 --paths plain1 plain1c ray1)
    CAPS=(45 230 110 75)
fi

# 1. MFU: needs only torch and transformers (the seq2seq model is skipped, with a note, without pypinyin).
run_stage flops "${CAPS[0]}" "$OUT/bench.log" torch transformers -- "$PY" -m bench.model_flops --device "$DEVICE" \
    --precision "$PRECISION" --work-dir "$WORK/bench" --json "$OUT/flops.json" "${FLOPS_ARGS[@]}"
# 2. The GPU test set: correctness first, the larger part of the budget.
run_stage pytest "${CAPS[1]}" "$OUT/pytest.log" "${JOB_STACK[@]}" pytest -- "$PY" -m pytest -v -rs -m gpu tests/gpu \
    -p no:cacheprovider --junitxml "$OUT/pytest.xml" --basetemp "$WORK/pytest"
# 3. Fine-tuning samples/s, eager and compiled, plain loop and the Ray Train job (plus their start-up).
run_stage train "${CAPS[2]}" "$OUT/bench.log" "${JOB_STACK[@]}" -- "$PY" -m bench.train_throughput --device "$DEVICE" \
    --precision "$PRECISION" --work-dir "$WORK/bench" --json "$OUT/train.json" "${TRAIN_ARGS[@]}"
# 4. Scoring rows/s: the job against a hand loop, fp32 and bf16.
run_stage scoring "${CAPS[3]}" "$OUT/bench.log" "${JOB_STACK[@]}" -- "$PY" -m bench.scoring_gpu --device "$DEVICE" \
    --work-dir "$WORK/bench" --json "$OUT/scoring.json" "${SCORE_ARGS[@]}"

say "done in $(($(date +%s) - START))s; summary: $OUT/summary.json"
"$PY" -c "import json, sys
for s in json.load(open(sys.argv[1]))['stages']:
    print(f\"  {s['stage']:8s} {s['status']:13s} {s['seconds']:>4s}s  {s['note']}\")" "$OUT/summary.json"
# the device tool returns at most 8 files, flat
FILES=$(find "$OUT" -type f | wc -l)
[ "$FILES" -le 8 ] && [ -z "$(find "$OUT" -mindepth 1 -type d)" ] || say "WARNING: $OUT holds $FILES files or folders"
STATUSES=$(printf '%s\n' "${STAGES[@]}" | cut -d'|' -f2)
if grep -qE '^(failed|timed-out|out-of-time)$' <<<"$STATUSES"; then finish 1; fi
if grep -q '^skipped$' <<<"$STATUSES"; then finish 2; fi
finish 0
