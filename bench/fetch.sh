#!/usr/bin/env bash
# Fetch the benchmark inputs into bench/data/ (gitignored; never commit them).
#
#   bash bench/fetch.sh [--force] [ARCH ...]      ARCH: amd64 (default), ppc64el, arm64, s390x
#
# For each ARCH: download Debian's linux-image-6.1.0-<abi>-<flavour> package
# with apt-get (or take it from LOCAL_DEB_DIR, e.g. LOCAL_DEB_DIR=/work/pkgs,
# with no apt and no dpkg architecture change), extract the module (amdgpu.ko;
# s390x: btrfs.ko, as s390x has no amdgpu) and the modules it depends on, and generate
# the symbol files (bench/gensyms.py):
#   bench/data/<arch>/amdgpu.ko         the module (decompressed if .ko.xz)
#   bench/data/<arch>/System.map.gz     vmlinux symbols (copied from the corpus
#                                       when its ABI is there; else a synthetic
#                                       vmlinux block goes into modules.kallsyms)
#   bench/data/<arch>/modules.kallsyms  kallsyms lines of drm, ttm, ... with [module]
#   bench/data/<arch>/ld.syms           one address per undefined symbol, for GNU ld
#   bench/data/<arch>/manifest.json     what run.py reads
#
# Environment: ABI=50 picks the ABI (default: the corpus System.map's ABI if
# apt has it, else the newest); CORPUS=/path/to/shared/corpus.
# A foreign architecture (ppc64el) is added to dpkg for the download and
# removed again afterwards, as the corpus README asks.
set -euo pipefail

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DATA="$BENCH/data"
CORPUS=${CORPUS:-$(cd "$BENCH/../.." && pwd)/shared/corpus}
[ -d "$CORPUS" ] || CORPUS=/work/shared/corpus
PY=${PYTHON:-python3}

FORCE=0
ARCHES=()
for a in "$@"; do
    case "$a" in
        --force) FORCE=1 ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) ARCHES+=("$a") ;;
    esac
