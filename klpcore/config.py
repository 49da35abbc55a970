"""A kernel's build configuration (``.config``), as facts klpcore can use.

``klpcore --config FILE`` reads the target kernel's ``.config`` (the file in
``/boot/config-*``, or ``/proc/config.gz``; gzip, xz and zstd are accepted: it
is read through :mod:`klpcore.compress` like every input) so that the core
and the architecture plugins can take build facts from it: the page size,
``CONFIG_LIVEPATCH``, ``CONFIG_DYNAMIC_FTRACE``, ``CONFIG_STRICT_MODULE_RWX``,
``CONFIG_MODVERSIONS`` and so on.  Without a config every architecture uses
the common distribution setting and says so (see :class:`klpcore.kernel.Setting`).

The format is Kconfig's output: ``CONFIG_X=y``, ``=m``, ``="string"``,
``=123``/``=0x10`` and ``# CONFIG_X is not set``; other comments and blank
lines are ignored.  Anything else is refused with the line number.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from .compress import read_input
from .errors import InputError

_LINE = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")
_VALUE = re.compile(r'^(?:[ynm]|-?[0-9]+|0[xX][0-9a-fA-F]+|"(?:[^"\\]|\\.)*")$')
_HEADER = re.compile(r"^# Linux/\S+ (\d+\.\d+\S*) Kernel Configuration", re.M)
#: Reading more than this is refused (a real ``.config`` is about 300 KB).
MAX_CONFIG = 64 << 20


class ConfigError(InputError):
    """A kernel configuration file cannot be read or is not a ``.config``."""


def _key(name: str) -> str:
    return name if name.startswith("CONFIG_") else "CONFIG_" + name


@dataclass(frozen=True)
class KernelConfig:
    """A parsed ``.config``: option name -> value text (``y``, ``m``, the
    unquoted string, or the number as written); options written as ``# ... is
    not set`` are recorded as ``n``."""

    values: dict[str, str] = field(default_factory=dict)
    source: str = "<text>"
    #: the kernel release from the ``# Linux/<arch> X.Y.Z Kernel Configuration``
    #: header Kconfig writes, when present
    release: str | None = None

    # ----------------------------------------------------------- reading
    @classmethod
    def from_text(cls, text: str, source: str = "<text>") -> KernelConfig:
        values: dict[str, str] = {}
        seen_option = False
        for lineno, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line:
                continue
            m = _UNSET.match(line)
            if m:
                values[m.group(1)] = "n"
                seen_option = True
                continue
            if line.startswith("#"):
                continue
            m = _LINE.match(line)
            if not m or not _VALUE.match(m.group(2)):
                raise ConfigError(
                    f"{source}:{lineno}: not a kernel configuration line: {raw[:80]!r} "
                    "(expected CONFIG_NAME=y|m|\"string\"|number or '# CONFIG_NAME is not set')"
                )
            value = m.group(2)
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            values[m.group(1)] = value
            seen_option = True
        if not seen_option:
            raise ConfigError(f"{source}: no CONFIG_ option found: not a kernel .config")
        header = _HEADER.search(text[:4096])
        return cls(values, source, header.group(1) if header else None)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> KernelConfig:
        name = os.fspath(path)
        data = read_input(name, limit=MAX_CONFIG, what="kernel config", error=ConfigError)
        if b"\0" in data:
            raise ConfigError(f"{name}: not text (contains NUL bytes): not a kernel .config")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{name}: not text (byte {exc.start} is not UTF-8): not a kernel .config") from None
        return cls.from_text(text, source=name)

    # ----------------------------------------------------------- queries
    def get(self, name: str) -> str | None:
        """The value of ``name`` (with or without ``CONFIG_``): ``"y"``, ``"m"``,
        ``"n"`` (not set), the string or number text; None when absent."""
        return self.values.get(_key(name))

    def enabled(self, name: str) -> bool:
        """True when ``name`` is ``y`` or ``m``."""
        return self.get(name) in ("y", "m")

    def integer(self, name: str) -> int | None:
        """A numeric option (decimal or 0x hex), else None."""
        value = self.get(name)
        if value is None:
            return None
        try:
            return int(value, 0)
        except ValueError:
            return None

    def __len__(self) -> int:
        return len(self.values)
