"""A module's exports read as the kernel reads them: each struct kernel_symbol, the name through the
relocation of its name field (klpcore.modtree.module_exports)."""

from __future__ import annotations

from elfbuild import Obj, Rela, Sec, Sym

from klpcore import constants as C
from klpcore.elf import ElfModule
from klpcore.modtree import module_exports

PC32, ABS64 = 2, 1  # toy numbers: module_exports takes any relocation of the field as S + A


def _module(entries: list[tuple[str, str, str]], *, prel32: bool = True, flagstab: bytes | None = None) -> bytes:
    """``entries``: (section, __ksymtab_<sym> symbol, name string) per export."""
    width, name_at = (12, 4) if prel32 else (24, 8)
    strings = b""
    where: dict[str, int] = {}
    for _, _, name in entries:
        where.setdefault(name, len(strings))
        strings += name.encode() + b"\0" if name not in strings.decode().split("\0") else b""
    tables: dict[str, int] = {}
    syms = [Sym("func_" + str(i), ".text", 16 * i, C.STB_GLOBAL, C.STT_FUNC, 16) for i in range(len(entries))]
    relas = []
    for i, (sec, sym, name) in enumerate(entries):
        k = tables.get(sec, 0)
        tables[sec] = k + 1
        syms.append(Sym(sym, sec, width * k, C.STB_LOCAL))
        kind = PC32 if prel32 else ABS64
        relas.append(Rela(sec, width * k, kind, "func_" + str(i)))
        relas.append(Rela(sec, width * k + name_at, kind, "__ksymtab_strings", where[name]))
    secs = [Sec(".text", flags=C.SHF_ALLOC | C.SHF_EXECINSTR, data=bytes(16 * len(entries)), align=16)]
    secs += [Sec(s, flags=C.SHF_ALLOC, data=bytes(width * n), align=4) for s, n in tables.items()]
    secs.append(Sec("__ksymtab_strings", flags=C.SHF_ALLOC | 0x30, data=strings, align=1))
    if flagstab is not None:
        secs.append(Sec("__kflagstab", flags=C.SHF_ALLOC, data=flagstab, align=1))
    syms.append(Sym("__ksymtab_strings", "__ksymtab_strings", 0, C.STB_LOCAL))  # names at S + A
    return Obj(machine=0xBEEF, sections=secs, symbols=syms, relas=relas).build()


def test_the_name_is_the_string_the_entry_points_at() -> None:
    data = _module([("__ksymtab", "__ksymtab_foo", "foo"), ("__ksymtab", "__ksymtab_bar", "baz")])
    assert module_exports(ElfModule(data, path="m.ko")) == [("foo", False), ("baz", False)]


def test_gpl_section_and_flagstab() -> None:
    data = _module([("__ksymtab", "__ksymtab_a", "a"), ("__ksymtab_gpl", "__ksymtab_b", "b")])
    assert module_exports(ElfModule(data, path="m.ko")) == [("a", False), ("b", True)]
    data = _module([("__ksymtab", "__ksymtab_a", "a"), ("__ksymtab", "__ksymtab_b", "b")], flagstab=b"\x00\x01")
    assert module_exports(ElfModule(data, path="m.ko")) == [("a", False), ("b", True)]


def test_pointer_entries() -> None:
    data = _module([("__ksymtab", "__ksymtab_x", "other_name")], prel32=False)
    assert module_exports(ElfModule(data, path="m.ko")) == [("other_name", False)]


def test_without_relocated_entries_the_symbols_decide() -> None:
    obj = Obj(
        machine=0xBEEF,
        sections=[Sec("__ksymtab", flags=C.SHF_ALLOC, data=bytes(12), align=4)],
        symbols=[Sym("__ksymtab_only", "__ksymtab", 0, C.STB_LOCAL)],
    )
    assert module_exports(ElfModule(obj.build(), path="m.ko")) == [("only", False)]
