#!/usr/bin/env bash
# The prepared GPU check (issue 19), as the device tool runs it: installs the carried wheels (.whl/)
# of the packages missing there, then runs benchmarks/gpu_check.py into $OUT with the carried
# official clones and golden fixtures (.carry/detr, .carry/deformable_detr, .carry/golden) when
# present. Extra arguments go to gpu_check.py (a second run: --parts NAME ...). The device tool's
# call is in docs/results.md, "GPU check".
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/gpu_check}
mkdir -p "$OUT"
for name in pycocotools; do  # wheels named NAME-*.whl, imported as NAME
    if ! python3 -c "import $name" 2>/dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
            --find-links .whl .whl/"$name"-*.whl || exit 1
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
done
args=(--out "$OUT" --budget-s "${BUDGET_S:-420}")
[ -f .carry/detr/main.py ] && args+=(--official-detr .carry/detr)
[ -f .carry/deformable_detr/main.py ] && args+=(--official-deformable .carry/deformable_detr)
[ -d .carry/golden ] && args+=(--golden .carry/golden)
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-16}
python3 benchmarks/gpu_check.py "${args[@]}" "$@" 2>&1 | tee "$OUT/gpu_check.log"
