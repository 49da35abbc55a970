"""A target kernel as distributions ship it: found in one or more directories, read lazily.

``Target(path)`` accepts the root of an installed system or of extracted
kernel packages, or a flat directory holding the same files; ``Target([root1,
root2, ...])`` one kernel whose packages were extracted into several roots
(image, modules, headers, -dbg).  Where each file is looked for, in order:

- config: ``boot/config-R``, ``[usr/]lib/modules/R/config`` (Debian 7.x's
  split ``linux-base`` package), the headers' ``.config``, ``config``;
- symbols: the -dbg package's ``usr/lib/debug/boot/System.map-R``,
  ``boot/System.map-R``, ``[usr/]lib/modules/R/System.map``; Debian's one-line
  placeholder System.map (6.12+) is recognised and named, never parsed;
  a vmlinux ELF (-dbg, or ppc64el's unstripped image) with a symbol table;
- ``Module.symvers`` from ``usr/src/linux-headers-R/`` or ``symvers-R.gz``;
- modules: ``lib/modules/R/`` or usr-merged ``usr/lib/modules/R/``
  (``.ko``, ``.ko.xz``, ``.ko.zst``, ``.ko.gz``).

Every file is located on first use and read once; what is missing is recorded
in :attr:`Target.missing` with the file and package that supply it, so that
the checks needing it report "not checked".
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from .. import compress
from .. import constants as C
from ..elfheader import IDENT_SIZE, ElfHeaderError, read_header, read_ident, section_headers, string_table_index
from ..errors import InputError, InputFileError, KlpError, SymbolFileError
from ..modtree import ModuleTree, module_kernel_name
from ..symbols import PLACEHOLDER_MARK, KernelSymbols, parse_symbol_text, symbols_from_elf

#: where a release's modules and (Debian 7.x) its config, System.map and image live
MODDIRS = ("lib/modules/{rel}", "usr/lib/modules/{rel}")
#: largest symbol/config/symvers text file read (a hostile target cannot exhaust memory)
MAX_TEXT = 512 << 20


@dataclass(frozen=True)
class SymversEntry:
    crc: int | None
    module: str  # "vmlinux" or the module's path without .ko
    gpl: bool
    namespace: str


def read_input(path: str | os.PathLike[str], what: str, limit: int = MAX_TEXT) -> bytes:
    """A file's bytes, decompressed when it is gzip, xz or zstd (the core's bounded reader); a file
    inside a ``.deb`` target part (:mod:`.debpkg`) is read from the package's bytes."""
    from .debpkg import DebPath, member_path

    member = path if isinstance(path, DebPath) else member_path(path) if isinstance(path, str) else None
    if member is None:
        return compress.read_input(path, limit=limit, what=what)
    import io
    import stat as st

    data = member.read_bytes()
    fake = os.stat_result((st.S_IFREG, 0, 0, 0, 0, 0, len(data), 0, 0, 0))
    return compress._read_bounded(io.BytesIO(data), str(member), fake, limit, what, InputFileError)


class _PackageModuleTree(ModuleTree):
    """The modules of a ``.deb`` target part (no directory to walk: the package's member list)."""

    def __init__(self, root: Any) -> None:
        super().__init__(str(root))
        self.package_root = root

    @cached_property
    def index(self) -> dict[str, Path]:
        from ..modtree import MODULE_SUFFIXES, SKIP_DIRS

        base = self.package_root.rel + "/"
        out: dict[str, Any] = {}
        for name in sorted(self.package_root.root.files):
            rest = name[len(base) :] if name.startswith(base) else None
            if rest is None or rest.split("/", 1)[0] in SKIP_DIRS or not name.endswith(MODULE_SUFFIXES):
                continue
            out.setdefault(module_kernel_name(name), self.package_root.root / name)
        return out

    def _raw(self, path: Path) -> bytes:
        return read_input(path, "module", limit=1 << 30)


