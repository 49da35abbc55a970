"""A conformance suite every architecture plugin runs with one line.

What every plugin's tests must show, whatever the architecture:

* the plugin is installed under its entry point and claims its modules;
* every relocation type of its table that writes something has a byte test
  against an independent oracle (GNU ld, recorded kernel bytes, hand-derived
  encodings);
* every type with a range check is tested on both sides of its limits: at
  least one accepted and one refused case;
* a type the kernel does not handle is an error that names the type (and
  quotes the kernel's message), and nothing is written;
* a type the kernel lists only to refuse it (``RelocType.refuses``, e.g.
  s390's ``R_390_COPY``) needs no byte test: the suite loads the fixture with
  that type and asserts the refusal (an error naming the type, with the kernel
  message the type declares, or none);
* every type documents its formula and range, and every hook the plugin
  implements is a declared, documented hook;
* the plugin's rows of the version table (``klp_arch_behaviours``) name its
  architecture and no core behaviour.

:func:`behaviour_tests` adds, for the plugin's version-table rows: every row
starts at the release the tests state, and has a named test that observes it
on both sides of its start.

Usage, in ``tests/<arch>/test_<arch>.py``::

    from klpcore.testing.conformance import conformance_tests

    TestConformance = conformance_tests(
        plugin="arm64",
        module=FIX / "all_types.o",
        symbols=FIX / "kernel.map",
        byte_tested=lambda: {...type names compared with an oracle...},
        range_cases=lambda: [("R_AARCH64_ABS32", "accepted"), ("R_AARCH64_ABS32", "refused"), ...],
        unsupported=[311],
    )

and, in ``tests/<arch>/test_<arch>_versions.py``::

    TestBehaviours = behaviour_tests(
        rows=klpcore_arm64.versions.BEHAVIOURS,
        boundary_tests={"arm64_livepatch": test_livepatch_refused_before_6_17, ...},
        releases={"arm64_livepatch": ((6, 16), (6, 17)), ...},
    )

pytest collects the returned class like any ``Test*`` class in the module.
The arguments that describe the plugin's own fixtures are callables so that
a test module's import stays cheap and a broken manifest fails one test
rather than collection.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from klpcore import constants as C

ACCEPTED = "accepted"
REFUSED = "refused"


def _type_field_offset(byteorder: str) -> int:
    """Offset in an ``Elf64_Rela`` of the 32-bit type part of ``r_info``."""
    return 8 if byteorder == "little" else 12


def with_relocation_type(data: bytes, number: int) -> tuple[bytes, str, int]:
    """A copy of the object ``data`` whose first relocation against an
    allocated section has type ``number``: (bytes, rela section name, index)."""
    from klpcore.elf import ElfModule

    elf = ElfModule(data)
    for s in elf.sections:
        if s.type != C.SHT_RELA or not s.size or s.info >= len(elf.sections):
            continue
        if not elf.sections[s.info].flags & C.SHF_ALLOC or s.flags & C.SHF_RELA_LIVEPATCH:
            continue
        off = s.offset + _type_field_offset(elf.byteorder)
        out = bytearray(data)
        out[off : off + 4] = number.to_bytes(4, elf.byteorder)  # type: ignore[arg-type]
        return bytes(out), s.name, 0
    raise AssertionError("the module has no relocation section against an allocated section")


def _plugin_hooks(module: Any) -> list[tuple[str, Any]]:
    return [
        (name, fn)
        for name, fn in inspect.getmembers(module, inspect.isfunction)
        if name.startswith("klp_") and hasattr(fn, "klpcore_impl")
    ]


def conformance_tests(
    *,
    plugin: str,
    module: Path,
    symbols: Path,
    byte_tested: Callable[[], Iterable[str]],
    range_cases: Callable[[], Iterable[tuple[str, str]]],
    unsupported: Sequence[int],
    base: int | None = None,
    kernel: str | None = None,
    options: dict[str, Any] | None = None,
) -> type:
    """Build the conformance test class for the plugin ``plugin``.

    :param plugin: the entry-point name in ``klpcore.arch``.
    :param module: a relocatable object (fixture) the plugin loads cleanly.
    :param symbols: a symbol file that resolves ``module``'s undefined symbols.
    :param byte_tested: names of the types whose written bytes the plugin's
        tests compare with an independent oracle.
    :param range_cases: ``(type name, "accepted" | "refused")`` for every
        limit case the plugin's tests run.
    :param unsupported: type numbers the kernel does not handle.
    :param base: layout base (default: the plugin's ``default_base``).
    :param kernel: target kernel version (default: newest).
    :param options: ``KernelTarget.options`` for the loads.
    """

    def _setup() -> tuple[Any, Any, Any]:
        from klpcore import KernelTarget, Loader, get_plugin_manager
        from klpcore.plugins import identify

        pm = get_plugin_manager()
        target = KernelTarget.from_string(kernel, options=dict(options or {}))
        loader = Loader(pm, kernel=target)
        from klpcore.elf import ElfModule

        elf = ElfModule.from_file(module)
        hooks = identify(pm, elf.machine, elf.elfclass, elf.byteorder, elf.e_flags, target)
        return loader, hooks.spec, target

    def _table() -> list[Any]:
        _, spec, _ = _setup()
        return list(spec.types.values())

    class Conformance:
        """Conformance of one architecture plugin (klpcore.testing.conformance)."""

        def test_plugin_installed_and_claims_its_module(self) -> None:
            from importlib.metadata import entry_points

            names = {ep.name for ep in entry_points(group="klpcore.arch")}
            assert plugin in names, f"no entry point {plugin!r} in klpcore.arch"
            _, spec, _ = _setup()
            assert spec.name == plugin
            assert spec.types, "the plugin returned no relocation types"

        def test_every_type_has_a_byte_test(self) -> None:
            writing = {t.name for t in _table() if not t.is_noop and not t.refuses}
            missing = writing - set(byte_tested())
            assert not missing, f"types without a byte test against an oracle: {sorted(missing)}"

        def test_every_range_has_both_sides(self) -> None:
            seen: dict[str, set[str]] = {}
            for name, outcome in range_cases():
                assert outcome in (ACCEPTED, REFUSED), outcome
                seen.setdefault(name, set()).add(outcome)
            checked = {t.name for t in _table() if t.check is not None}
            missing = {n: sorted({ACCEPTED, REFUSED} - seen.get(n, set())) for n in checked}
            missing = {n: m for n, m in missing.items() if m}
            assert not missing, f"range limits not tested on both sides: {missing}"

        def test_unsupported_types_are_errors_naming_the_type(self) -> None:
            from klpcore import RelocationError, load_symbols

            loader, spec, _ = _setup()
            assert unsupported, "give at least one type number the kernel does not handle"
            table = {t.number for t in _table()}
            for number in [*unsupported, 0x7FFE]:
                assert number not in table, f"{number} is in the plugin's table"
                data, secname, _ = with_relocation_type(Path(module).read_bytes(), number)
                try:
                    loader.load(data, load_symbols(str(symbols)), base if base is not None else spec.default_base)
                except RelocationError as e:
                    diags = [d for d in e.diagnostics if d.section == secname]
                    assert diags, e.diagnostics
                    name = spec.type_name(number)
                    d = diags[0]
                    assert d.rtype == name and str(number) in d.message and name in d.message, d
                    assert d.kernel_message == spec.unknown_type_error.format(module=d.module, number=number)
                else:
                    raise AssertionError(f"type {number} was accepted")

        def test_refusing_types_are_refused(self) -> None:
            """``RelocType.refuses`` is a claim the suite checks: such a type
            writes nothing, so a type that writes cannot hide behind it."""
            from klpcore import RelocationError, load_symbols

            loader, spec, _ = _setup()
            for t in [t for t in _table() if t.refuses]:
                assert t.handler is not None or t.batch is not None, (
                    f"{t.name}: refuses=True needs the refusing handler"
                )
                data, secname, _ = with_relocation_type(Path(module).read_bytes(), t.number)
                try:
                    loader.load(data, load_symbols(str(symbols)), base if base is not None else spec.default_base)
                except RelocationError as e:
                    diags = [d for d in e.diagnostics if d.section == secname]
                    assert diags, e.diagnostics
                    d = diags[0]
                    assert d.rtype == t.name and t.name in d.message, d
                    if t.kernel_error is None:
                        assert d.kernel_message is None, (
                            f"{t.name}: the kernel prints nothing, got {d.kernel_message!r}"
                        )
                    else:
                        assert d.kernel_message, f"{t.name}: no kernel message"
                else:
                    raise AssertionError(f"{t.name} is marked refuses=True but was accepted")

        def test_types_document_formula_and_range(self) -> None:
            for t in _table():
                doc = t.describe()
                assert t.name and doc["formula"], t.number
                assert doc["range"], f"{t.name}: no range documented"

        def test_behaviours_name_the_arch_and_no_core_behaviour(self) -> None:
            from klpcore.versions import BEHAVIOURS, OLDEST

            loader, spec, _ = _setup()
            pm = loader.pm
            plugin_obj = next(p for p in pm.get_plugins() if pm.get_name(p) == plugin)
            hook = getattr(plugin_obj, "klp_arch_behaviours", None)
            for row in hook() if hook is not None else ():
                assert row.arch == spec.name, f"{row.name}: arch {row.arch!r}, the plugin is {spec.name!r}"
                assert row.name not in BEHAVIOURS, f"{row.name} is a core behaviour"
                assert row.since >= OLDEST and row.description and row.source, row

        def test_hooks_are_declared_and_documented(self) -> None:
            from importlib import import_module
            from importlib.metadata import entry_points

            from klpcore import hookspecs

            (ep,) = [ep for ep in entry_points(group="klpcore.arch") if ep.name == plugin]
            mod = import_module(ep.value)
            assert inspect.getdoc(mod), f"{ep.value} has no module docstring"
            impls = _plugin_hooks(mod)
            assert impls, "the plugin implements no hooks"
            for name, _fn in impls:
                spec_fn = getattr(hookspecs, name, None)
                assert spec_fn is not None and hasattr(spec_fn, "klpcore_spec"), f"{name} is not a declared hook"
                assert len((inspect.getdoc(spec_fn) or "").splitlines()) >= 2, f"hook {name} is undocumented"

    Conformance.__name__ = Conformance.__qualname__ = f"Conformance_{plugin}"
    return Conformance


def behaviour_tests(
    *,
    rows: Sequence[Any],
    boundary_tests: Mapping[str, Callable[..., object]],
    releases: Mapping[str, tuple[tuple[int, int], tuple[int, int]]],
) -> type:
    """Build the test class for a plugin's rows of the version table.

    :param rows: the plugin's :class:`~klpcore.versions.Behaviour` rows (what
        its ``klp_arch_behaviours`` returns).
    :param boundary_tests: row name -> the test function (collected by pytest
        where it is defined) that observes the row's behaviour on both sides
        of its start (``row.sides()``).
    :param releases: row name -> (the last mainline release without it, the
        first with it), stated by the tests from the kernel change the row
        names and not read from the row: each side is asked through
        ``KernelTarget.has``, so a row whose ``since`` drifts fails.
    """

    class Behaviours:
        """A plugin's version-table rows (klpcore.testing.conformance)."""

        def test_each_row_starts_at_the_stated_release(self) -> None:
            from klpcore import KernelTarget

            names = {r.name for r in rows}
            assert set(releases) == names, (
                f"rows without a stated release: {sorted(names - set(releases))}; "
                f"releases of no row: {sorted(set(releases) - names)}"
            )
            for row in rows:
                without, with_ = releases[row.name]
                assert not KernelTarget(without).has(row), f"{row.name} already in {without}"
                assert KernelTarget(with_).has(row), f"{row.name} not yet in {with_}"

        def test_every_row_has_a_boundary_test(self) -> None:
            names = {r.name for r in rows}
            assert rows, "no rows: a plugin without version-dependent behaviour needs no behaviour_tests"
            assert set(boundary_tests) == names, (
                f"rows without a boundary test: {sorted(names - set(boundary_tests))}; "
                f"tests of no row: {sorted(set(boundary_tests) - names)}"
            )
            for name, fn in boundary_tests.items():
                assert callable(fn) and fn.__name__.startswith("test_"), f"{name}: {fn!r} is not a test function"

        def test_every_row_is_answered_on_both_sides(self) -> None:
            from klpcore import KernelTarget

            for row in rows:
                assert row.sides(), row.name
                for without, with_ in row.sides():
                    assert not without.has(row) and with_.has(row), row.name
                    assert KernelTarget(without.version, options={row.name: True}).has(row), row.name

        def test_each_boundary_test_fails_with_its_row_inverted(self) -> None:
            """A boundary test guards its row: with ``KernelTarget.has`` answering the opposite for that row
            (every parameter set of a parametrized test run in turn), it fails."""
            from klpcore import KernelTarget

            real = KernelTarget.has
            passing = []
            for name, fn in boundary_tests.items():

                def inverted(kernel: Any, behaviour: Any, _name: str = name) -> bool:
                    answer = real(kernel, behaviour)
                    return not answer if getattr(behaviour, "name", behaviour) == _name else answer

                KernelTarget.has = inverted  # type: ignore[method-assign,assignment]
                try:
                    if not any(_fails(fn, kw) for kw in _parameter_sets(fn)):
                        passing.append(name)
                finally:
                    KernelTarget.has = real  # type: ignore[method-assign]
            assert not passing, f"boundary tests that pass with their row inverted (they guard nothing): {passing}"

    return Behaviours


def _parameter_sets(fn: Callable[..., object]) -> list[dict[str, Any]]:
    """The keyword sets pytest would call ``fn`` with (its ``parametrize`` marks; none: one empty set)."""
    sets: list[dict[str, Any]] = [{}]
    for mark in getattr(fn, "pytestmark", []):
        if mark.name != "parametrize":
            continue
        names = mark.args[0] if not isinstance(mark.args[0], str) else [n.strip() for n in mark.args[0].split(",")]
        rows = [getattr(v, "values", v) for v in mark.args[1]]
        rows = [r if len(names) > 1 else (r,) for r in rows]
        sets = [{**s, **dict(zip(names, r, strict=True))} for s in sets for r in rows]
    missing = set(inspect.signature(fn).parameters) - set(sets[0])
    assert not missing, f"{fn.__name__} needs fixtures {sorted(missing)}: a boundary test must take only parameters"
    return sets


def _fails(fn: Callable[..., object], kw: dict[str, Any]) -> bool:
    try:
        fn(**kw)
    except Exception:
        return True
    except BaseException as exc:  # pytest.fail / pytest.raises' "DID NOT RAISE" (outcome exceptions)
        if type(exc).__name__ == "Skipped":
            raise
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        return True
    return False
