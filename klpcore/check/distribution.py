"""Load rules a distribution's kernel patches change, by distribution (the target's guess or
``--distribution``)."""

from __future__ import annotations

#: load rules a distribution's kernel patches change: distribution -> {rule: (value, source)}
DISTRIBUTION_RULES: dict[str, dict[str, tuple[bool, str]]] = {
    "debian": {
        # upstream check_version warns once and accepts an import without a __versions entry;
        # Debian (since 4.9) prints the warning and refuses it (seen on 6.1.0-50: kc_noentry, kc_nolayout)
        "missing_crc_refused": (True, "Debian's patch 'module: Disable matching missing version CRC' (2016)"),
    },
}


def distribution_rule(distribution: str | None, rule: str) -> bool:
    """Whether ``distribution``'s kernels have ``rule`` (``None``: upstream, none)."""
    return bool(distribution and DISTRIBUTION_RULES.get(distribution, {}).get(rule, (False, ""))[0])


def rule_source(distribution: str | None, rule: str) -> str:
    """The distribution patch that brings ``rule``, for messages (only when the rule applies)."""
    return DISTRIBUTION_RULES[distribution or ""][rule][1]
