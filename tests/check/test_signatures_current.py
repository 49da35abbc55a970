"""Module signatures as Debian's 6.12 and 7.2 kernels sign them (CONFIG_MODULE_SIG=y, not forced,
sha256): ``struct module_signature`` (id_type 2, PKEY_ID_PKCS7) + the marker after a PKCS#7
SignedData, the same layout in both releases.  check reads the signer (the SignerInfo's sid) and
compares it with the signer of the target's own modules; it does not verify the signature's
cryptography (the kernel's keyring is not in a target)."""

from __future__ import annotations

from pathlib import Path

import pytest

from klpcore.check import Target, check_pair
from klpcore.check.kmsg import kmsg
from klpcore.check.modinfo import SIGNATURE_MARKER, module_signer

CURRENT = Path(__file__).resolve().parent / "fixtures" / "kernel" / "current"
RECORDINGS = sorted(d.name for d in CURRENT.glob("amd64-*"))
UNSIGNED_LINE = "module verification failed: signature and/or required key missing - tainting kernel"


def test_both_releases_are_recorded() -> None:
    assert RECORDINGS == ["amd64-6.12.117+deb13", "amd64-7.2.13+deb14"]


@pytest.mark.parametrize("rec", RECORDINGS)
def test_debian_signed_module_is_recognised(rec: str) -> None:
    pytest.importorskip("klpcore_x86_64")
    target = Target(CURRENT / rec / "target")
    raw = (CURRENT / rec / "ppp_synctty.ko").read_bytes()
    assert raw.endswith(SIGNATURE_MARKER)
    signer = module_signer(raw)
    assert signer is not None and signer == target.tree_signer
    r = check_pair(str(CURRENT / rec / "ppp_synctty.ko"), target)
    sig = [(f.severity, f.message) for f in r.findings if f.check == "signature"]
    assert sig == [("info", "signed with the key that signed the target's own modules")]
    assert r.verdict == "loads"


@pytest.mark.parametrize("rec", RECORDINGS)
def test_another_key_taints_as_unsigned_does(rec: str, tmp_path: Path) -> None:
    """The same module with its signer's serial changed: the kernel finds no key (-ENOKEY) and, not
    forced, taints with the unsigned module's line; check says so (and it is not the target's key)."""
    pytest.importorskip("klpcore_x86_64")
    target = Target(CURRENT / rec / "target")
    raw = bytearray((CURRENT / rec / "ppp_synctty.ko").read_bytes())
    signer = module_signer(bytes(raw))
    assert signer is not None
    at = bytes(raw).rfind(signer)
    raw[at + len(signer) - 1] ^= 0xFF
    other = tmp_path / "ppp_synctty.ko"
    other.write_bytes(bytes(raw))
    assert module_signer(bytes(raw)) not in (None, target.tree_signer)
    r = check_pair(str(other), target)
    sig = [f for f in r.findings if f.check == "signature"]
    assert [f.severity for f in sig] == ["warning"]
    assert "key other than" in sig[0].message
    assert sig[0].kernel_message == kmsg("taint_unsigned", (7, 2), name="ppp_synctty")
    assert sig[0].kernel_message is not None and sig[0].kernel_message.endswith(UNSIGNED_LINE)


def test_a_signature_of_another_id_type_is_not_read() -> None:
    raw = bytearray((CURRENT / RECORDINGS[0] / "ppp_synctty.ko").read_bytes())
    tail = len(raw) - len(SIGNATURE_MARKER)
    raw[tail - 10] = 1  # id_type PKEY_ID_X509, which module_sig_check rejects
    assert module_signer(bytes(raw)) is None
