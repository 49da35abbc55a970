"""The target kernel: version and the behaviour that depends on it.

klpcore models the newest kernel by default.  Where behaviour changed in ways
users meet, the target version selects it:

============================================  ==========================
behaviour                                     since
============================================  ==========================
vmlinux klp relocations applied at load;       5.8
module-specific sections may not use vmlinux
symbols; late writes via text_poke (x86)
KSYM_NAME_LEN 512 (was 128)                    6.1
x86 ``clear_relocate_add`` on module removal    6.3
one allocation per memory type                 6.4
============================================  ==========================
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

NEWEST = (6, 17)
#: the oldest kernel whose module loader and livepatch core klpcore models
OLDEST = (4, 0)

#: ``-O KEY=VALUE`` options the core reads: key -> kind ("bool", "int", "address");
#: plugins declare theirs in ``ArchSpec.options``
CORE_OPTIONS: dict[str, str] = {"relocate_percpu": "bool"}


def parse_version(text: str) -> tuple[int, int]:
    """``"6.1"``, ``"6.1.0-50-amd64"``, ``"v5.8"`` -> (major, minor)."""
    m = re.match(r"^v?(\d+)\.(\d+)", text.strip())
    if not m:
        raise ValueError(f"not a kernel version: {text!r}")
    return int(m.group(1)), int(m.group(2))


@dataclass(frozen=True)
class KernelTarget:
    """The kernel a module is loaded into."""

    version: tuple[int, int] = NEWEST
    strict_module_rwx: bool = True
    livepatch: bool = True
    #: free-form options for plugins (e.g. ``{"erratum_843419": True}``)
    options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @classmethod
    def from_string(cls, text: str | None, **kw: Any) -> KernelTarget:
        if not text or text == "newest":
            return cls(**kw)
        version = parse_version(text)
        if not OLDEST <= version <= NEWEST:
            raise ValueError(
                f"kernel {text} is outside the versions klpcore models "
                f"({OLDEST[0]}.{OLDEST[1]} to {NEWEST[0]}.{NEWEST[1]})"
            )
        return cls(version=version, **kw)

    def at_least(self, major: int, minor: int) -> bool:
        return self.version >= (major, minor)

    @property
    def label(self) -> str:
        return f"{self.version[0]}.{self.version[1]}"

    @property
    def ksym_name_len(self) -> int:
        return 512 if self.at_least(6, 1) else 128

    @property
    def layout_style(self) -> str:
        return "memory" if self.at_least(6, 4) else "legacy"

    @property
    def early_vmlinux_klp(self) -> bool:
        """vmlinux-specific klp relocations are applied at module load (5.8+)."""
        return self.at_least(5, 8)

    @property
    def relocates_percpu(self) -> bool:
        """``apply_relocations`` relocates the ``.data..percpu`` section (in the
        temporary image, copied to each CPU later).  Linux 6.1 skips it (its
        ``SHF_ALLOC`` was cleared); the 6.17 tree applies it.  The release in
        between that changed it is not confirmed, so only versions from 6.17 get
        the new behaviour; ``options["relocate_percpu"]`` overrides."""
        if "relocate_percpu" in self.options:
            return bool(self.options["relocate_percpu"])
        return self.at_least(6, 17)

    @property
    def klp_vmlinux_symbol_check(self) -> bool:
        """Module-specific klp sections may not reference vmlinux symbols (5.8+)."""
        return self.at_least(5, 8)
