"""The target kernel: its version, its configuration, and the behaviour they select.

Which behaviour starts in which release is data: the core's rows in
:mod:`klpcore.versions`, an architecture's in its plugin (all of them in
``docs/versions.md``); :meth:`KernelTarget.has` is the only question code asks
about versions.  Build facts (page size, ``CONFIG_STRICT_MODULE_RWX``,
...) come from the user's ``--config`` when given, else from the
architecture's common distribution setting (hooks ``klp_arch_page_size`` and
``klp_arch_config_default``), else from :data:`CORE_CONFIG_DEFAULTS`;
:func:`config_setting` says which.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .config import KernelConfig
from .errors import InputError
from .versions import BEHAVIOURS, NEWEST, OLDEST, Behaviour

if TYPE_CHECKING:
    from .plugins import ArchHooks

__all__ = [
    "CORE_OPTIONS",
    "NEWEST",
    "OLDEST",
    "KernelTarget",
    "Setting",
    "config_setting",
    "page_size_setting",
    "parse_stable",
    "parse_version",
]

#: Options the core needs when neither the config nor the arch plugin says.
CORE_CONFIG_DEFAULTS: dict[str, str] = {
    "STRICT_MODULE_RWX": "y",
    "ARCH_HAS_STRICT_MODULE_RWX": "y",
    "LIVEPATCH": "y",
    "HAVE_STATIC_CALL_INLINE": "n",
}
#: The page size when no plugin answers ``klp_arch_page_size``.
CORE_PAGE_SIZE = 4096

#: ``-O KEY=VALUE`` options the core reads: key -> kind ("bool", "int", "address");
#: plugins declare theirs in ``ArchSpec.options``
CORE_OPTIONS: dict[str, str] = {
    "relocate_percpu": "bool",
    "page_size": "int",
    "klp_object_order": "str",
    # each core behaviour of the version table, for a kernel with a backport (a plugin's
    # behaviours are its options: klpcore.plugins.plugin_options)
    **{name: "bool" for name in BEHAVIOURS},
}


def parse_version(text: str) -> tuple[int, int]:
    """``"6.1"``, ``"6.1.0-50-amd64"``, ``"v5.8"`` -> (major, minor)."""
    m = re.match(r"^v?(\d+)\.(\d+)", text.strip())
    if not m:
        raise ValueError(f"not a kernel version: {text!r}")
    return int(m.group(1)), int(m.group(2))


def parse_stable(text: str) -> int | None:
    """The stable number of a release string: ``"6.12.117+deb13-arm64"`` -> 117, ``"6.12.46"`` -> 46;
    None when the string has none (``"6.12"``) or hides it: Debian's ABI names
    (``"6.1.0-50-amd64"`` is 6.1.176) keep the third number at 0."""
    m = re.match(r"^v?\d+\.\d+\.(\d+)(-\d+)?", text.strip())
    if not m or (m.group(1) == "0" and m.group(2)):
        return None
    return int(m.group(1))


@dataclass(frozen=True)
class KernelTarget:
    """The kernel a module is loaded into."""

    version: tuple[int, int] = NEWEST
    #: ``CONFIG_STRICT_MODULE_RWX``; None: from the config or the arch's default
    strict_module_rwx: bool | None = None
    #: ``CONFIG_LIVEPATCH``; None: from the config or the arch's default
    livepatch: bool | None = None
    #: free-form options for plugins (e.g. ``{"erratum_843419": True}``); a
    #: behaviour name from :mod:`klpcore.versions` set to true/false overrides it
    options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    #: the kernel's parsed ``.config`` (``--config``), if given
    config: KernelConfig | None = field(default=None, hash=False, compare=False)
    #: where :attr:`version` came from: "option" (``--kernel``), "vermagic", "newest"
    version_source: str = field(default="newest", hash=False, compare=False)
    #: the stable release number (6.12.117 -> 117) when the version string names it
    #: (a behaviour may start in a stable release of an older line); None: unknown
    stable: int | None = None

    @classmethod
    def from_string(cls, text: str | None, **kw: Any) -> KernelTarget:
        """The kernel ``text`` names (``"6.1"``, ``"6.1.0-50-amd64"``, ``"newest"``); ``options`` are
        checked as ``-O`` is (:func:`klpcore.options.validate_options`: an unknown key or a value
        of the wrong kind is an :class:`~klpcore.errors.InputError`)."""
        if "options" in kw:
            from .options import validate_options

            kw["options"] = validate_options(kw["options"])
        if not text or text == "newest":
            return cls(**kw)
        try:
            version = parse_version(text)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        if version < OLDEST:
            raise InputError(
                f"kernel {text} is outside the versions klpcore models "
                f"({OLDEST[0]}.{OLDEST[1]} and newer; releases after {NEWEST[0]}.{NEWEST[1]} get its rules)"
            )
        return cls(version=version, **{"version_source": "option", "stable": parse_stable(text), **kw})

    def at_least(self, major: int, minor: int) -> bool:
        return self.version >= (major, minor)

    def has(self, behaviour: str | Behaviour) -> bool:
        """Does this kernel have ``behaviour``: a core behaviour's name (in
        :data:`klpcore.versions.BEHAVIOURS`) or a plugin's
        :class:`~klpcore.versions.Behaviour` row?

        ``options[<name>]`` (true/false) overrides the version rule, for a
        distribution kernel with a backport."""
        row = BEHAVIOURS.get(behaviour) if isinstance(behaviour, str) else behaviour
        if row is None:
            raise KeyError(
                f"{behaviour!r} is not a core behaviour (klpcore.versions.BEHAVIOURS); an architecture's "
                "behaviour is asked with its plugin's Behaviour row"
            )
        if row.name in self.options:
            return bool(self.options[row.name])
        return row.present_in(self)

    @property
    def label(self) -> str:
        return f"{self.version[0]}.{self.version[1]}"

    @property
    def release_label(self) -> str:
        """``6.12.117`` when the stable number is known, else :attr:`label`."""
        return self.label if self.stable is None else f"{self.label}.{self.stable}"

    @property
    def ksym_name_len(self) -> int:
        return 512 if self.has("ksym_name_len_512") else 128

    @property
    def layout_style(self) -> str:
        return "memory" if self.has("module_memory") else "legacy"

    @property
    def early_vmlinux_klp(self) -> bool:
        """vmlinux-specific klp relocations are applied at module load (5.8+)."""
        return self.has("early_vmlinux_klp")

    @property
    def relocates_percpu(self) -> bool:
        """``apply_relocations`` relocates the ``.data..percpu`` section (6.16+;
        ``options["relocate_percpu"]`` or ``options["relocates_percpu"]`` override)."""
        if "relocate_percpu" in self.options:
            return bool(self.options["relocate_percpu"])
        return self.has("relocates_percpu")

    @property
    def klp_vmlinux_symbol_check(self) -> bool:
        """Module-specific klp sections may not reference vmlinux symbols (5.8+)."""
        return self.has("klp_vmlinux_symbol_check")

    @property
    def beyond_newest(self) -> bool:
        """Newer than the newest release klpcore was checked against (its rules are assumed)."""
        return self.version > NEWEST

    @property
    def messages_with_index(self) -> bool:
        """Relocation error messages carry the section and entry index (6.19)."""
        return self.has("reloc_messages_sec_idx")


@dataclass(frozen=True)
class Setting:
    """A build fact of the target kernel and where klpcore got it."""

    name: str
    value: Any
    #: "config" (the user's --config), "arch default" (the architecture's common
    #: distribution setting), "core default", or "option" (-O / KernelTarget field)
    source: str

    def describe(self) -> str:
        return f"{self.name}={self.value} ({self.source})"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "source": self.source}


def config_setting(hooks: ArchHooks | None, kernel: KernelTarget, name: str) -> Setting:
    """``CONFIG_<name>`` for ``kernel``: from its config (an option absent
    from a ``.config`` is not set), else the arch's distribution default, else
    the core's default (``"n"`` when unknown)."""
    if kernel.config is not None:
        value = kernel.config.get(name)
        return Setting(name, "n" if value is None else value, "config")
    if hooks is not None:
        answer = hooks.klp_arch_config_default(name=name, kernel=kernel)  # type: ignore[attr-defined]
        if answer is not None:
            return Setting(name, str(answer), "arch default")
    return Setting(name, CORE_CONFIG_DEFAULTS.get(name, "n"), "core default")


