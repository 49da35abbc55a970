"""What every step of one module-on-one-target check shares: the findings it records, the outcome
constants, and the helpers that word and add them (:class:`PairBase`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import Diagnostic
from ..kernel import KernelTarget, parse_version
from ..modtree import module_kernel_name
from .distribution import distribution_rule
from .kmsg import Version, kmsg
from .modinfo import ModInfo
from .patches import PatchInfo
from .target import Target

REFUSED, PATCH_FAILS = "refused", "patch-fails"
ERR_NOENT, ERR_INVAL = -2, -22


@dataclass
class Finding:
    """One result of one check: an error (with the outcome it causes), a warning,
    or a check that could not be made."""

    check: str
    severity: str  # "error", "warning", "info", "not-checked"
    message: str
    kernel_message: str | None = None
    outcome: str | None = None  # REFUSED or PATCH_FAILS for errors
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "check": self.check,
            "severity": self.severity,
            "message": self.message,
            "kernel_message": self.kernel_message,
        }
        if self.outcome:
            out["outcome"] = self.outcome
        out.update(self.extra)
        return out


class Stop(Exception):
    """A step refused the module; the kernel goes no further."""


class PairBase:
    """One module file against one target: the state and helpers the steps share."""

    def __init__(self, target: Target, path: str, *, depth: int = 0, kernel_options: dict[str, Any] | None = None):
        self.target = target
        self.path = path
        self.depth = depth
        self.kernel_options = kernel_options or {}
        self.findings: list[Finding] = []
        self.info: ModInfo | None = None
        self.patch: PatchInfo | None = None
        self.patched: list[dict[str, Any]] = []
        rel = target.release
        self.version: Version = parse_version(rel) if rel and _is_version(rel) else (99, 0)
        self.version_known = rel is not None and _is_version(rel)
        self._taint_forced = False
        self._lockdep_off = False  # add_taint prints its line once, at the first such taint

    def add(
        self,
        check: str,
        severity: str,
        message: str,
        kernel: str | None = None,
        outcome: str | None = None,
        **extra: Any,
    ) -> Finding:
        f = Finding(check, severity, message, kernel, outcome, extra)
        self.findings.append(f)
        return f

    def refuse(self, check: str, message: str, kernel: str | None = None, **extra: Any) -> Finding:
        return self.add(check, "error", message, kernel, REFUSED, **extra)

    def not_checked(self, check: str, why: str) -> None:
        self.add(check, "not-checked", f"not checked: {why}")

    def msg(self, key: str, **fields: Any) -> str:
        return kmsg(key, self.version, **fields)

    def kernel_target(self) -> KernelTarget:
        """The target as the version table sees it (release, the config's livepatch/RWX/ftrace facts, ``-O``)."""
        lp = self.target.config_bool("CONFIG_LIVEPATCH")
        rwx = self.target.config_bool("CONFIG_STRICT_MODULE_RWX")
        options = dict(self.kernel_options)
        if self.target.config_bool("CONFIG_DYNAMIC_FTRACE") is False:
            options.setdefault("dynamic_ftrace", False)
        return KernelTarget(
            version=self.version if self.version_known else KernelTarget().version,
            strict_module_rwx=True if rwx is None else rwx,
            livepatch=True if lp is None else lp,
            options=options,
        )

    @property
    def name(self) -> str:
        return self.info.name if self.info else module_kernel_name(self.path)

    def force_load(self, check: str, reason: str, what: str) -> bool:
        """``try_to_force_load``: taint with CONFIG_MODULE_FORCE_LOAD, else refuse silently."""
        force = self.target.config_bool("CONFIG_MODULE_FORCE_LOAD")
        if force is None:
            self.not_checked(check, f"{what}; whether the kernel allows forced loads needs its config")
            return True
        if force:
            if not self._taint_forced:
                f = self.add(
                    check,
                    "warning",
                    f"{what}: loads with a taint (CONFIG_MODULE_FORCE_LOAD)",
                    self.msg("force_taint", name=self.name, reason=reason),
                )
                self.lockdep_taint(f)
                self._taint_forced = True
            return True
        return False

    def lockdep_taint(self, finding: Finding) -> None:
        """A taint that makes lockdep unreliable (forced load, proprietary module): the first one
        on a freshly booted kernel also prints the lockdep line."""
        if not self._lockdep_off:
            self._lockdep_off = True
            finding.extra["then"] = [*finding.extra.get("then", []), self.msg("lockdep_off")]

    def distribution_rule(self, rule: str) -> bool:
        """A load rule the target's distribution patched in (``--distribution`` overrides the guess)."""
        return distribution_rule(self.target.distribution, rule)

    def engine_errors(self, check: str, diags: list[Diagnostic], outcome: str, **extra: Any) -> None:
        """The engine's diagnostics as findings of ``check`` (the first 20, then a count)."""
        for d in diags[:20]:
            where = d.location()
            self.add(
                check, "error", f"{where}: {d.message}" if where else d.message, d.kernel_message, outcome, **extra
            )
        if len(diags) > 20:
            self.add(check, "error", f"... and {len(diags) - 20} more", None, outcome, **extra)


def _is_version(text: str) -> bool:
    try:
        parse_version(text)
    except ValueError:
        return False
    return True
