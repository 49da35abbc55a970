"""Hook specifications for architecture plugins.

An architecture plugin is a module (or object) registered in the entry-point
group ``klpcore.arch``; its functions are marked with :data:`hookimpl`.
The core calls the hooks below; it never imports a plugin by name.

Adding an architecture, step by step
====================================

1. Create a distribution ``plugins/<arch>/`` with a ``pyproject.toml`` that
   declares ``[project.entry-points."klpcore.arch"] <arch> = "<package>"``.
2. Implement :func:`klp_arch_identify` (claim modules by ``e_machine``,
   class and byte order; the :class:`~klpcore.arch.ArchSpec` must give the
   module area, ``default_base`` and ``module_area_size``, and the per-CPU
   base, ``percpu_base``: the core assumes no architecture's values) and
   :func:`klp_arch_reloc_types` (the kernel's ``apply_relocate_add`` as a
   table of :class:`~klpcore.arch.RelocType`).  With only these two, every
   type that is plain arithmetic works.  Whatever else only your
   architecture does is an ``ArchSpec`` field (``ignored_undefined``,
   ``stub_sections``, ``pointer_type``, ``config_symbol``) or a hook below,
   never a test in the core: ``tests/core/test_core_names_no_arch.py`` fails
   on an architecture's name or machine number in ``klpcore/``.
3. If the kernel's ``module_frob_arch_sections`` does anything, implement
   :func:`klp_arch_frob_sections` (size stub/PLT/GOT sections, sort
   relocations, adjust alignments, reserve arch memory at the start of a
   memory type with ``module.reserve``).
4. Types that need more than arithmetic get a sequential ``handler`` in
   their :class:`~klpcore.arch.RelocType`; keep per-module state in
   ``ctx.state`` (see :class:`~klpcore.engine.SectionContext`).  For speed,
   ``split`` sends only the entries that need it to the handler, and
   ``batch`` handles them all in one call with arrays (test that it writes
   what the handler writes, as ``tests/ppc64le`` does).
5. Implement :func:`klp_arch_write_method` if the kernel writes late
   (livepatch) relocations through a text-poking primitive, and
   :func:`klp_arch_clear_section` if the kernel has ``clear_relocate_add``.
6. Whatever changes with the kernel release is a row of the plugin's version
   table (:class:`~klpcore.versions.Behaviour`, asked with ``kernel.has(row)``),
   returned by :func:`klp_arch_behaviours`; never a version comparison.
7. Ship a test per type that compares bytes with an independent oracle, and
   one per version-table row on both sides of its start;
   ``docs/plugin-guide.md`` shows how.

Hooks that concern one architecture are only called on the plugin that
identified the module (plus non-architecture plugins such as an embedder's
tracing plugin), so an implementation need not check which arch it is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from .arch import ArchSpec, RelocType
    from .check.executors import Executor
    from .convert.rules import ConvertRules
    from .engine import ApplyContext, SectionContext
    from .kernel import KernelTarget
    from .kimage.rules import ImageRules
    from .loader import Example, LoadingModule
    from .memory import ModuleImage, Region
    from .testing.kernel_oracle import OracleRules
    from .versions import Behaviour

PROJECT = "klpcore"
hookspec = pluggy.HookspecMarker(PROJECT)
#: Marker for hook implementations in plugins: ``@hookimpl def klp_arch_identify(...)``.
hookimpl = pluggy.HookimplMarker(PROJECT)


# --------------------------------------------------------------------------
# Identification and description
# --------------------------------------------------------------------------
@hookspec(firstresult=True)
def klp_arch_identify(machine: int, elfclass: int, byteorder: str, e_flags: int) -> ArchSpec | None:  # type: ignore[empty-body]
    """Claim a module by its ELF identification.

    :param machine: ``e_machine`` of the module.
    :param elfclass: ``EI_CLASS`` (2 for ELFCLASS64).
    :param byteorder: ``"little"`` or ``"big"`` (``EI_DATA``).
    :param e_flags: ``e_flags`` (e.g. the ppc64 ELF ABI version).
    :return: an :class:`~klpcore.arch.ArchSpec` describing the architecture,
        or ``None`` when the module is not for this plugin.  A plugin that
        recognises the machine but refuses the module (for example a wrong
        ABI version) raises :class:`~klpcore.errors.ElfFormatError` with the
        kernel's message instead.

    Stops at the first non-None result.  Called on every plugin.
    """


@hookspec(firstresult=True)
def klp_arch_module_base(  # type: ignore[empty-body]
    arch: ArchSpec, kernel: KernelTarget, symbol: Callable[[str], int | None]
) -> int | None:
    """Where the target kernel puts its first module, from its own symbols (``klpcore check`` with a
    target whose System.map or kallsyms is known; without KASLR).

    :param arch: the spec returned by :func:`klp_arch_identify` (answer only for your own).
    :param kernel: the target kernel (its version selects the rule).
    :param symbol: the address of a vmlinux symbol of the target (``"_end"``, ``"_etext"``), or None.
    :return: the module area's first address, or None for ``arch.default_base``.

    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def klp_arch_percpu_base(  # type: ignore[empty-body]
    arch: ArchSpec, kernel: KernelTarget, symbol: Callable[[str], int | None]
) -> int | None:
    """Where the target kernel puts a module's per-CPU section, from its own symbols (``klpcore
    check``): the reserved chunk follows the static per-CPU data (``__per_cpu_end``) on architectures
    whose per-CPU addresses are real addresses.

    :param arch: the spec returned by :func:`klp_arch_identify` (answer only for your own).
    :param kernel: the target kernel.
    :param symbol: the address of a vmlinux symbol of the target (``"__per_cpu_end"``), or None.
    :return: the per-CPU section's address, or None for ``arch.percpu_base``.

    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def klp_arch_reloc_types(arch: ArchSpec, kernel: KernelTarget) -> Sequence[RelocType] | None:  # type: ignore[empty-body]
    """Describe every relocation type the kernel's ``apply_relocate_add`` handles.

    :param arch: the spec returned by :func:`klp_arch_identify`.
    :param kernel: the target kernel (version and options); the table may
        depend on it.
    :return: the types, each with number, name, width, formula, range check
        and encoder (or a sequential handler).  A type absent from the table
        is reported as unsupported, with ``arch.unknown_type_error``.

    Stops at the first non-None result.
    """


@hookspec
def klp_arch_behaviours() -> Sequence[Behaviour] | None:  # type: ignore[empty-body]
    """The architecture's rows of the version table: each behaviour of its
    kernel code that begins in a given release.

    :return: :class:`~klpcore.versions.Behaviour` rows (``arch`` set to the
        architecture's name; names unique among all plugins and the core's,
        conventionally prefixed with the arch), or ``None``.  The plugin asks
        ``kernel.has(row)`` with the row object; ``-O <name>=true|false``
        overrides a row for one run; ``docs/versions.md`` lists these rows
        with the core's (:func:`klpcore.versions.all_behaviours`).  Test each
        row on both kernels of each pair of ``row.sides()``.

    Called on every plugin; results are collected.
    """


@hookspec
def klp_arch_examples() -> Sequence[Example] | None:  # type: ignore[empty-body]
    """Example modules shipped with the plugin, for ``klpcore apply --example``.

    :return: :class:`~klpcore.loader.Example` records (module path, symbol
        files, base address), or ``None``.

    Called on every plugin; results are collected.
    """


@hookspec(firstresult=True)
def klp_arch_convert_rules(arch: ArchSpec, kernel: KernelTarget) -> ConvertRules | None:  # type: ignore[empty-body]
    """The architecture's rules for ``klpcore convert`` (turning references to
    unexported symbols into livepatch relocations).

    :param arch: the spec returned by :func:`klp_arch_identify` (its type table
        is filled).
    :param kernel: the target kernel (late-write hazards depend on its version).
    :return: a :class:`~klpcore.convert.rules.ConvertRules`: symbols whose
        references always stay ordinary (ppc64 ``.TOC.``, s390 expoline
        thunks), relocation types that must stay ordinary (ppc64 ``REL16_HA``),
        the late-applied relocations the kernel cannot write for that version
        (named by their :mod:`klpcore.versions` row) and whether the kernel takes
        ``R_*_NONE`` (type 0) for the original relocation.  None: the core's
        default (nothing kept, no hazards, type 0 when the type table has it).

    Stops at the first non-None result.
    """


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------
@hookspec(firstresult=True)
def klp_arch_page_size(kernel: KernelTarget) -> int | None:  # type: ignore[empty-body]
    """The target kernel's ``PAGE_SIZE``, which the module layout aligns to.

    :param kernel: the target kernel; ``kernel.config`` is its parsed
        ``.config`` (:class:`~klpcore.config.KernelConfig`) when the user gave
        ``--config``, else None.
    :return: the page size in bytes, read from ``kernel.config`` (e.g.
        ``CONFIG_PPC_64K_PAGES``, ``CONFIG_ARM64_16K_PAGES``) or, without a
        config, the architecture's common distribution setting; None to defer.
        When no plugin answers the core uses 4096.

    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def klp_arch_config_default(name: str, kernel: KernelTarget) -> str | None:  # type: ignore[empty-body]
    """The value a kernel ``.config`` option has in the architecture's common
    distribution configuration, used when the user gave no ``--config``
    (or the config lacks the option).

    :param name: the option without the ``CONFIG_`` prefix, e.g.
        ``"STRICT_MODULE_RWX"``, ``"ARCH_HAS_STRICT_MODULE_RWX"``,
        ``"HAVE_STATIC_CALL_INLINE"``, ``"LIVEPATCH"``.
    :param kernel: the target kernel (the default may depend on its version,
        e.g. ppc64 selects ``ARCH_HAS_STRICT_MODULE_RWX`` only from 5.14).
    :return: ``"y"``, ``"m"``, ``"n"`` or the value text; None when the
        plugin has no opinion (the core then uses its own default, see
        :data:`klpcore.kernel.CORE_CONFIG_DEFAULTS`).

    Stops at the first non-None result.
    """


