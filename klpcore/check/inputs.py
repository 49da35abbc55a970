"""The inputs of a check run at scale: module arguments (files, directories,
``@FILE`` lists), targets (``--target`` repeatable, ``@FILE`` lists) and which
pairs apply (each module against the targets of its own architecture).

A list file (``@FILE``) holds one argument per line, as it would be given on
the command line (a module file, a directory, another ``@FILE``; for
``--target``, ``PATH`` or ``PATH:RELEASE``); blank lines and lines starting
with ``#`` are skipped; relative paths are taken from the current directory.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .. import compress
from .. import constants as C
from ..errors import InputError, KlpError
from .executors import PairJob, TargetSpec

#: a module file's name ends with one of these
MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.gz", ".ko.zst")


def read_list(arg: str, option: str, seen: tuple[str, ...] = ()) -> list[str]:
    """The lines of the ``@FILE`` list ``arg``."""
    path = arg[1:]
    if path in seen:
        raise InputError(f"{option} {arg}: includes itself ({' -> '.join([*seen, path])})")
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as fh:
            lines = fh.read().splitlines()
    except OSError as exc:
        raise InputError(f"{option} {arg}: cannot read the list: {exc.strerror or exc}") from None
    return [s.strip() for s in lines if s.strip() and not s.strip().startswith("#")]


def is_module_name(name: str) -> bool:
    return name.endswith(MODULE_SUFFIXES)


def expand_modules(args: Iterable[str], _seen: tuple[str, ...] = ()) -> list[str]:
    """Module files from MODULE arguments: a file as given, a directory's every
    ``.ko*`` below it (in path order), an ``@FILE`` list's lines (a file given twice is judged twice)."""
    out: list[str] = []
    for a in args:
        if a.startswith("@") and not os.path.exists(a):
            out.extend(expand_modules(read_list(a, "MODULE", _seen), (*_seen, a[1:])))
        elif os.path.isdir(a):
            found: list[str] = []
            for d, dirs, files in os.walk(a):
                dirs.sort()
                found.extend(os.path.join(d, f) for f in sorted(files) if is_module_name(f))
            if not found:
                raise InputError(f"{a}: a directory without module files ({', '.join(MODULE_SUFFIXES)})")
            out.extend(found)
        elif os.path.isfile(a):
            from .command import module_head_check

            module_head_check(a)  # a text file or a .deb given as MODULE: bad input
            out.append(a)
        else:
            raise InputError(f"{a}: no such module file or directory")
    return out


def expand_targets(specs: Iterable[str], distribution: str | None, _seen: tuple[str, ...] = ()) -> list[TargetSpec]:
    """``--target`` values (``PATH``, ``PATH:RELEASE``, ``ROOT1,ROOT2[:RELEASE]``, ``@FILE``) as specs, in order."""
    from .command import parse_target_spec

    out: list[TargetSpec] = []
    for spec in specs:
        if spec.startswith("@") and not os.path.isdir(spec):
            out.extend(expand_targets(read_list(spec, "--target", _seen), distribution, (*_seen, spec[1:])))
            continue
        roots, release = parse_target_spec(spec)
        out.append(TargetSpec(tuple(roots), release, distribution))
    return out


def module_machine(path: str) -> int | None:
    """``e_machine`` of a module file (decompressing only its first bytes); None if it is not ELF."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            fh.seek(0)
            dec = compress._decoder(compress.detect_format(head), fh)
            ident = dec.read(20)
    except (OSError, EOFError, ValueError, KlpError):
        return None
    except Exception:  # corrupt compressed data: the check itself says so
        return None
    if len(ident) < 20 or ident[:4] != C.ELFMAG:
        return None
    return int.from_bytes(ident[18:20], "little" if ident[5] == C.ELFDATA2LSB else "big")


_NAMES: dict[int, str] = {}


def machine_name(machine: int | None) -> str:
    """The name of the installed plugin that claims ``e_machine`` (the core names no architecture),
    else "machine N"."""
    if machine is None:
        return "unknown"
    if not _NAMES:
        from ..plugins import default_plugin_manager, list_arch_plugins

        for info in list_arch_plugins(default_plugin_manager()):
            for spec in info.archs:
                _NAMES.setdefault(spec.machine, spec.name)
    return _NAMES.get(machine, f"machine {machine}")


@dataclass(frozen=True)
class NotApplicable:
    """A pair not judged: the module is of another architecture than the target,
    and the run has targets of the module's own."""

    module: str
    name: str
    target: str
    release: str | None
    module_arch: str
    target_arch: str
    verdict: str = "not-applicable"
    findings: tuple[Any, ...] = ()

    @property
    def first_error(self) -> None:
        return None

    @property
    def reason(self) -> str:
        return f"a {self.module_arch} module; the target is {self.target_arch}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "release": self.release,
            "verdict": self.verdict,
            "unchecked": [],
            "files": {},
            "missing": {},
            "notes": [self.reason],
            "findings": [],
            "patched_functions": [],
        }


@dataclass
class Plan:
    """Every (module, target) pair of a run, module by module; ``jobs`` are the
    pairs to judge, ``skipped`` the not-applicable ones (by pair index)."""

    modules: list[str]
    targets: list[TargetSpec]
    labels: list[str]
    releases: list[str | None]
    jobs: list[PairJob] = field(default_factory=list)
    skipped: dict[int, NotApplicable] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.modules) * len(self.targets)


def plan(modules: list[str], targets: list[TargetSpec]) -> Plan:
    """Pair every module with every target of its architecture.

    When the targets are of more than one architecture, a module is judged on
    the targets of its own (``e_machine`` from the ELF header, the target's from
    its config) and the others are not applicable.  A module that has no
    target of its architecture (or whose architecture is unknown) is judged on
    every target, so that the kernel's own refusal is reported.
    """
    from ..modtree import module_kernel_name
    from .target import Target

    opened = [Target(list(t.roots), t.release, t.distribution) for t in targets]
    for t in opened:
        t.validate()  # not a kernel: bad input, before any work
    labels = [t.label for t in opened]
    machines = [t.machine for t in opened]
    releases = [t.release for t in opened]
    p = Plan(modules, targets, labels, releases)
    several = len({m for m in machines if m is not None}) > 1
    for mi, mod in enumerate(modules):
        mine = module_machine(mod) if several else None
        own = mine is not None and mine in machines
        for ti in range(len(targets)):
            index = mi * len(targets) + ti
            if own and machines[ti] is not None and machines[ti] != mine:
                p.skipped[index] = NotApplicable(
                    mod,
                    module_kernel_name(os.path.basename(mod)),
                    labels[ti],
                    releases[ti],
                    machine_name(mine),
                    machine_name(machines[ti]),
                )
            else:
                p.jobs.append(PairJob(index, mod, ti))
    return p
