"""The validity dates of a PEM certificate, read from its DER encoding (Python's ssl has no public API for it).

Only the path to `tbsCertificate.validity` is walked (RFC 5280 §4.1): the outer SEQUENCE,
the TBSCertificate SEQUENCE, an optional [0] version, the serial number, the signature
algorithm, the issuer, then the Validity SEQUENCE of two times.
"""

from __future__ import annotations

import re
import ssl
from datetime import datetime, timezone

_PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.DOTALL)
_SEQUENCE, _VERSION_TAG, _UTC_TIME, _GENERALIZED_TIME = 0x30, 0xA0, 0x17, 0x18


def _element(der: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER element at offset `at`."""
    tag, first = der[at], der[at + 1]
    at += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if not 1 <= count <= 4:
            raise ValueError("unsupported DER length")
        length = int.from_bytes(der[at : at + count], "big")
        at += count
    if at + length > len(der):
        raise ValueError("truncated DER")
    return tag, at, at + length


def _time(tag: int, text: bytes) -> datetime:
    value = text.decode("ascii")
    if tag == _UTC_TIME:  # YYMMDDHHMMSSZ; RFC 5280: years 50-99 are 19xx
        year = int(value[:2])
        value = f"{1900 + year if year >= 50 else 2000 + year}{value[2:]}"
    elif tag != _GENERALIZED_TIME:
        raise ValueError("not a time")
    return datetime.strptime(value, "%Y%m%d%H%M%SZ").replace(tzinfo=timezone.utc)


def certificate_validity(pem: str) -> tuple[datetime, datetime] | None:
    """(notBefore, notAfter) of the first certificate in `pem`; None when there is none or it does not parse."""
    match = _PEM_CERT.search(pem)
    if match is None:
        return None
    try:
        der = ssl.PEM_cert_to_DER_cert(match.group(0))
        tag, start, _ = _element(der, 0)  # Certificate
        tag_tbs, at, _ = _element(der, start)  # TBSCertificate
        if tag != _SEQUENCE or tag_tbs != _SEQUENCE:
            return None
        if der[at] == _VERSION_TAG:
            at = _element(der, at)[2]
        for _ in range(3):  # serialNumber, signature, issuer
            at = _element(der, at)[2]
        tag, at, _ = _element(der, at)  # Validity
        if tag != _SEQUENCE:
            return None
        before_tag, before_start, before_end = _element(der, at)
        after_tag, after_start, after_end = _element(der, before_end)
        return (
            _time(before_tag, der[before_start:before_end]),
            _time(after_tag, der[after_start:after_end]),
        )
    except (ValueError, IndexError, UnicodeDecodeError):
        return None
