"""A toy architecture plugin for core tests: it lets the core be tested with
no real architecture plugin installed.  Machine 0xBEEF, either byte order.

It is also the proof that an architecture needs only a plugin: nothing in
``klpcore/`` knows it (tests/core/test_toy_plugin.py registers it under an
entry point and runs ``apply``, ``check`` and the conformance suite)."""

from __future__ import annotations

from typing import Any

from klpcore import ABS, PREL, ArchSpec, Entry, RelocFailure, RelocType, SectionContext, hookimpl, signed, unsigned
from klpcore import constants as C
from klpcore.constants import ModuleState
from klpcore.kernel import KernelTarget
from klpcore.testing.klpify import KlpSym, klpify
from klpcore.versions import Behaviour

TOY = 0xBEEF
ARCHES = [(TOY, 2, "little", 0), (TOY, 2, "big", 0)]

NONE, ABS64, PREL32, ABS32, CALL, ZERO32, ABS16 = 0, 1, 2, 3, 4, 5, 6

#: the toy's row of the version table: R_TOY_ABS16 exists from "6.10"
FEATURE = Behaviour("toy_abs16", (6, 10), "toy", "the toy handles R_TOY_ABS16", "toyarch.py")
BEHAVIOURS = (FEATURE,)


def call_handler(ctx: SectionContext, e: Entry) -> None:
    """Writes S + A as 4 bytes and counts calls in ctx.state; refuses S == 0xdead."""
    if e.S == 0xDEAD:
        raise RelocFailure("dead target", kernel_message=f"{ctx.module_name}: dead")
    ctx.state["calls"] = ctx.state.get("calls", 0) + 1
    ctx.write_uint(e.P, 4, e.S + e.addend, insn=True, hint="poke")


TYPES = [
    RelocType(NONE, "R_TOY_NONE"),
    RelocType(ABS64, "R_TOY_ABS64", 8, "S + A", ABS),
    RelocType(
        PREL32,
        "R_TOY_PREL32",
        4,
        "S + A - P",
        PREL,
        check=signed(32),
        error="value {value:#x} out of signed 32-bit range",
        kernel_error="{module}: overflow type {number} val {value:x}",
    ),
    RelocType(ABS32, "R_TOY_ABS32", 4, "S + A", ABS, check=unsigned(32), kernel_error="{module}: ovf {value:x}"),
    RelocType(CALL, "R_TOY_CALL", 4, "S + A", handler=call_handler),
    RelocType(ZERO32, "R_TOY_ZERO32", 4, "S + A", ABS, require_zero=True, zero_error="{module}: nonzero at {loc:#x}"),
]


@hookimpl
def klp_arch_identify(machine: int, elfclass: int, byteorder: str, e_flags: int) -> ArchSpec | None:
    if machine != TOY:
        return None
    return ArchSpec(
        "toy",
        TOY,
        byteorder=byteorder,
        description="toy test architecture",
        unknown_type_error="{module}: Unknown toy relocation: {number}",
        type_names={99: "R_TOY_UNKNOWN"},
        ignored_undefined=frozenset({"__toy_ignored"}),
        default_base=0xFFFFFFFFC0000000,
        percpu_base=0xFFFFFFFFA0000000,
        module_area_size=1 << 30,
        pointer_type=ABS64,
        config_symbol="CONFIG_TOY",
        kernel_text_range=(0xFFFFFFFF80000000, 1 << 64),
        capstone=("CS_ARCH_X86", "CS_MODE_64"),  # any decoder: lets the core test disasm
        options={"toy_address": "address", "toy_flag": "bool", "toy_count": "int"},
    )


#: from :data:`FEATURE` on
NEW_TYPES = [
    RelocType(ABS16, "R_TOY_ABS16", 2, "S + A", ABS, check=unsigned(16), kernel_error="{module}: ovf16 {value:x}"),
]


@hookimpl
def klp_arch_behaviours() -> tuple[Behaviour, ...]:
    return BEHAVIOURS


@hookimpl
def klp_arch_reloc_types(arch: ArchSpec, kernel: KernelTarget) -> list[RelocType]:
    return TYPES + NEW_TYPES if kernel.has(FEATURE) else TYPES


@hookimpl
def klp_arch_write_method(image: object, region: object, address: int, size: int, hint: str | None) -> str | None:
    if getattr(image, "state", None) == ModuleState.UNFORMED:
        return "memcpy"
    if hint == "poke":
        return "toy_poke"
    return None


def toy_livepatch(name: str = "livepatch_demo", helper: KlpSym | None = None, **klpify_kw: Any) -> bytes:
    """A toy livepatch module: ``.text.fn`` with an ABS64 to ``printk`` (an
    export) and CALLs to ``secret`` (a ``vmlinux`` klp symbol) and ``helper``
    (``helper``, default the second ``ext4`` symbol of that name)."""
    from elfbuild import Obj, Rela, Sec, Sym  # the tests' ELF builder (tests/ is on the path)

    base = Obj(
        sections=[Sec(".text.fn", flags=C.SHF_ALLOC | C.SHF_EXECINSTR, data=bytes(32), align=16)],
        symbols=[Sym("printk"), Sym("secret"), Sym("helper")],
        relas=[
            Rela(".text.fn", 0, ABS64, "printk", 0),
            Rela(".text.fn", 8, CALL, "secret", 0),
            Rela(".text.fn", 16, CALL, "helper", 0),
        ],
        modinfo={"name": name},
    ).build()
    return klpify(base, {"secret": KlpSym("vmlinux"), "helper": helper or KlpSym("ext4", 2)}, **klpify_kw)
