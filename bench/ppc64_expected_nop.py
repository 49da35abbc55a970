"""5000 "Expected nop" failures on ppc64le: time with the function index, and (--old) with the symtab scan per
failure that klpcore used before.  python bench/ppc64_expected_nop.py [--old]"""

import struct
import sys
import time

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "tests"))
import klpcore_ppc64le as ppc
from elfbuild import Obj, Rela, Sec, Sym

from klpcore import Loader, RelocationError, get_plugin_manager, parse_symbol_text
from klpcore import constants as C

N = 5000
text = b"".join(struct.pack("<II", 0x48000001, 0x7C0802A6) for _ in range(N))  # bl; mflr r0 (not a nop)
funcs = [Sym(f"f{i}", ".text", 8 * i, type=C.STT_FUNC, size=8) for i in range(N)]
obj = Obj(
    machine=21,
    e_flags=2,
    sections=[
        Sec(".text", flags=C.SHF_ALLOC | C.SHF_EXECINSTR, data=text, align=4),
        Sec(".stubs", type=C.SHT_NOBITS, flags=C.SHF_ALLOC | C.SHF_EXECINSTR, size=0, align=8),
    ],
    symbols=[Sym("ext_fn"), *funcs],
    relas=[Rela(".text", 8 * i, 10, "ext_fn") for i in range(N)],
    modinfo={"name": "nopbench"},
).build()
syms = parse_symbol_text(
    "c000000000000000 T _stext\nc000000000100000 T ext_fn\nc000000001000000 r __ksymtab_ext_fn\n"
    "c000000001148100 d .TOC.\n"
)


def run():
    t = time.perf_counter()
    try:
        Loader(get_plugin_manager()).load(obj, syms, 0xC008000000000000)
    except RelocationError as e:
        n = len(e.diagnostics)
        msg = e.diagnostics[0].kernel_message
    return time.perf_counter() - t, n, msg


print("function index:", run())


def old_describe(ctx, address):
    elf = ctx.module.elf
    syms = elf.symbols
    best = None
    for i in range(1, elf.nsyms):
        shndx = int(syms["st_shndx"][i])
        if int(syms["st_info"][i]) & 0xF != C.STT_FUNC or not 0 < shndx < C.SHN_LORESERVE:
            continue
        base = ctx.section_address(shndx)
        if base is None:
            continue
        start = base + int(syms["st_value"][i])
        size = int(syms["st_size"][i])
        if start <= address < start + max(size, 1) and (best is None or start > best[0]):
            best = (start, size, elf.symbol_names[i])
    if best is None:
        return f"{address:#x}"
    return f"{best[2]}+{address - best[0]:#x}/{best[1]:#x} [{ctx.module.name}]"


if "--old" in sys.argv:
    ppc.stubs.describe_address = old_describe  # nop_failure (in stubs) looks it up there
    print("symtab scan (before):", run())