done
[ ${#ARCHES[@]} -gt 0 ] || ARCHES=(amd64)

SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo

log() { echo "fetch: $*" >&2; }

fetch_arch() {
    local arch=$1 flavour pkgsuffix oracle_arch base corpus_dir mapname modname=amdgpu.ko ktext=0xffffffff81000000
    case "$arch" in
        amd64)   flavour=amd64;       pkgsuffix=-unsigned; oracle_arch=x86_64;  base=0xffffffffc0000000 ;;
        ppc64el) flavour=powerpc64le; pkgsuffix="";        oracle_arch=ppc64le; base=0xc008000000000000 ;;
        # arm64: Debian 6.1's module area without KASLR (_etext - 128 MiB): every call in direct range
        arm64)   flavour=arm64;       pkgsuffix=-unsigned; oracle_arch=aarch64; base=0xffff800000d00000
                 ktext=0xffff800008000000 ;;
        # s390x: btrfs.ko; the module area of Debian's kernel under qemu, the kernel at 0x100000
        s390x)   flavour=s390x;       pkgsuffix="";        oracle_arch=s390x;   base=0x3ff7fd00000
                 modname=btrfs.ko; ktext=0x100000 ;;
        *) log "unknown architecture $arch (amd64, ppc64el, arm64, s390x)"; return 2 ;;
    esac
    local out="$DATA/$arch"
    if [ $FORCE = 0 ] && [ -f "$out/manifest.json" ] && [ -f "$out/$modname" ]; then
        log "$arch: already there ($out); --force to fetch again"
        return 0
    fi

    local tmp
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/klpbench.XXXXXX")
    TMPS+=("$tmp")
    chmod 777 "$tmp"   # apt's _apt user writes the download
    local localdeb=""
    [ -n "${LOCAL_DEB_DIR:-}" ] && localdeb=$(ls "$LOCAL_DEB_DIR"/linux-image-6.1.0-*-"$flavour$pkgsuffix"_*.deb 2>/dev/null | tail -1 || true)
    local added_arch=0 native abi pkg
    native=$(dpkg --print-architecture)
    if [ -n "$localdeb" ]; then
        log "$arch: using $localdeb (LOCAL_DEB_DIR)"
        cp "$localdeb" "$tmp/"
        pkg=$(dpkg-deb -f "$localdeb" Package)
        abi=$(sed -E 's/^linux-image-6\.1\.0-([0-9]+)-.*/\1/' <<<"$pkg")
        corpus_dir="$CORPUS/$arch"
    else
    if [ "$arch" != "$native" ] && ! dpkg --print-foreign-architectures | grep -qx "$arch"; then
        log "$arch: dpkg --add-architecture $arch (removed again afterwards)"
        $SUDO dpkg --add-architecture "$arch"
        added_arch=1
        $SUDO apt-get update -qq >/dev/null 2>&1 || log "apt-get update reported errors (going on)"
    elif ! apt-cache show "linux-image-6.1.0-50-$flavour$pkgsuffix" >/dev/null 2>&1 \
         && [ -z "$(apt-cache search --names-only "^linux-image-6\.1\.0-[0-9]+-$flavour$pkgsuffix\$" 2>/dev/null)" ]; then
        $SUDO apt-get update -qq >/dev/null 2>&1 || log "apt-get update reported errors (going on)"
    fi

    corpus_dir="$CORPUS/$arch"
    local corpus_abi=""
    mapname=$(ls "$corpus_dir"/System.map-6.1.0-*-"$flavour".gz 2>/dev/null | head -1 || true)
    [ -n "$mapname" ] && corpus_abi=$(basename "$mapname" | sed -E 's/^System\.map-6\.1\.0-([0-9]+)-.*/\1/')

    local qual="" ; [ "$arch" != "$native" ] && qual=":$arch"
    local abis
    abis=$(apt-cache search --names-only "^linux-image-6\.1\.0-[0-9]+-$flavour$pkgsuffix\$" \
           | sed -E "s/^linux-image-6\.1\.0-([0-9]+)-.*/\1/" | sort -n | uniq)
    if [ -z "$abis" ]; then
        log "$arch: no linux-image-6.1.0-*-$flavour$pkgsuffix package known to apt"
        cleanup_arch "$arch" $added_arch
        return 1
    fi
    abi=${ABI:-}
    if [ -z "$abi" ]; then
        if [ -n "$corpus_abi" ] && grep -qx "$corpus_abi" <<<"$abis"; then abi=$corpus_abi; else abi=$(tail -1 <<<"$abis"); fi
    fi
    pkg="linux-image-6.1.0-$abi-$flavour$pkgsuffix"
    log "$arch: ABI $abi (available: $(echo $abis)); downloading $pkg"

    (cd "$tmp" && apt-get download -q "$pkg$qual" >/dev/null 2>"$tmp/apt.err") || {
        cat "$tmp/apt.err" >&2; cleanup_arch "$arch" $added_arch; return 1; }
    cleanup_arch "$arch" $added_arch
    fi
    local deb version
    deb=$(ls "$tmp"/*.deb)
    version=$(dpkg-deb -f "$deb" Version)
    mkdir -p "$tmp/x"
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp/x" --wildcards '*.ko' '*.ko.xz' 2>/dev/null || true
    rm -f "$deb"
    find "$tmp/x" -name '*.ko.xz' -exec xz -d {} +
    local ko
    ko=$(find "$tmp/x" -name "$modname" | head -1)
    if [ -z "$ko" ]; then log "$arch: no $modname in $pkg"; return 1; fi

    rm -rf "$out"
    mkdir -p "$out"
    cp "$ko" "$out/$modname"
    echo "$pkg $version" > "$out/SOURCE"
    local symmap="" want="$corpus_dir/System.map-6.1.0-$abi-$flavour.gz"
    if [ -f "$want" ]; then
        cp "$want" "$out/System.map.gz"
        symmap="$out/System.map.gz"
    else
        log "$arch: no System.map for ABI $abi in $corpus_dir: vmlinux symbols will be synthetic"
    fi
    "$PY" "$BENCH/gensyms.py" --module "$out/$modname" --modules-dir "$tmp/x" \
        ${symmap:+--system-map "$symmap"} --base "$base" --kernel-text "$ktext" \
        --out-kallsyms "$out/modules.kallsyms" --out-ld "$out/ld.syms" --out-info "$out/gensyms.json" || return 1

    "$PY" - "$out" "$arch" "$oracle_arch" "$pkg" "$version" "$abi" "$base" "$symmap" "$modname" <<'EOF'
import json, os, sys
out, arch, oracle_arch, pkg, version, abi, base, symmap, modname = sys.argv[1:]
from elftools.elf.elffile import ELFFile
elf = ELFFile(open(os.path.join(out, modname), "rb"))
relocs = sum(s["sh_size"] // s["sh_entsize"] for s in elf.iter_sections()
             if s["sh_type"] == "SHT_RELA" and s["sh_entsize"])
syms = (["System.map.gz"] if symmap else []) + ["modules.kallsyms"]
info = json.load(open(os.path.join(out, "gensyms.json")))
options = {}
if arch == "ppc64el" and symmap:  # the ppc64le plugin needs kernel_toc_addr() (vmlinux .TOC.) for _mcount stubs
    import gzip
    for line in gzip.open(symmap, "rt"):
        parts = line.split()
        if len(parts) >= 3 and parts[2] == ".TOC.":
            options["kernel_toc"] = "0x" + parts[0]
            break
if arch == "arm64":  # GNU ld has no erratum-843419 rule like the kernel's: compare with the workaround off
    options["erratum_843419"] = "false"
m = {"arch": arch, "oracle_arch": oracle_arch, "machine": elf["e_machine"], "package": pkg, "version": version, "abi": abi,
     "module": modname, "relocations": relocs, "base": base, "kernel": "6.1",
     "klpcore_symbols": syms, "ld_symbols": "ld.syms", "dependencies": info["dependencies"],
     "synthetic_vmlinux": info["synthetic_vmlinux"], "kernel_options": options}
json.dump(m, open(os.path.join(out, "manifest.json"), "w"), indent=1)
print(f"fetch: {arch}: {modname} from {pkg}: {relocs} relocations -> {out}", file=sys.stderr)
EOF
    [ -f "$out/manifest.json" ] || return 1
}

cleanup_arch() {
    local arch=$1 added=$2
    if [ "$added" = 1 ]; then
        log "$arch: dpkg --remove-architecture $arch"
        $SUDO dpkg --remove-architecture "$arch" || true
        $SUDO apt-get update -qq >/dev/null || true
    fi
}

TMPS=()
trap 'for t in "${TMPS[@]}"; do rm -rf "$t"; done' EXIT
mkdir -p "$DATA"
status=0
for arch in "${ARCHES[@]}"; do
    fetch_arch "$arch" || { log "$arch: FAILED (skipped)"; status=1; }
done
exit $status
