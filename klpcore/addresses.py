"""One validated parser for the addresses users and files give klpcore.

Every address klpcore accepts — ``--base``, ``mod.ko@ADDR``, the address
fields of ``System.map`` and kallsyms, address-valued ``-O`` options — goes
through :func:`parse_address` (text) or :func:`check_address` (a number), so
that a negative value, one of 2^64 or more, or a load address the kernel could
never hand out (not page aligned) is refused with one clear
:class:`AddressError` instead of reaching numpy or the layout code.
"""

from __future__ import annotations

import re

from . import constants as C
from .errors import InputError

ADDRESS_MAX = (1 << 64) - 1

_NUMBER = re.compile(r"^(0[xX][0-9a-fA-F]+|0|[1-9][0-9]*)$")


class AddressError(InputError):
    """An address is not a number, out of the 64-bit range, or misaligned."""


def check_address(value: int, *, what: str, page_aligned: bool = False, page_size: int = C.PAGE_SIZE) -> int:
    """``value`` if it is a valid 64-bit address for ``what``, else :class:`AddressError`."""
    if value < 0 or value > ADDRESS_MAX:
        shown = f"-{-value:#x}" if value < 0 else f"{value:#x}"
        raise AddressError(f"{what}: {shown} is outside the 64-bit address range 0x0..{ADDRESS_MAX:#x}")
    if page_aligned and value % page_size:
        raise AddressError(
            f"{what}: {value:#x} is not page aligned ({page_size:#x}); module memory starts on a page, "
            f"e.g. {value & ~(page_size - 1):#x}"
        )
    return value


def parse_address(text: str, *, what: str, page_aligned: bool = False, page_size: int = C.PAGE_SIZE) -> int:
    """Parse ``0x``-prefixed hex or decimal ``text`` as a 64-bit address.

    A leading zero without ``0x`` (``0123``) is refused as ambiguous, as are
    signs, underscores and anything else :func:`int` would take but an address
    cannot be.
    """
    s = text.strip()
    if s.startswith("-") and _NUMBER.match(s[1:]):
        value = -int(s[1:], 0)
        return check_address(value, what=what, page_aligned=page_aligned, page_size=page_size)
    if not _NUMBER.match(s):
        hint = " (a leading 0 is ambiguous: write 0x... for hex)" if re.fullmatch(r"0[0-9]+", s) else ""
        raise AddressError(f"{what}: {text!r} is not an address; expected 0x-prefixed hex or decimal{hint}")
    return check_address(int(s, 0), what=what, page_aligned=page_aligned, page_size=page_size)


def parse_hex_field(text: str, *, what: str) -> int:
    """A bare hex address field of a symbol file (``ffffffff81000000``)."""
    if not text or len(text) > 16 or not all(c in "0123456789abcdefABCDEF" for c in text):
        raise AddressError(f"{what}: {text[:40]!r} is not a 64-bit hex address")
    return int(text, 16)
