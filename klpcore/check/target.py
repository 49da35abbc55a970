"""A target kernel as distributions ship it: found in a directory, read lazily.

``Target(path)`` accepts the root of an installed system or of extracted
kernel packages (``boot/``, ``lib/modules/<release>/``, ``usr/lib/debug/boot/``,
``usr/src/linux-headers-<release>/``) or a flat directory holding the same
files.  Every file is located on first use and read once; what is missing is
recorded in :attr:`Target.missing` so that the checks needing it report
"not checked".
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from .. import compress
from .. import constants as C
from ..elfheader import IDENT_SIZE, ElfHeaderError, read_ident
from ..errors import InputError, KlpError, SymbolFileError
from ..modtree import ModuleTree, module_kernel_name
from ..symbols import KernelSymbols, parse_symbol_text, symbols_from_elf

#: e_machine for the architecture config symbols
ARCH_CONFIG = (("CONFIG_X86_64", 62), ("CONFIG_PPC64", 21), ("CONFIG_ARM64", 183), ("CONFIG_S390", 22))
PLACEHOLDER_MARK = "System.map is in the linux-image"
#: largest symbol/config/symvers text file read (a hostile target cannot exhaust memory)
MAX_TEXT = 512 << 20


@dataclass(frozen=True)
class SymversEntry:
    crc: int | None
    module: str  # "vmlinux" or the module's path without .ko
    gpl: bool
    namespace: str


def read_input(path: str | os.PathLike[str], what: str, limit: int = MAX_TEXT) -> bytes:
    """A file's bytes, decompressed when it is gzip, xz or zstd (the core's bounded reader)."""
    return compress.read_input(path, limit=limit, what=what)


class Target:
    """One target kernel found under ``path``."""

    def __init__(
        self, path: str | os.PathLike[str], release: str | None = None, distribution: str | None = None
    ) -> None:
        self.path = Path(path)
        self._distribution = distribution  # None: guessed from the config; "upstream": none
        if not self.path.is_dir():
            raise InputError(f"target {path}: not a directory")
        self._release_hint = release
        self.missing: dict[str, str] = {}  # what -> why / where looked
        self.notes: list[str] = []
        self.cache: dict[str, Any] = {}  # per-target results of the load steps (dependencies, module symbols)

    # ----------------------------------------------------------- release
    @cached_property
    def release(self) -> str | None:
        """The target's kernel release: from its files' names, else from the
        vermagic of the modules in its tree."""
        rel = self._file_release
        if rel:
            return rel
        vm = self.tree_vermagic
        return vm.split(" ", 1)[0] if vm else None

    @cached_property
    def _file_release(self) -> str | None:
        """The release named by the target's files (never its module tree,
        which is found with it)."""
        if self._release_hint:
            return self._release_hint
        found: dict[str, int] = {}
        for pattern in (
            "lib/modules/*",
            "boot/System.map-*",
            "boot/config-*",
            "usr/lib/debug/boot/vmlinux-*",
            "usr/src/linux-headers-*",
            "boot/symvers-*",
        ):
            for p in self.path.glob(pattern):
                rel = p.name
                for prefix in ("System.map-", "config-", "vmlinux-", "linux-headers-", "symvers-"):
                    if rel.startswith(prefix):
                        rel = rel[len(prefix) :]
                rel = rel.removesuffix(".gz")
                if pattern == "usr/src/linux-headers-*" and not (p / "Module.symvers").exists():
                    continue
                found[rel] = found.get(rel, 0) + 1
        if str(self.path) == "/" and not self._release_hint:
            return os.uname().release
        if found:
            best = sorted(found.items(), key=lambda kv: (-kv[1], kv[0]))
            if len(best) > 1:
                self.notes.append(
                    f"several kernel releases under {self.path}: {', '.join(k for k, _ in best)}; using {best[0][0]}"
                )
            return best[0][0]
        for name in ("release", "kernel.release", "include/config/kernel.release"):
            p = self.path / name
            if p.is_file():
                return p.read_text(errors="replace").strip() or None
        return None

    @property
    def label(self) -> str:
        return str(self.path)

    def _first(self, *candidates: str) -> Path | None:
        for c in candidates:
            if "{rel}" in c:
                if not self.release:
                    continue
                c = c.format(rel=self.release)
            p = self.path / c
            if p.is_file():
                return p
        return None

    # ----------------------------------------------------------- config
    @cached_property
    def config_path(self) -> Path | None:
        p = self._first(
            "boot/config-{rel}",
            "usr/src/linux-headers-{rel}/.config",
            "lib/modules/{rel}/build/.config",
            "config",
            ".config",
            "config.gz",
        )
        if p is None and str(self.path) == "/" and Path("/proc/config.gz").is_file():
            p = Path("/proc/config.gz")
        if p is None:
            self.missing["config"] = "no boot/config-<release>, linux-headers .config or config file"
        return p

    @cached_property
    def config(self) -> dict[str, str] | None:
        p = self.config_path
        if p is None:
            return None
        text = read_input(p, "kernel config").decode("utf-8", "replace")
        out: dict[str, str] = {}
        for line in text.splitlines():
            if line.startswith("CONFIG_"):
                key, _, value = line.partition("=")
                out[key] = value.strip().strip('"')
            elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
                out[line[2:-11]] = "n"  # said to be off (a missing symbol is merely unknown)
        return out

    def config_bool(self, key: str) -> bool | None:
        """``True``/``False`` for a config symbol; ``None`` without a config."""
        cfg = self.config
        if cfg is None:
            return None
        return cfg.get(key) in ("y", "m")

    @cached_property
    def distribution(self) -> str | None:
        """The distribution whose kernel patches change a load rule (``DISTRIBUTION_RULES`` in
        steps): as given, else "debian" when the config says Debian built it (its compiler string
        or its trusted-keys file), else ``None`` (upstream rules)."""
        if self._distribution is not None:
            return None if self._distribution == "upstream" else self._distribution
        cfg = self.config or {}
        if "(Debian" in cfg.get("CONFIG_CC_VERSION_TEXT", "") or cfg.get("CONFIG_SYSTEM_TRUSTED_KEYS", "").startswith(
            "debian/"
        ):
            return "debian"
        return None

    # ------------------------------------------------------------ arch
    @cached_property
    def machine(self) -> int | None:
        cfg = self.config
        if cfg:
            for key, machine in ARCH_CONFIG:
                if cfg.get(key) == "y":
                    return machine
        for path in self.module_index.values():
            try:
                return read_ident(compress.read_head(path, IDENT_SIZE, what="module")).machine
            except (KlpError, ElfHeaderError):
                continue
        return None

    # ---------------------------------------------------------- symbols
    @cached_property
    def system_map_path(self) -> Path | None:
        placeholder = None
        for cand in (
            "usr/lib/debug/boot/System.map-{rel}",
            "boot/System.map-{rel}",
            "lib/modules/{rel}/System.map",
            "System.map",
            "System.map.gz",
        ):
            p = self._first(cand)
            if p is None:
                continue
            if p.stat().st_size < 4096 and PLACEHOLDER_MARK in p.read_text(errors="replace"):
                placeholder = p
                continue
            return p
        if placeholder is not None:
            self.notes.append(f"{placeholder} is Debian's one-line placeholder, not a symbol table")
        return None

    @cached_property
    def vmlinux_path(self) -> Path | None:
        p = self._first(
            "usr/lib/debug/boot/vmlinux-{rel}",
            "usr/lib/debug/lib/modules/{rel}/vmlinux",
            "lib/modules/{rel}/build/vmlinux",
            "boot/vmlinux-{rel}",
            "vmlinux",
        )
        if p is not None:
            with open(p, "rb") as fh:
                if fh.read(4) != C.ELFMAG:
                    return None
        return p

    @cached_property
    def kallsyms_path(self) -> Path | None:
        if str(self.path) == "/":
            p = Path("/proc/kallsyms")
            try:
                with open(p) as fh:
                    first = fh.readline()
                if first and int(first.split()[0], 16) != 0:
                    return p
                self.notes.append("/proc/kallsyms shows zero addresses (read it as root)")
            except (OSError, ValueError, IndexError):
                pass
            return None
        return self._first("kallsyms", "proc/kallsyms")

    @cached_property
    def symbols(self) -> KernelSymbols | None:
        """vmlinux symbols (and loaded modules for a kallsyms dump), read once."""
        try:
            if self.kallsyms_path is not None:
                return parse_symbol_text(
                    read_input(self.kallsyms_path, "kallsyms").decode("utf-8", "replace"), str(self.kallsyms_path)
                )
            if self.system_map_path is not None:
                return parse_symbol_text(
                    read_input(self.system_map_path, "System.map").decode("utf-8", "replace"), str(self.system_map_path)
                )
            if self.vmlinux_path is not None:
                return symbols_from_elf(read_input(self.vmlinux_path, "vmlinux", limit=4 << 30), str(self.vmlinux_path))
        except SymbolFileError as exc:
            self.missing["symbols"] = str(exc)
            return None
        self.missing["symbols"] = "no System.map (the -dbg package has it), vmlinux ELF or kallsyms"
        return None

    @cached_property
    def ftrace_addrs_path(self) -> Path | None:
        """The ftrace locations as ``available_filter_functions_addrs`` lists them
        ("address name" per line, the tracefs file of 6.5+ kernels)."""
        if str(self.path) == "/":
            for d in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
                p = Path(d) / "available_filter_functions_addrs"
                try:
                    with open(p):
                        return p
                except OSError:
                    continue
            return None
        return self._first("available_filter_functions_addrs", "available_filter_functions_addrs.gz")

    @cached_property
    def ftrace_sites(self) -> Any:
        """Sorted ftrace call-site addresses of vmlinux from ``available_filter_functions_addrs``
        (``None`` when the target has no such file); module lines (``[mod]``) are skipped."""
        import numpy as np

        p = self.ftrace_addrs_path
        if p is None:
            return None
        addrs = []
        for lineno, line in enumerate(read_input(p, "ftrace locations").decode("utf-8", "replace").splitlines(), 1):
            w = line.split()
            if not w or (len(w) > 2 and w[2].startswith("[")):
                continue
            try:
                addrs.append(int(w[0], 16))
            except ValueError:
                raise InputError(f"{p}:{lineno}: not an 'address name' line: {line[:80]!r}") from None
        return np.unique(np.array(addrs, dtype=np.uint64))

    # ---------------------------------------------------------- symvers
    @cached_property
    def symvers_path(self) -> Path | None:
        p = self._first(
            "usr/src/linux-headers-{rel}/Module.symvers",
            "boot/symvers-{rel}.gz",
            "lib/modules/{rel}/symvers.gz",
            "lib/modules/{rel}/build/Module.symvers",
            "Module.symvers",
            "symvers.gz",
        )
        if p is None:
            found = sorted(self.path.glob("symvers-*.gz"))
            p = found[0] if found else None
        if p is None:
            self.missing["Module.symvers"] = "no Module.symvers (linux-headers package) or symvers-<release>.gz"
        return p

    @cached_property
    def symvers(self) -> dict[str, SymversEntry] | None:
        p = self.symvers_path
        if p is None:
            return None
        text = read_input(p, "Module.symvers").decode("utf-8", "replace")
        out: dict[str, SymversEntry] = {}
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line:
                continue
            parts = line.split("\t")
            if len(parts) < 4:
                raise InputError(f"{p}:{lineno}: not a Module.symvers line: {line[:80]!r}")
            try:
                crc = int(parts[0], 16)
            except ValueError:
                raise InputError(f"{p}:{lineno}: bad CRC {parts[0]!r}") from None
            out[parts[1]] = SymversEntry(crc, parts[2], "GPL" in parts[3], parts[4] if len(parts) > 4 else "")
        return out

    # ------------------------------------------------------ module tree
    @cached_property
    def modules_dir(self) -> Path | None:
        if self._file_release:
            d = self.path / "lib" / "modules" / self._file_release
            if d.is_dir():
                return d
        if str(self.path) != "/" and any(self.path.glob("*.ko*")):
            return self.path
        self.missing["module tree"] = "no lib/modules/<release>/ and no .ko files at the top level"
        return None

    @cached_property
    def module_tree(self) -> ModuleTree | None:
        """The target's modules (index and exports, read lazily)."""
        return ModuleTree(self.modules_dir) if self.modules_dir is not None else None

    @cached_property
    def module_index(self) -> dict[str, Path]:
        """Kernel module name -> file, for every module in the tree."""
        return self.module_tree.index if self.module_tree is not None else {}

    @cached_property
    def modules_dep(self) -> dict[str, list[str]] | None:
        p = self._first("lib/modules/{rel}/modules.dep", "modules.dep")
        if p is None:
            return None
        out: dict[str, list[str]] = {}
        for line in read_input(p, "modules.dep").decode("utf-8", "replace").splitlines():
            mod, colon, deps = line.partition(":")
            if colon:
                out[module_kernel_name(mod)] = [module_kernel_name(d) for d in deps.split()]
        return out

    def find_module(self, name: str) -> Path | None:
        return self.module_tree.find(name) if self.module_tree is not None else None

    @cached_property
    def tree_vermagic(self) -> str | None:
        """The vermagic of an in-tree module of the target (what the kernel compares with)."""
        for path in list(self.module_index.values())[:20]:
            try:
                data = read_input(path, "module", limit=1 << 30)
            except KlpError:
                continue
            m = re.search(rb"vermagic=([^\0]*)\0", data)
            if m and b"intree=Y" in data:
                return m.group(1).decode("utf-8", "replace")
        return None

    @cached_property
    def tree_signer(self) -> bytes | None:
        """The signer of the target's own signed modules (the key its build signed them with)."""
        from .modinfo import module_signer

        for path in list(self.module_index.values())[:20]:
            try:
                signer = module_signer(read_input(path, "module", limit=1 << 30))
            except KlpError:
                continue
            if signer is not None:
                return signer
        return None

    @cached_property
    def vermagic(self) -> str | None:
        """``VERMAGIC_STRING``: from an in-tree module, else built from the release and config."""
        if self.tree_vermagic:
            return self.tree_vermagic
        if not self.release or self.config is None:
            return None
        cfg = self.config
        parts = [self.release]
        if cfg.get("CONFIG_SMP") == "y":
            parts.append("SMP")
        if cfg.get("CONFIG_PREEMPT_RT") == "y":
            parts.append("preempt_rt")
        elif cfg.get("CONFIG_PREEMPT_BUILD") == "y" or cfg.get("CONFIG_PREEMPT") == "y":
            parts.append("preempt")
        if cfg.get("CONFIG_MODULE_UNLOAD") == "y":
            parts.append("mod_unload")
        if cfg.get("CONFIG_MODVERSIONS") == "y":
            parts.append("modversions")
        self.notes.append(
            "vermagic built from the release and config (no in-tree module read); "
            "architecture-specific parts are not included"
        )
        return " ".join(parts) + " "

    def describe(self) -> dict[str, object]:
        return {
            "release": self.release,
            "distribution": self.distribution,
            "symbols": str(self.kallsyms_path or self.system_map_path or self.vmlinux_path or "") or None,
            "vmlinux": str(self.vmlinux_path) if self.vmlinux_path else None,
            "ftrace_locations": str(self.ftrace_addrs_path) if self.ftrace_addrs_path else None,
            "config": str(self.config_path) if self.config_path else None,
            "symvers": str(self.symvers_path) if self.symvers_path else None,
            "modules": str(self.modules_dir) if self.modules_dir else None,
        }
