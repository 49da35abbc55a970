"""Module versions (CONFIG_MODVERSIONS): ``check_version`` for each CRC, the ``module_layout`` CRC
(``check_modstruct_version``) and ``check_export_symbol_versions``."""

from __future__ import annotations

from .distribution import rule_source
from .pair import REFUSED, PairBase, Stop


class ModversionSteps(PairBase):
    """The modversions steps of :class:`~klpcore.check.steps.PairCheck`."""

    @property
    def modversions(self) -> bool | None:
        """Whether the target exports carry CRCs (CONFIG_MODVERSIONS)."""
        v = self.target.config_bool("CONFIG_MODVERSIONS")
        if v is not None:
            return v
        sv = self.target.symvers
        if sv is not None:
            return any(e.crc for e in sv.values())
        return None

    def check_version(self, check: str, sym: str, crc: int | None) -> bool:
        """``check_version``; False means the symbol is refused (-EINVAL)."""
        info = self.info
        assert info is not None
        if crc is None:
            return True
        if info.ext_versions is not None and self.kernel_target().has("extended_modversions"):
            got = info.ext_versions.get(sym)
            if got is None:
                self.add(
                    check,
                    "warning",
                    f"no extended symbol version for {sym} (accepted)",
                    self.msg("no_ext_version", name=info.name, sym=sym),
                )
                return True
        else:
            if info.versions is None:
                return self.force_load(check, sym, "module has no __versions section")
            got = info.versions.get(sym)
            if got is None and self.distribution_rule("missing_crc_refused"):
                self.refuse(
                    check,
                    f"module's __versions has no entry for {sym}: refused by "
                    + rule_source(self.target.distribution, "missing_crc_refused"),
                    self.msg("no_version", name=info.name, sym=sym),
                    symbol=sym,
                )
                return False
            if got is None:
                self.add(
                    check,
                    "warning",
                    f"module's __versions has no entry for {sym} (accepted; printed once)",
                    self.msg("no_version", name=info.name, sym=sym),
                )
                return True
        if got == crc:
            return True
        self.refuse(
            check,
            f"CRC of {sym}: module {got:#010x}, target {crc:#010x}",
            self.msg("disagrees", name=info.name, sym=sym),
            symbol=sym,
        )
        return False

    def step_modstruct(self) -> None:
        mv = self.modversions
        if mv is False:
            return
        sv = self.target.symvers
        if mv is None or sv is None:
            self.not_checked("modversions", "module_layout CRC needs the target's Module.symvers and config")
            return
        entry = sv.get("module_layout")
        if entry is None:
            self.add("modversions", "info", "target exports no module_layout; check skipped as by kernels without it")
            return
        if not self.check_version("modversions", "module_layout", entry.crc):
            if not self.findings or self.findings[-1].outcome != REFUSED:
                self.refuse(
                    "modversions", "module has no __versions and the target has no CONFIG_MODULE_FORCE_LOAD", None
                )
            raise Stop

    def step_export_versions(self) -> None:
        info = self.info
        assert info is not None
        if not info.exports or not self.modversions:
            return
        plain = [e for e in info.exports if not e.gpl]
        gpl = [e for e in info.exports if e.gpl]
        missing = (plain and not info.has_kcrctab) or (gpl and not info.has_gpl_kcrctab)
        if missing and not self.force_load(
            "export-versions", "no versions for exported symbols", "module exports symbols without CRCs"
        ):
            self.refuse("export-versions", "exports without CRCs and no CONFIG_MODULE_FORCE_LOAD")
            raise Stop
