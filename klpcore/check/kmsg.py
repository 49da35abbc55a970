"""The kernel's messages for each load step, keyed by the kernel version that prints them.

Each key maps to rows ``(since, template)``; :func:`kmsg` picks the newest row
whose ``since`` is not after the target version.  Templates use ``str.format``
fields.  Sources: ``kernel/module/main.c``, ``kernel/module/version.c``,
``kernel/livepatch/core.c`` and ``kernel/livepatch/patch.c`` of Linux 6.1.20
and 6.19.0 (identical wording unless a second row says otherwise).
"""

from __future__ import annotations

from collections.abc import Sequence

Version = tuple[int, int]

#: key -> rows of (first version with this wording, template)
MESSAGES: dict[str, Sequence[tuple[Version, str]]] = {
    # elf_validity_check / elf_validity_cache_copy
    "elf_len": [((0, 0), "Invalid ELF header len {len}")],
    "elf_magic": [((0, 0), "Invalid ELF header magic: != \\x7fELF")],
    "elf_type": [((0, 0), "Invalid ELF header type: {etype} != 1")],
    "elf_arch": [((0, 0), "Invalid architecture in ELF header: {machine}")],
    # setup_load_info
    "no_symbols": [((0, 0), "{name}: module has no symbols (stripped?)")],
    # setup_load_info; from 6.4 elf_validity_check (same series as this_module_size below), from 6.13
    # elf_validity_cache_index_mod ("module: Factor out elf_validity_cache_index_mod", posted Sep 2024 after
    # the 6.12 merge window: 6.13 UNCONFIRMED); {name} is the
    # .modinfo name or "(missing .modinfo section or name field)"
    "no_module": [
        ((0, 0), "{name}: No module found in object"),
        ((6, 4), "module {name}: Only one .gnu.linkonce.this_module section must exist."),
        ((6, 13), "module {name}: Exactly one .gnu.linkonce.this_module section must exist."),
    ],
    # elf_validity_check (6.4: "module: add sanity check for ELF module section" with the name prefix
    # of "module: move more elf validity checks to elf_validity_check()", one series);
    # elf_validity_cache_index_mod later, same wording (recorded: Debian 6.12.117, 7.2.13)
    "this_module_size": [
        (
            (6, 4),
            "module {name}: .gnu.linkonce.this_module section size must match the kernel's built struct module "
            "size at run time",
        )
    ],
    # check_version / try_to_force_load
    "disagrees": [((0, 0), "{name}: disagrees about version of symbol {sym}")],
    "no_version": [((0, 0), "{name}: no symbol version for {sym}")],
    # extended modversions (__version_ext_crcs/__version_ext_names): "modules: Support extended
    # MODVERSIONS info", kbuild pull for 6.14 (row extended_modversions)
    "no_ext_version": [((6, 14), "{name}: no extended symbol version for {sym}")],
    "force_taint": [((0, 0), "{name}: {reason}: kernel tainted.")],
    # check_modinfo
    "vermagic": [((0, 0), "{name}: version magic '{modmagic}' should be '{vermagic}'")],
    "livepatch_disabled": [((0, 0), "{name}: module is marked as livepatch module, but livepatch support is disabled")],
    "taint_livepatch": [((0, 0), "{name}: tainting kernel with TAINT_LIVEPATCH")],
    "taint_oot": [((0, 0), "{name}: loading out-of-tree module taints kernel.")],
    "taint_license": [((0, 0), "{name}: module license '{license}' taints kernel.")],
    "taint_unsigned": [
        ((0, 0), "{name}: module verification failed: signature and/or required key missing - tainting kernel")
    ],
    # simplify_symbols / resolve_symbol
    "unknown_symbol": [((0, 0), "{name}: Unknown symbol {sym} (err {err})")],
    "namespace": [((0, 0), "{name}: module uses symbol ({sym}) from namespace {ns}, but does not import it.")],
    "common": [((0, 0), "{name}: please compile with -fno-common")],
    # complete_formation / verify_exported_symbols
    "duplicate_export": [((0, 0), "{name}: exports duplicate symbol {sym} (owned by {owner})")],
    # add_taint: the first taint that makes lockdep unreliable (forced load, proprietary license)
    "lockdep_off": [((0, 0), "Disabling lock debugging due to kernel taint")],
    # klp_enable_patch / klp_init_* / klp_patch_func / klp_module_coming: kernel/livepatch/*.c print
    # through pr_fmt "livepatch: "
    "not_livepatch": [((0, 0), "livepatch: module {name} is not marked as a livepatch module")],
    "klp_not_found": [((0, 0), "livepatch: symbol '{sym}' not found in symbol table")],
    "klp_ambiguous": [((0, 0), "livepatch: unresolvable ambiguity for symbol '{sym}' in object '{obj}'")],
    "klp_sympos": [((0, 0), "livepatch: symbol position {pos} for symbol '{sym}' in object '{obj}' not found")],
    "klp_enabling": [((0, 0), "livepatch: enabling patch '{name}'")],
    "klp_start": [((0, 0), "livepatch: '{name}': starting patching transition")],
    "klp_complete": [((0, 0), "livepatch: '{name}': patching complete")],
    "klp_ftrace": [((0, 0), "livepatch: failed to find location for function '{sym}'")],
    "klp_patch_object": [((0, 0), "livepatch: failed to patch object '{obj}'")],
    "klp_enable": [((0, 0), "livepatch: failed to enable patch '{name}'")],
    "klp_unpatched": [((0, 0), "livepatch: '{name}': unpatching complete")],
    "klp_applying": [((0, 0), "livepatch: applying patch '{name}' to loading module '{obj}'")],
    "klp_coming": [((0, 0), "livepatch: failed to initialize patch '{name}' for module '{obj}' ({err})")],
    "klp_apply_failed": [((0, 0), "livepatch: failed to apply patch '{name}' to module '{obj}' ({err})")],
    "klp_refuse_module": [
        ((0, 0), "livepatch: patch '{name}' failed for module '{obj}', refusing to load module '{obj}'")
    ],
}


def kmsg(key: str, version: Version, **fields: object) -> str:
    """The message ``key`` as the kernel of ``version`` prints it."""
    rows = MESSAGES[key]
    chosen = rows[0][1]
    for since, template in rows:
        if version >= since:
            chosen = template
    return chosen.format(**fields)


#: pr_fmt of kernel/livepatch/*.c
KLP_PREFIX = "livepatch: "


def klp_line(text: str | None) -> str | None:
    """A livepatch-core message as the kernel prints it (the core's diagnostics omit the prefix)."""
    if text is None or text.startswith(KLP_PREFIX):
        return text
    return KLP_PREFIX + text