class Target:
    """One target kernel found under ``path`` (a directory, or a list of directories
    holding the parts of one kernel: image, modules, headers, -dbg)."""

    def __init__(
        self,
        path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        release: str | None = None,
        distribution: str | None = None,
    ) -> None:
        parts = [path] if isinstance(path, (str, os.PathLike)) else list(path)
        if not parts:
            raise InputError("target: no directory given")
        from .debpkg import DebRoot

        #: the directories and .deb packages the kernel's files are looked for in, in order
        self.roots: list[Any] = []
        for p in parts:
            if os.fspath(p).endswith(".deb") and os.path.isfile(p):
                self.roots.append(DebRoot(p))
            elif os.path.isdir(p) and _only_packages(Path(p)):
                self.roots += [DebRoot(d) for d in sorted(Path(p).glob("*.deb"))]  # a folder of packages
            elif os.path.isdir(p):
                self.roots.append(Path(p))
            else:
                raise InputError(f"target {p}: not a directory or a .deb package")
        self.path = self.roots[0]
        self._distribution = distribution  # None: guessed from the config; "upstream": none
        self._release_hint = release
        self.missing: dict[str, str] = {}  # what -> why / where looked / what supplies it
        self.notes: list[str] = []
        self.cache: dict[str, Any] = {}  # per-target results of the load steps (dependencies, module symbols)

    @property
    def running(self) -> bool:
        """The target is the running system (``--target /``)."""
        return len(self.roots) == 1 and str(self.path) == "/"

    def _glob(self, pattern: str) -> list[Path]:
        return [p for root in self.roots for p in sorted(root.glob(pattern))]

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
    def releases_found(self) -> dict[str, int]:
        """Every release the target's files name, with how many files name it."""
        found: dict[str, int] = {}
        for pattern in (
            "lib/modules/*",
            "usr/lib/modules/*",
            "boot/System.map-*",
            "boot/config-*",
            "boot/vmlinuz-*",
            "boot/vmlinux-*",
            "usr/lib/debug/boot/vmlinux-*",
            "usr/lib/debug/lib/modules/*",
            "usr/src/linux-headers-*",
            "boot/symvers-*",
        ):
            for p in self._glob(pattern):
                rel = p.name
                for prefix in ("System.map-", "config-", "vmlinuz-", "vmlinux-", "linux-headers-", "symvers-"):
                    if rel.startswith(prefix):
                        rel = rel[len(prefix) :]
                        break
                rel = rel.removesuffix(".gz")
                if pattern == "usr/src/linux-headers-*" and not (p / "Module.symvers").exists():
                    continue
                if pattern.endswith("modules/*") and not p.is_dir():
                    continue
                found[rel] = found.get(rel, 0) + 1
        return found

    @cached_property
    def _file_release(self) -> str | None:
        """The release named by the target's files (never its module tree,
        which is found with it)."""
        if self._release_hint:
            return self._release_hint
        if self.running:
            return os.uname().release
        found = self.releases_found
        if found:
            best = sorted(found.items(), key=lambda kv: (-kv[1], kv[0]))
            if len(best) > 1:
                self.notes.append(
                    f"several kernel releases under {self.label}: {', '.join(k for k, _ in best)}; using "
                    f"{best[0][0]} (PATH:RELEASE picks another)"
                )
            return best[0][0]
        for root in self.roots:
            for name in ("release", "kernel.release", "include/config/kernel.release"):
                p = root / name
                if p.is_file():
                    return p.read_text(errors="replace").strip() or None
        return None

    def validate(self) -> None:
        """Raise :class:`InputError` (bad input, exit 2) when the target is not a kernel:
        no release can be found, a release asked for has no files, or nothing to check against."""
        if self._release_hint and not self.running:
            found = self.releases_found
            if found and self._release_hint not in found:
                raise InputError(
                    f"--target {self.label}:{self._release_hint}: no files of release {self._release_hint} "
                    f"(releases found: {', '.join(sorted(found))})"
                )
        if self.release is None and self.config_path is None and self.modules_dir is None:
            raise InputError(
                f"--target {self.label}: not a kernel: no release found (no boot/config-R, "
                "[usr/]lib/modules/R/, System.map-R, linux-headers-R, release file or .ko files)"
            )

    @property
    def label(self) -> str:
        return ",".join(str(r) for r in self.roots)

    def _first(self, *candidates: str) -> Path | None:
        for c in candidates:
            if "{rel}" in c:
                if not self.release:
                    continue
                c = c.format(rel=self.release)
            for root in self.roots:
                p = root / c
                if p.is_file():
                    return p
        return None

    def _in_moddirs(self, name: str) -> list[str]:
        return [f"{d}/{name}" for d in MODDIRS]

    def supplier(self, what: str) -> str:
        """Which file and (Debian) package supplies ``what`` for this target's release."""
        rel = self._file_release or "<release>"  # (not .release: that may read the module tree)
        # the config says whether Debian built it, once it has been read (finding it may be what failed)
        deb = "deb" in rel or (
            self.distribution == "debian" if "config" in self.__dict__ else self._distribution == "debian"
        )
        pkgs = {
            "config": f"boot/config-{rel} or usr/lib/modules/{rel}/config"
            + (f" (linux-image-{rel} package; 7.x: linux-base-{rel})" if deb else ""),
            "symbols": f"usr/lib/debug/boot/System.map-{rel} or vmlinux-{rel}"
            + (f" (linux-image-{rel}-dbg package, about 1 GB)" if deb else " (the kernel's debug package)")
            + " or /proc/kallsyms of the running kernel",
            "Module.symvers": f"usr/src/linux-headers-{rel}/Module.symvers"
            + (f" (linux-headers-{rel} package)" if deb else ""),
            "module tree": f"[usr/]lib/modules/{rel}/kernel/"
            + (f" (linux-image-{rel} package; 7.x: linux-modules-{rel})" if deb else ""),
        }
        return pkgs.get(what, what)

    # ----------------------------------------------------------- config
    @cached_property
    def config_path(self) -> Path | None:
        p = self._first(
            "boot/config-{rel}",
            *self._in_moddirs("config"),
            "usr/src/linux-headers-{rel}/.config",
            "lib/modules/{rel}/build/.config",
            "config",
            ".config",
            "config.gz",
        )
        if p is None and self.running and Path("/proc/config.gz").is_file():
            p = Path("/proc/config.gz")
        if p is None:
            self.missing["config"] = "not found; supplied by " + self.supplier("config")
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
            from ..plugins import arch_config_symbols, default_plugin_manager

            # the installed plugins' architecture config symbols (ArchSpec.config_symbol)
            for key, machine in arch_config_symbols(default_plugin_manager()):
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
            *self._in_moddirs("System.map"),
            "usr/lib/debug/lib/modules/{rel}/System.map",
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
            self.placeholder = placeholder
            self.notes.append(f"{placeholder} is Debian's one-line placeholder, not a symbol table")
        return None

    placeholder: Path | None = None

    @cached_property
    def vmlinux_path(self) -> Path | None:
        for cand in (
            "usr/lib/debug/boot/vmlinux-{rel}",
            "usr/lib/debug/lib/modules/{rel}/vmlinux",
            "boot/vmlinux-{rel}",
            *self._in_moddirs("vmlinuz"),  # ppc64el's image is an unstripped vmlinux ELF
            "boot/vmlinuz-{rel}",
            "lib/modules/{rel}/build/vmlinux",
            "usr/src/linux-headers-{rel}/vmlinux",
            "vmlinux",
        ):
            p = self._first(cand)
            if p is not None and _has_code(p):
                return p
        return None

    @cached_property
    def kallsyms_path(self) -> Path | None:
        if self.running:
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
        from .readcache import cached

        try:
            if (k := self.kallsyms_path) is not None:

                def parse_kallsyms() -> KernelSymbols:
                    return parse_symbol_text(read_input(k, "kallsyms").decode("utf-8", "replace"), str(k))

                # /proc/kallsyms is the running kernel's: read every time
                return parse_kallsyms() if self.running else cached("kallsyms", [k], parse_kallsyms)
            if (p := self.system_map_path) is not None:  # parsed once per content (readcache)
                return cached(
                    "System.map",
                    [p],
                    lambda: parse_symbol_text(read_input(p, "System.map").decode("utf-8", "replace"), str(p)),
                )
            if (v := self.vmlinux_path) is not None:
                return cached(
                    "vmlinux-symbols",
                    [v],
                    lambda: symbols_from_elf(read_input(v, "vmlinux", limit=4 << 30), str(v)),
                )
            from ..kimage.source import IMAGE_PATHS, read_image_file

            image = self._first(*IMAGE_PATHS)
            if image is not None:  # the image's kallsyms, exports and ftrace records (klpcore.kimage)
                ks = read_image_file(image, self.config)
                self.notes.append(f"symbols, exports and ftrace locations read from the kernel image {image}")
                return ks
        except SymbolFileError as exc:
            self.missing["symbols"] = str(exc)
            return None
        self.missing["symbols"] = (
            (f"{self.placeholder} is Debian's placeholder; " if self.placeholder else "")
            + "no System.map, vmlinux ELF or kallsyms; supplied by "
            + self.supplier("symbols")
        )
        return None

    @cached_property
    def ftrace_addrs_path(self) -> Path | None:
        """The ftrace locations as ``available_filter_functions_addrs`` lists them
        ("address name" per line, the tracefs file of 6.5+ kernels)."""
        if self.running:
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
            ks = self.symbols  # a kernel image's __mcount_loc records, when the symbols came from one
            return None if ks is None else ks.ftrace.get(C.VMLINUX)
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
            *self._in_moddirs("symvers.gz"),
            "lib/modules/{rel}/build/Module.symvers",
            "Module.symvers",
            "symvers.gz",
        )
        if p is None:
            found = self._glob("symvers-*.gz")
            p = found[0] if found else None
        if p is None:
            self.missing["Module.symvers"] = "not found; supplied by " + self.supplier("Module.symvers")
        return p

    @cached_property
    def symvers(self) -> dict[str, SymversEntry] | None:
        from .readcache import cached

        p = self.symvers_path
        if p is None:
            return None
        return cached("Module.symvers", [p], lambda: self._read_symvers(p))

    def _read_symvers(self, p: Path) -> dict[str, SymversEntry]:
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
            dirs = [root / d.format(rel=self._file_release) for root in self.roots for d in MODDIRS]
            dirs = [p for p in dirs if p.is_dir()]
            # a split package's root may hold only config, System.map and modules.order there (7.x's
            # linux-base): prefer the one with the modules
            with_kernel = [p for p in dirs if (p / "kernel").is_dir()]
            with_order = [p for p in dirs if (p / "modules.order").is_file()]
            if with_kernel or with_order or dirs:
                return (with_kernel or with_order or dirs)[0]
        if not self.running:
            for root in self.roots:
                if isinstance(root, Path) and any(root.glob("*.ko*")):
                    return root
        self.missing["module tree"] = "not found; supplied by " + self.supplier("module tree")
        return None

    @cached_property
    def module_tree(self) -> ModuleTree | None:
        """The target's modules (index and exports, read lazily)."""
        d = self.modules_dir
        if d is None:
            return None
        return ModuleTree(d) if isinstance(d, Path) else _PackageModuleTree(d)

    @cached_property
    def module_index(self) -> dict[str, Path]:
        """Kernel module name -> file, for every module in the tree."""
        return self.module_tree.index if self.module_tree is not None else {}

    @cached_property
    def modules_dep(self) -> dict[str, list[str]] | None:
        p = self._first(*self._in_moddirs("modules.dep"), "modules.dep")
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
    def module_struct_size(self) -> int | None:
        """The target kernel's ``sizeof(struct module)``: the size of ``.gnu.linkonce.this_module`` in an
        in-tree module of its tree (modpost emits that section as the kernel's own ``struct module``);
        None when the tree has no readable in-tree module."""
        for path in list(self.module_index.values())[:20]:
            try:
                data = read_input(path, "module", limit=1 << 30)
                if b"intree=Y" not in data:
                    continue
                size = this_module_size(data)
            except (KlpError, ElfHeaderError, IndexError, ValueError):
                continue
            if size is not None:
                return size
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


