"""What a module declares about itself: ``.modinfo``, ``__versions``, exports.

Read from the module's ELF with the core's :class:`~klpcore.elf.ElfModule`;
nothing here applies relocations.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .. import constants as C
from ..elf import ElfModule
from ..modtree import module_exports

#: ``struct modversion_info``: ``unsigned long crc; char name[MODULE_NAME_LEN]`` (64-bit)
MODVERSION_SIZE = 64
MODULE_NAME_LEN = 56
SIGNATURE_MARKER = b"~Module signature appended~\n"
GPL_COMPATIBLE = ("GPL", "GPL v2", "GPL and additional rights", "Dual BSD/GPL", "Dual MIT/GPL", "Dual MPL/GPL")


def license_is_gpl_compatible(text: str) -> bool:
    """``license_is_gpl_compatible`` (include/linux/license.h)."""
    return text in GPL_COMPATIBLE


@dataclass
class Export:
    name: str
    gpl: bool


@dataclass
class ModInfo:
    """The facts the load steps need about one module file."""

    path: str
    elf: ElfModule
    name: str
    modinfo: dict[str, list[str]]
    #: ``__versions`` entries (symbol -> CRC); ``None`` when the section is absent
    versions: dict[str, int] | None
    #: ``__version_ext_names``/``__version_ext_crcs``; ``None`` when absent
    ext_versions: dict[str, int] | None
    exports: list[Export] = field(default_factory=list)
    has_kcrctab: bool = False
    has_gpl_kcrctab: bool = False
    has_this_module: bool = True
    signed: bool = False
    #: the signature's signer (the DER of its SignerInfo's sid: issuer and serial, or key id)
    signer: bytes | None = None

    def first(self, key: str) -> str | None:
        values = self.modinfo.get(key)
        return values[0] if values else None

    @property
    def vermagic(self) -> str | None:
        return self.first("vermagic")

    @property
    def license(self) -> str | None:
        return self.first("license")

    @property
    def depends(self) -> list[str]:
        value = self.first("depends") or ""
        return [d for d in value.split(",") if d]

    @property
    def import_ns(self) -> list[str]:
        return list(self.modinfo.get("import_ns", []))

    @property
    def livepatch(self) -> bool:
        return "livepatch" in self.modinfo

    @property
    def intree(self) -> bool:
        return "intree" in self.modinfo

    @property
    def gpl_compatible(self) -> bool:
        return license_is_gpl_compatible(self.license or "unspecified")


def read_modinfo(elf: ElfModule, path: str, raw: bytes | None = None) -> ModInfo:
    """Collect ``.modinfo``, ``__versions`` and exports of ``elf``."""
    versions = _versions(elf)
    ext = _ext_versions(elf)
    exports = [Export(name, gpl) for name, gpl in module_exports(elf)]
    data = raw if raw is not None else elf.data
    modinfo = elf.modinfo
    name = (modinfo.get("name") or [""])[-1] or elf.name
    return ModInfo(
        path=path,
        elf=elf,
        name=name,
        modinfo=modinfo,
        versions=versions,
        ext_versions=ext,
        exports=exports,
        has_kcrctab=elf.section_by_name("__kcrctab") is not None,
        has_gpl_kcrctab=elf.section_by_name("__kcrctab_gpl") is not None,
        has_this_module=elf.section_by_name(".gnu.linkonce.this_module") is not None,
        signed=data.endswith(SIGNATURE_MARKER),
        signer=module_signer(data),
    )


def _der(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of contents, end of contents) of the DER element at ``pos``."""
    tag = data[pos]
    n = data[pos + 1]
    pos += 2
    if n & 0x80:
        k = n & 0x7F
        if k == 0 or k > 4:
            raise ValueError("DER length")
        n = int.from_bytes(data[pos : pos + k], "big")
        pos += k
    if pos + n > len(data):
        raise ValueError("DER overrun")
    return tag, pos, pos + n


def module_signer(data: bytes) -> bytes | None:
    """Who signed a module: ``struct module_signature`` (12 bytes, ``sig_len`` big-endian at 8) and
    the marker end the file; the PKCS#7 SignedData before them holds one SignerInfo whose ``sid``
    (IssuerAndSerialNumber or SubjectKeyIdentifier) names the key.  ``None``: unsigned or unreadable."""
    if not data.endswith(SIGNATURE_MARKER) or len(data) < 40:
        return None
    tail = len(data) - len(SIGNATURE_MARKER)
    sig_len = int.from_bytes(data[tail - 4 : tail], "big")
    if data[tail - 10] != 2 or sig_len <= 0 or sig_len > tail - 12:  # id_type 2: PKEY_ID_PKCS7
        return None
    blob = data[tail - 12 - sig_len : tail - 12]
    try:
        _, c, _ = _der(blob, 0)  # ContentInfo
        _, c, _ = _der(blob, _der(blob, c)[2])  # skip contentType OID, enter [0]
        tag, pos, end = _der(blob, c)  # SignedData
        pos = _der(blob, pos)[2]  # version
        pos = _der(blob, pos)[2]  # digestAlgorithms
        pos = _der(blob, pos)[2]  # encapContentInfo
        while pos < end:
            tag, c, e = _der(blob, pos)
            if tag == 0x31:  # signerInfos
                _, si, _ = _der(blob, c)  # first SignerInfo
                sid = _der(blob, _der(blob, si)[2])  # after its version
                return blob[_der(blob, si)[2] : sid[2]]
            pos = e  # [0] certificates, [1] crls
    except (ValueError, IndexError):
        return None
    return None


def _versions(elf: ElfModule) -> dict[str, int] | None:
    sec = elf.section_by_name("__versions")
    if sec is None:
        return None
    data = elf.section_data(sec.index)
    fmt = elf.endian + "Q"
    out: dict[str, int] = {}
    for off in range(0, len(data) - MODVERSION_SIZE + 1, MODVERSION_SIZE):
        (crc,) = struct.unpack_from(fmt, data, off)
        raw = data[off + 8 : off + MODVERSION_SIZE]
        name = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
        out.setdefault(name, crc)  # check_version stops at the first entry of that name
    return out


def _ext_versions(elf: ElfModule) -> dict[str, int] | None:
    crcs = elf.section_by_name("__version_ext_crcs")
    names = elf.section_by_name("__version_ext_names")
    if crcs is None or names is None:
        return None
    cdata = elf.section_data(crcs.index)
    ndata = elf.section_data(names.index)
    values = struct.unpack_from(f"{elf.endian}{len(cdata) // 4}I", cdata)
    out: dict[str, int] = {}
    for name, crc in zip(ndata.split(b"\0"), values, strict=False):
        out.setdefault(name.decode("utf-8", "replace"), crc)
    return out


def undefined_symbols(elf: ElfModule) -> list[tuple[int, str, bool]]:
    """``(index, name, weak)`` of every ``SHN_UNDEF`` symbol, in symtab order."""
    shndx = elf.symbols["st_shndx"].tolist()
    info = elf.symbols["st_info"].tolist()
    out = []
    for i in range(1, elf.nsyms):
        if shndx[i] == C.SHN_UNDEF:
            out.append((i, elf.symbol_names[i], (info[i] >> 4) == C.STB_WEAK))
    return out
