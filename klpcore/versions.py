"""Which behaviour starts in which kernel release: the one table.

Every version-dependent decision in klpcore and its plugins asks
:meth:`klpcore.kernel.KernelTarget.has` about a :class:`Behaviour`; nothing
else compares version numbers.  The core's behaviours are :data:`BEHAVIOURS`
(asked by name); an architecture's are rows of its plugin (asked with the
row itself, e.g. ``kernel.has(TEXT_POKE)``), which the plugin lists with the
hook ``klp_arch_behaviours``.  ``docs/versions.md`` is generated from the
union (``python -m klpcore.versions > docs/versions.md``, with every plugin
installed) and tests check that it is up to date; ``tests/core/test_versions.py``
tests each core boundary on both sides, each plugin's tests its own.

A behaviour's ``since`` is the first mainline release that has it (the
merge window it was pulled in).  Stable trees may carry backports; the entry
says so where known, and ``-O <name>=true|false`` overrides any behaviour for
one run.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pluggy

    from .kernel import KernelTarget


@dataclass(frozen=True)
class Behaviour:
    """One kernel behaviour that begins in a given release."""

    name: str
    since: tuple[int, int]
    arch: str  # "core", or the architecture (plugin) whose row it is
    description: str
    #: where in the kernel it changed (commit subject or file), for reviewers
    source: str
    #: stable releases of older lines that carry a backport: (major, minor, stable number),
    #: e.g. (6, 12, 46): 6.12.y from 6.12.46 on
    stable: tuple[tuple[int, int, int], ...] = ()

    @property
    def label(self) -> str:
        return ", ".join([f"{self.since[0]}.{self.since[1]}", *(f"{a}.{b}.{c}" for a, b, c in self.stable)])

    def present_in(self, kernel: KernelTarget) -> bool:
        """Does ``kernel``'s release have this behaviour (``-O`` overrides aside)?

        From the mainline release :attr:`since`, and in an older line from the
        stable release :attr:`stable` names, when the kernel's stable number is
        known (its vermagic or ``--kernel`` says 6.12.117; Debian's ABI names
        such as 6.1.0-50 hide it)."""
        if kernel.version >= self.since:
            return True
        return any(
            kernel.version == (major, minor) and kernel.stable is not None and kernel.stable >= n
            for major, minor, n in self.stable
        )

    def sides(self) -> list[tuple[KernelTarget, KernelTarget]]:
        """Kernels on both sides of each start of this behaviour: (without, with).
        The boundary tests observe the behaviour on both kernels of each pair."""
        from .kernel import KernelTarget

        major, minor = self.since
        before = (major, minor - 1) if minor else (major - 1, 19)
        pairs = [(KernelTarget(before), KernelTarget(self.since))]
        for major, minor, n in self.stable:
            pairs.append((KernelTarget((major, minor), stable=n - 1), KernelTarget((major, minor), stable=n)))
        return pairs


#: The newest release whose module loader and livepatch code were checked
#: against klpcore (the default target when a module carries no usable
#: ``vermagic``).  7.1 (7.1.5) differs from 6.19 in these files only by
#: ``invalid_shndx_refused``; 7.2 (Debian's 7.2.13) was checked against the
#: real kernel: booted under qemu on x86_64, arm64, ppc64le and s390x, its
#: loader's bytes and section addresses for Debian's own modules are
#: klpcore's (tests/kernel_oracle, every boundary it crosses from 6.1 there
#: with a recorded kernel on each side where one can show it).  Later releases
#: get 7.2's rules (reports say so).
NEWEST: tuple[int, int] = (7, 2)
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
        "ignore_undef_symbol",
        (5, 12),
        "core",
        "an undefined _GLOBAL_OFFSET_TABLE_ is ignored on x86 (ignore_undef_symbol); before, it is 'Unknown symbol'",
        "module: Ignore _GLOBAL_OFFSET_TABLE_ when warning for undefined symbols (5.12; in later 5.10.y)",
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
        "module_memory",
        (6, 4),
        "core",
        "one allocation per memory type (struct module_memory: MOD_TEXT, MOD_DATA, ...); before, one core and "
        "one init allocation (core_layout/init_layout)",
        "module: replace module_layout with module_memory (6.4)",
    ),
    Behaviour(
        "this_module_size",
        (6, 4),
        "core",
        "elf_validity_check refuses a module whose .gnu.linkonce.this_module size is not the kernel's "
        "sizeof(struct module) (-ENOEXEC, 'module %s: .gnu.linkonce.this_module section size must match the "
        "kernel's built struct module size at run time'), before modversions and vermagic; before, a "
        "module built for another struct module was checked by its CRCs and vermagic only",
        "module: add sanity check for ELF module section (modules pull for 6.4; since 6.13 in "
        "elf_validity_cache_index_mod)",
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
        "extended_modversions",
        (6, 14),
        "core",
        "check_version reads __version_ext_crcs/__version_ext_names (any symbol name length) instead of "
        "__versions when a module has them (CONFIG_EXTENDED_MODVERSIONS)",
        "modules: Support extended MODVERSIONS info (kbuild pull for 6.14)",
    ),
    Behaviour(
        "module_namespaces",
        (6, 16),
        "core",
        "an export in a 'module:PATTERN[,PATTERN...]' namespace (EXPORT_SYMBOL_GPL_FOR_MODULES; "
        "EXPORT_SYMBOL_FOR_MODULES from 6.17) is usable without MODULE_IMPORT_NS by the modules whose name "
        "matches a pattern ('-' = '_', trailing '*'), in-tree or not; before, such a namespace is an "
        "ordinary one ('module uses symbol ... from namespace module:..., but does not import it.')",
        "module: Add module specific symbol namespace support (kbuild pull for 6.16)",
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

#: behaviour name -> :class:`Behaviour`: the core's (no architecture's)
BEHAVIOURS: dict[str, Behaviour] = {b.name: b for b in _TABLE}


def since(name: str) -> tuple[int, int]:
    """The first release with behaviour ``name`` (KeyError for an unknown name)."""
    return BEHAVIOURS[name].since


def all_behaviours(pm: pluggy.PluginManager | None = None) -> dict[str, Behaviour]:
    """The core's behaviours and those of every plugin of ``pm`` (default: the
    installed plugins), by name.  Raises ValueError when two rows share a name."""
    if pm is None:
        from .plugins import get_plugin_manager

        pm = get_plugin_manager()
    out = dict(BEHAVIOURS)
    for rows in pm.hook.klp_arch_behaviours():
        for b in rows or ():
            other = out.setdefault(b.name, b)
            if other is not b:
                raise ValueError(f"behaviour {b.name!r} is declared twice ({other.arch} and {b.arch})")
    return out


def render_row(b: Behaviour) -> str:
    """One behaviour as a line of the table in ``docs/versions.md``."""
    desc, src = (t.replace("|", "\\|") for t in (b.description, b.source))
    return f"| `{b.name}` | {b.label} | {b.arch} | {desc} | {src} |"


def render_markdown(behaviours: Iterable[Behaviour] | None = None) -> str:
    """``docs/versions.md``: the table of ``behaviours`` (default: the core's
    and the installed plugins'), for users."""
    rows = list(all_behaviours().values() if behaviours is None else behaviours)
    lines = [
        "# Kernel versions: which behaviour starts where",
        "",
        "<!-- Generated from klpcore/versions.py by `python -m klpcore.versions > docs/versions.md`;",
        "     tests/core/test_versions.py fails when this file and the table differ. -->",
        "",
        "klpcore applies a module with the rules of one kernel release (`--kernel X.Y` or `X.Y.Z`). Without",
        "`--kernel` it uses the release in the module's own `vermagic` (`6.1.0-50-<flavour>` -> 6.1,",
        "`6.12.117+deb13-<flavour>` -> 6.12.117), and the",
        f"newest checked release ({NEWEST[0]}.{NEWEST[1]}) when the module has none. Every report says which",
        "release's rules it used. A behaviour starts at a mainline release and, where a stable line carries a",
        "backport, at a stable release of that line too (`6.17, 6.12.46`: 6.17 and later, and 6.12.y from",
        "6.12.46); Debian's ABI names (`6.1.0-50`) hide the stable number, so only the mainline start applies",
        "to them. `-O NAME=true|false` overrides one behaviour for a run (e.g. a distribution",
        "kernel with a backport).",
        "",
        "| behaviour | since | arch | what changes | kernel change |",
        "|---|---|---|---|---|",
    ]
    lines += [render_row(b) for b in sorted(rows, key=lambda b: (b.since, b.name))]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    sys.stdout.write(render_markdown())