def config_enabled(hooks: ArchHooks | None, kernel: KernelTarget, name: str) -> bool:
    return config_setting(hooks, kernel, name).value in ("y", "m")


def bool_setting(hooks: ArchHooks | None, kernel: KernelTarget, name: str, override: bool | None) -> Setting:
    """A yes/no option: ``override`` (a :class:`KernelTarget` field) when set, else :func:`config_setting`."""
    if override is not None:
        return Setting(name, "y" if override else "n", "option")
    return config_setting(hooks, kernel, name)


def page_size_setting(hooks: ArchHooks | None, kernel: KernelTarget) -> Setting:
    """``PAGE_SIZE`` of the target: the arch hook (from the config or its
    distribution default), else 4096."""
    if "page_size" in kernel.options:
        size = int(kernel.options["page_size"])
        if size < 1024 or size > 1 << 20 or size & (size - 1):
            raise InputError(
                f"-O page_size={size}: a page size is a power of two from 1 KiB to 1 MiB (4096, 65536, ...)"
            )
        return Setting("PAGE_SIZE", size, "option")
    if hooks is not None:
        answer = hooks.klp_arch_page_size(kernel=kernel)  # type: ignore[attr-defined]
        if answer is not None:
            return Setting("PAGE_SIZE", int(answer), "config" if kernel.config is not None else "arch default")
    return Setting("PAGE_SIZE", CORE_PAGE_SIZE, "core default")