def this_module_size(data: bytes) -> int | None:
    """``sh_size`` of the module's ``.gnu.linkonce.this_module`` section (None: no such section)."""
    hdr = read_header(data)
    shdrs = section_headers(data, hdr)
    names = shdrs[string_table_index(data, hdr)]
    table = data[names.offset : names.offset + names.size]
    for sh in shdrs:
        if table[sh.name : table.find(b"\0", sh.name)] == b".gnu.linkonce.this_module":
            return sh.size
    return None


def _only_packages(d: Path) -> bool:
    """``d`` holds .deb files and nothing a kernel root has (a folder of downloaded packages)."""
    return any(d.glob("*.deb")) and not any((d / n).exists() for n in ("boot", "lib", "usr", "System.map", "config"))


def _has_code(path: Any) -> bool:
    """``path`` is an ELF with a symbol table and a section other than BTF (not the headers
    package's BTF-only ``vmlinux``, nor a compressed image)."""
    import mmap
    from contextlib import ExitStack

    from ..elfheader import Buffer, read_header, section_headers

    try:
        with ExitStack() as stack:
            data: Buffer
            if isinstance(path, Path):
                fh = stack.enter_context(open(path, "rb"))
                data = stack.enter_context(mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ))
            else:
                data = path.read_bytes()
            hdr = read_header(data)
            if hdr.shnum == 0 or hdr.shstrndx >= hdr.shnum:
                return False
            shdrs = section_headers(data, hdr)
            strtab = shdrs[hdr.shstrndx]
            names = bytes(data[strtab.offset : strtab.offset + min(strtab.size, 1 << 20)])
    except (OSError, ValueError):  # ElfHeaderError is a ValueError, as is mmap's for an empty file
        return False
    other = symtab = False
    for sh in shdrs:
        name = names[sh.name : names.find(b"\0", sh.name)]
        symtab = symtab or sh.type == C.SHT_SYMTAB
        other = other or (sh.type == C.SHT_PROGBITS and not name.startswith(b".BTF"))
    return other and symtab