@hookspec
def klp_arch_frob_sections(module: LoadingModule, kernel: KernelTarget) -> None:
    """Arch section setup before layout: the kernel's ``module_frob_arch_sections``.

    :param module: the module being loaded; ``module.sections`` may be
        changed (sizes, types, alignment), relocation arrays from
        ``module.elf.relas(i)`` may be reordered in place, and
        ``module.arch_state`` may be filled.  Memory the arch needs outside
        any section (s390's module GOT and PLT) is reserved with
        ``module.reserve(memtype, name, size, align)``: it takes the start of
        that memory type, before layout places sections there, as the kernel's
        hook grows a memory type's size before ``layout_sections`` runs.  After
        layout its address is ``module.layout.reserved[name].address``;
        relocation code writes there through ``ctx.write_uint``, and the
        output ELF of ``klpcore apply`` shows it as a section called ``name``.
    :param kernel: the target kernel.

    Raise :class:`~klpcore.errors.ElfFormatError` with the kernel's message
    when the kernel would refuse the module here.
    """


@hookspec
def klp_arch_is_init_section(name: str, kernel: KernelTarget) -> bool | None:
    """Override ``module_init_layout_section``: is section ``name`` init memory?

    :param name: the section name.
    :param kernel: the target kernel.
    :return: True/False, or None to keep the default (``.init*``).
    """


