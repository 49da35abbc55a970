"""Which behaviour starts in which kernel release: the one table.

Every version-dependent decision in klpcore and its plugins asks
:meth:`klpcore.kernel.KernelTarget.has` with a name from :data:`BEHAVIOURS`;
nothing else compares version numbers.  ``docs/versions.md`` is generated from
this table (``python -m klpcore.versions > docs/versions.md``) and a test checks
that it is up to date; ``tests/core/test_versions.py`` tests each boundary on
both sides.

A behaviour's ``since`` is the first mainline release that has it (the
merge window it was pulled in).  Stable trees may carry backports; the entry
says so where known, and ``-O <name>=true|false`` overrides any behaviour for
one run.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Behaviour:
    """One kernel behaviour that begins in a given release."""

    name: str
    since: tuple[int, int]
    arch: str  # "core", "x86_64", "ppc64le", ...
    description: str
    #: where in the kernel it changed (commit subject or file), for reviewers
    source: str

    @property
    def label(self) -> str:
        return f"{self.since[0]}.{self.since[1]}"


#: The newest release whose module loader and livepatch code were checked
#: against klpcore (the default target when a module carries no usable
#: ``vermagic``).  7.1 (7.1.5) differs from 6.19 in these files only by
#: ``invalid_shndx_refused``; later releases were not available to check and
#: get 7.1's rules (reports say so).
NEWEST: tuple[int, int] = (7, 1)
#: The oldest kernel klpcore models (the 2015 livepatch RFC era).
OLDEST: tuple[int, int] = (4, 3)

_TABLE = [
    Behaviour(
        "module_rwx_helpers",
        (4, 5),
        "core",
        "livepatch makes module text writable around late writes with module_disable_ro/module_enable_ro "
        "(before: set_memory_rw/set_memory_ro on the core text, the 2015 RFC era)",
        "kernel/livepatch/core.c klp_write_object_relocations (4.5)",
    ),
    Behaviour(
        "final_klp_format",
        (4, 7),
        "core",
        "the final livepatch ELF format: .klp.rela.<obj>.<sec> sections with SHF_RELA_LIVEPATCH and "
        ".klp.sym.<obj>.<name>,<pos> symbols in SHN_LIVEPATCH (before: the 2015 RFC __klp_rela_ prototype)",
        "livepatch: reuse module loader code to write relocations (4.7)",
    ),
    Behaviour(
        "early_vmlinux_klp",
        (5, 8),
        "core",
        "vmlinux-specific .klp.rela sections are applied at module load by apply_relocations "
        "(before: at patch enable, with the module sections)",
        "livepatch: Apply vmlinux-specific KLP relocations early (5.8)",
    ),
    Behaviour(
        "klp_vmlinux_symbol_check",
        (5, 8),
        "core",
        "a module-specific .klp.rela section may not reference a vmlinux symbol "
        '("invalid access to vmlinux symbol ...")',
        "livepatch: Prevent module-specific KLP rela sections from referencing vmlinux symbols (5.8)",
    ),
    Behaviour(
        "klp_no_module_disable_ro",
        (5, 8),
        "core",
        "livepatch no longer makes module memory writable around late relocations (module_disable_ro is "
        "gone); architectures must write read-only text with their own primitive (x86 text_poke, ppc64 "
        "patch_instruction from 5.16)",
        "livepatch: Remove module_disable_ro() usage (5.8)",
    ),
    Behaviour(
        "x86_text_poke",
        (5, 8),
        "x86_64",
        "late (livepatch) relocations are written with text_poke (before: module_disable_ro + plain stores)",
        "x86/module: Use text_poke() for late relocations (5.8)",
    ),
    Behaviour(
        "ignore_undef_symbol",
        (5, 12),
        "core",
        "an undefined _GLOBAL_OFFSET_TABLE_ is ignored on x86 (ignore_undef_symbol); before, it is 'Unknown symbol'",
        "module: Ignore _GLOBAL_OFFSET_TABLE_ when warning for undefined symbols (5.12; in later 5.10.y)",
    ),
    Behaviour(
        "arm64_single_ftrace_plt",
        (6, 2),
        "arm64",
        "NR_FTRACE_PLTS is 1: .text.ftrace_trampoline holds one PLT entry, to ftrace_caller (before: two, "
        "ftrace_caller and ftrace_regs_caller)",
        "arm64: ftrace: move from REGS to ARGS (6.2)",
    ),
    Behaviour(
        "arm64_module_plts_always",
        (6, 5),
        "arm64",
        "module PLTs always exist and module_frob_arch_sections partitions and counts branch PLTs whatever "
        "CONFIG_RANDOMIZE_BASE says (before: only with CONFIG_ARM64_MODULE_PLTS, and branches only with "
        "CONFIG_RANDOMIZE_BASE)",
        "arm64: module: mandate MODULE_PLTS; arm64: module: rework module VA range selection (6.5)",
    ),
    Behaviour(
        "arm64_livepatch",
        (6, 17),
        "arm64",
        "arm64 selects HAVE_LIVEPATCH (before: a livepatch module is refused, 'module is marked as livepatch "
        "module, but livepatch support is disabled')",
        "arm64: Implement HAVE_LIVEPATCH (6.17)",
    ),
    Behaviour(
        "arm64_late_text_poke",
        (6, 17),
        "arm64",
        "apply_relocate_add writes through aarch64_insn_copy once the module is formed (WRITE_PLACE), so late "
        "livepatch relocations reach read-only text; PLT entries and veneers stay plain stores",
        "arm64/module: Use text-poke API for late relocations. (6.17)",
    ),
    Behaviour(
        "arm64_init_ftrace_trampoline",
        (6, 17),
        "arm64",
        "module_frob_arch_sections sizes .init.text.ftrace_trampoline and module_finalize requires and fills it "
        "(an ftrace PLT in init text); present in the 6.17-rc3 tree, absent in 6.6 (first release believed 6.17)",
        "arm64: ftrace: fix unreachable PLT for ftrace_caller in init_module (2025)",
    ),
    Behaviour(
        "s390_kernel_write",
        (5, 8),
        "s390x",
        "relocation writes after MODULE_STATE_UNFORMED (late livepatch relocations, GOT slots, PLT entries) go "
        "through s390_kernel_write (before: livepatch made the module writable with module_disable_ro)",
        "s390/module: Use s390_kernel_write() for late relocations (5.8)",
    ),
    Behaviour(
        "ppc64_strict_module_rwx",
        (5, 14),
        "ppc64le",
        "Book3S-64 selects ARCH_HAS_STRICT_MODULE_RWX: module text becomes read-only and the legacy layout "
        "page-aligns its rows (before: packed rows, writable text)",
        "powerpc: Set ARCH_HAS_STRICT_MODULE_RWX (5.14)",
    ),
    Behaviour(
        "ppc64_patch_instruction",
        (5, 16),
        "ppc64le",
        "stubs, REL24 fields and the r2 restore are written with patch_instruction (so late livepatch "
        "writes reach read-only text); in stable 5.15.y too",
        "powerpc/module_64: Fix livepatching for RO modules (5.16)",
    ),
    Behaviour(
        "strict_align_config",
        (5, 19),
        "core",
        "the legacy layout page-aligns its rows when CONFIG_STRICT_MODULE_RWX is set (strict_align); before, "
        "when the arch has CONFIG_ARCH_HAS_STRICT_MODULE_RWX (debug_align)",
        "module: Rework layout alignment to avoid BUG_ON()s; Rename debug_align() as strict_align() "
        "(modules pull for 5.19, with the kernel/module/ split; the audit had 6.0)",
    ),
    Behaviour(
        "ksym_name_len_512",
        (6, 1),
        "core",
        "KSYM_NAME_LEN is 512: .klp.sym names are parsed with %55[^.].%511[^,] (before: %127[^,])",
        "kallsyms: increase maximum kernel symbol length to 512 (6.1)",
    ),
    Behaviour(
        "x86_write_relocate_add",
        (6, 3),
        "x86_64",
        "x86 checks the 32/32S range before writing and reports 'Invalid relocation target' (before: writes the "
        "truncated value, then reports; 'Skipping invalid relocation target'); clear_relocate_add zeroes a "
        "livepatch object's relocations when it unloads",
        "livepatch,x86: Clear relocation targets on a module removal (6.3)",
    ),
    Behaviour(
        "ppc64_restore_r2_accepts_ld",
        (6, 3),
        "ppc64le",
        "restore_r2 accepts an existing 'ld r2,24(r1)' after a call (re-applied livepatch relocations); "
        "before, anything but a nop is 'Expected nop after call'",
        'powerpc/module_64: Fix "expected nop" error on module re-patching (6.3)',
    ),
    Behaviour(
        "module_memory",
        (6, 4),
        "core",
        "one allocation per memory type (struct module_memory: MOD_TEXT, MOD_DATA, ...); before, one core and "
        "one init allocation (core_layout/init_layout)",
        "module: replace module_layout with module_memory (6.4)",
    ),
    Behaviour(
        "s390_gotent_got_offset",
        (6, 5),
        "s390x",
        "R_390_GOTENT/GOTPLTENT = GOT + G + A - P (before: text base + G + A - P, arch.got_offset missing; the "
        "same bytes whenever the GOT starts at offset 0 of the text, as module_frob_arch_sections places it)",
        "s390/module: fix rela calculation for R_390_GOTENT (11458e2b3ffa, 6.5)",
    ),
    Behaviour(
        "ppc64_ool_ftrace_stubs",
        (6, 13),
        "ppc64le",
        "with CONFIG_PPC_FTRACE_OUT_OF_LINE (a compiler with working patchable-function-entry) .stubs also "
        "holds the out-of-line ftrace stubs of __patchable_function_entries, reserved after the load-time stubs",
        "powerpc64/ftrace: Move ftrace sequence out of line (6.13)",
    ),
    Behaviour(
        "codetag_separate",
        (6, 13),
        "core",
        "with CONFIG_MEM_ALLOC_PROFILING the .codetag.alloc_tags section is loaded into a separate "
        "alloc-tag area, not laid out in module memory (later MOD_DATA offsets move)",
        "alloc_tag: load module tags into separate contiguous memory (6.13)",
    ),
    Behaviour(
        "x86_clang_stack_cookie_gotpcrel",
        (6, 15),
        "x86_64",
        "with CONFIG_STACKPROTECTOR and clang < 17 (CONFIG_CLANG_VERSION < 170000) R_X86_64_REX_GOTPCRELX "
        "against __stack_chk_guard is accepted as a PC32 to a static pointer; anything else is "
        "'Unsupported GOTPCREL relocation' (a later kbuild series reverts it; still present in 7.1.5)",
        "x86/module: Deal with GOT based stack cookie load on Clang < 17 (tip, Feb 2025)",
    ),
    Behaviour(
        "extended_modversions",
        (6, 14),
        "core",
        "check_version reads __version_ext_crcs/__version_ext_names (any symbol name length) instead of "
        "__versions when a module has them (CONFIG_EXTENDED_MODVERSIONS)",
        "modules: Support extended MODVERSIONS info (kbuild pull for 6.14)",
    ),
    Behaviour(
        "relocates_percpu",
        (6, 16),
        "core",
        "apply_relocations also relocates the .data..percpu section (before: skipped, its SHF_ALLOC was "
        "cleared); the fix carries a Fixes: tag and may be in stable trees",
        "module: Make sure relocations are applied to the per-CPU section (modules-6.16-rc6 fixes)",
    ),
    Behaviour(
        "static_call_sites_ro_after_init",
        (6, 16),
        "core",
        "module_mark_ro_after_init also marks .static_call_sites (with CONFIG_HAVE_STATIC_CALL_INLINE), so it "
        "is laid out in MOD_RO_AFTER_INIT instead of MOD_DATA",
        "module: Make .static_call_sites read-only after init (modules-6.16)",
    ),
    Behaviour(
        "ppc64_stub_count",
        (6, 17),
        "ppc64le",
        ".stubs has no terminating spare slot and stub_for_addr allocates at me->arch.stub_count "
        "(before: one extra slot, and the first slot whose funcdata is zero)",
        "powerpc64/modules: fix ool-ftrace-stub vs. livepatch relocation corruption (6.17)",
    ),
    Behaviour(
        "invalid_shndx_refused",
        (7, 0),
        "core",
        "simplify_symbols refuses a symbol whose section index is past the section headers (and not UNDEF, "
        "ABS, COMMON or LIVEPATCH): '%s: Symbol %s has an invalid section index %u (max %u)'; before, the "
        "kernel read past its section header table (absent in 6.19, present in 7.1.5; in stable trees too)",
        "module: Fix kernel panic when a symbol st_shndx is out of bounds (posted Dec 2025)",
    ),
    Behaviour(
        "reloc_messages_sec_idx",
        (6, 19),
        "core",
        "relocation error messages name the relocation section and entry index (x86: 'sec %u, idx %u', "
        "unhashed loc; livepatch: 'at rela sec %u idx %d')",
        "x86/module, livepatch: print section and index in relocation errors (6.19)",
    ),
]

#: behaviour name -> :class:`Behaviour`
BEHAVIOURS: dict[str, Behaviour] = {b.name: b for b in _TABLE}


def since(name: str) -> tuple[int, int]:
    """The first release with behaviour ``name`` (KeyError for an unknown name)."""
    return BEHAVIOURS[name].since


def render_markdown() -> str:
    """``docs/versions.md``: the table, for users."""
    lines = [
        "# Kernel versions: which behaviour starts where",
        "",
        "<!-- Generated from klpcore/versions.py by `python -m klpcore.versions > docs/versions.md`;",
        "     tests/core/test_versions.py fails when this file and the table differ. -->",
        "",
        "klpcore applies a module with the rules of one kernel release (`--kernel X.Y`). Without",
        "`--kernel` it uses the release in the module's own `vermagic` (`6.1.0-50-amd64` -> 6.1), and the",
        f"newest checked release ({NEWEST[0]}.{NEWEST[1]}) when the module has none. Every report says which",
        "release's rules it used. `-O NAME=true|false` overrides one behaviour for a run (e.g. a distribution",
        "kernel with a backport).",
        "",
        "| behaviour | since | arch | what changes | kernel change |",
        "|---|---|---|---|---|",
    ]
    for b in sorted(_TABLE, key=lambda b: (b.since, b.name)):
        desc, src = (t.replace("|", "\\|") for t in (b.description, b.source))
        lines.append(f"| `{b.name}` | {b.label} | {b.arch} | {desc} | {src} |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    sys.stdout.write(render_markdown())
