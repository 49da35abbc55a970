#!/usr/bin/env bash
# Instructions of one Loader(...).load(...) per benchmark module, counted by callgrind (independent of
# the load on the machine): bench/rate.py --loads-only 3 minus --loads-only 1, halved.
#
#   bash bench/instructions.sh [ARCH ...]        (default: every bench/data/*/ ; about 1 minute each)
#
# PYTHON picks the interpreter (default: python3).  Prints ARCH, relocations, instructions per load and
# instructions per relocation.
set -euo pipefail
BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PY=${PYTHON:-python3}
ARCHES=("$@")
[ ${#ARCHES[@]} -gt 0 ] || ARCHES=($(cd "$BENCH/data" && ls -d */ | tr -d /))
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
count() {  # ARCH K -> total instructions
    valgrind --tool=callgrind --callgrind-out-file="$tmp/cg.out" "$PY" "$BENCH/rate.py" --arch "$1" \
        --loads-only "$2" >/dev/null 2>"$tmp/err" || { cat "$tmp/err" >&2; return 1; }
    sed -n 's/^summary: //p' "$tmp/cg.out"
}
for a in "${ARCHES[@]}"; do
    relocs=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['relocations'])" "$BENCH/data/$a/manifest.json")
    one=$(count "$a" 1)
    three=$(count "$a" 3)
    per=$(( (three - one) / 2 ))
    echo "$a relocations $relocs instructions/load $per instructions/relocation $(( per / relocs ))"
done