@hookspec(firstresult=True)
def klp_arch_apply_section(ctx: SectionContext) -> bool | None:
    """Apply one relocation section: the kernel's ``apply_relocate_add``.

    :param ctx: the section, its entries as arrays, resolved symbol values
        and staged memory to write to.
    :return: True when handled.  The core's generic engine (registered as the
        last implementation) applies the arch's type table; override only when
        a whole section needs different treatment.

    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def klp_arch_clear_section(ctx: SectionContext) -> bool | None:
    """Undo one livepatch relocation section when its target module unloads:
    the kernel's ``clear_relocate_add`` (x86 only since Linux 6.3; on other
    architectures the kernel's weak default does nothing).

    :param ctx: the livepatch section being cleared, its entries and the
        symbol values it was applied with; stage writes through ``ctx``.
    :return: True when handled (the core's default does nothing and returns True).

    Stops at the first non-None result.
    """


@hookspec
def klp_arch_finalize(ctx: ApplyContext) -> None:
    """After the load-time relocations: the kernel's ``module_finalize``
    (e.g. ftrace stubs, PLT thunks).

    :param ctx: the load phase; writes staged through it are committed with
        the load's relocations (all or nothing).
    """


# --------------------------------------------------------------------------
# Memory protection
# --------------------------------------------------------------------------
@hookspec(firstresult=True)
def klp_arch_write_method(
    image: ModuleImage, region: Region, address: int, size: int, kernel: KernelTarget, hint: str | None
) -> str | None:  # type: ignore[empty-body]
    """Decide how a write reaches module memory in the module's current state.

    Asked once per memory region and hint for each batch of writes a phase
    commits (the address and size are those of the first such write).

    :param image: the module image (``image.state`` is the module state).
    :param region: the region written to, with its current permissions.
    :param address: first byte written.
    :param size: number of bytes.
    :param kernel: the target kernel (e.g. ``text_poke`` exists since 5.8).
    :param hint: the primitive the code that staged this write says the
        kernel uses for it (``ctx.write_uint(..., hint="patch_instruction")``),
        or None for a plain store.
    :return: the name of the kernel primitive that performs the write
        (``"memcpy"``, ``"text_poke"``, ``"set_memory_rw"``, ...), or None to
        defer to other plugins.  If no plugin answers, writes to writable
        memory are plain stores and writes to read-only memory are errors.

    Stops at the first non-None result; an embedder's plugin registered with
    ``tryfirst=True`` can override the architecture's decision.
    """


# --------------------------------------------------------------------------
# Kernel images as symbol sources
# --------------------------------------------------------------------------
@hookspec
def klp_arch_kernel_image() -> ImageRules | None:  # type: ignore[empty-body]
    """How the architecture ships its kernel image (:mod:`klpcore.kimage`).

    :return: an :class:`~klpcore.kimage.rules.ImageRules`: the image's
        e_machine and byte order, what marks a file as this architecture's
        image (raw, or self-decompressing), an unwrapper for a structured
        container, which values of a raw image can be pointers, and
        ``ftrace_call_adjust``; None when the plugin does not read images.

    Called on every plugin (the image's architecture is not known before);
    results are collected.
    """


# --------------------------------------------------------------------------
# Testing against the real kernel
# --------------------------------------------------------------------------
@hookspec(firstresult=True)
def klp_arch_kernel_oracle() -> OracleRules | None:  # type: ignore[empty-body]
    """The architecture's part of the comparison with bytes a real kernel wrote
    (:mod:`klpcore.testing.kernel_oracle`, ``tests/kernel_oracle``).

    :return: an :class:`~klpcore.testing.kernel_oracle.OracleRules`: each
        relocation type's field width, the ``__ex_table`` entry layout, how
        ftrace rewrites a call site at module load, and the rules for what only
        this architecture rewrites after relocation (each checks that the
        kernel's bytes are the documented ones); None when the plugin has no
        recordings.  Import the rules lazily (inside the hook): they are only
        needed by the comparison.

    Stops at the first non-None result; called only on the plugin that
    identified the module.
    """


# --------------------------------------------------------------------------
# Running many checks (not an architecture hook)
# --------------------------------------------------------------------------
@hookspec(firstresult=True)
def klp_check_executor(name: str, jobs: int | None) -> Executor | None:  # type: ignore[empty-body]
    """Provide the executor that ``klpcore check --executor NAME`` runs pairs on.

    :param name: the ``--executor`` value (``processes``, ``inprocess``,
        ``dask-local``, ``dask://HOST:PORT`` are built in; a plugin may claim
        its own names or URL schemes, e.g. ``ray://...``).
    :param jobs: ``--jobs`` (None: the plugin's own default).
    :return: an object with ``description``, ``run(jobs, targets, options)``
        yielding ``(pair index, PairResult)`` as pairs finish (any order) and
        ``close()`` (see :class:`klpcore.check.executors.Executor`), or None
        when ``name`` is not this plugin's.  Each pair is judged by
        ``klpcore.check.executors.judge_chunk`` (or ``judge`` on a target from
        ``worker_target``), so results equal the one-process run's.

    Stops at the first non-None result; the built-ins answer last.
    """
