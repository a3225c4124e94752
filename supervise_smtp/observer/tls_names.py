"""Names of TLS wire numbers, spelled as OpenSSL and Python's ``ssl`` spell them.

Protocol versions, cipher suites, alert levels and descriptions: the TLS
record observer (``tls.py``) logs names, not numbers, and falls back to a
greppable spelling of a number it does not know.  Tables only, no parsing.
"""

from __future__ import annotations

__all__ = ["alert_name", "cipher_name", "level_name", "version_name"]

_VERSIONS = {
    0x0300: "SSLv3",
    0x0301: "TLSv1",
    0x0302: "TLSv1.1",
    0x0303: "TLSv1.2",
    0x0304: "TLSv1.3",
}

# Names as OpenSSL (and so Python's SSLSocket.cipher()) reports them.
_CIPHERS = {
    0x1301: "TLS_AES_128_GCM_SHA256",
    0x1302: "TLS_AES_256_GCM_SHA384",
    0x1303: "TLS_CHACHA20_POLY1305_SHA256",
    0x1304: "TLS_AES_128_CCM_SHA256",
    0x1305: "TLS_AES_128_CCM_8_SHA256",
    0xC02B: "ECDHE-ECDSA-AES128-GCM-SHA256",
    0xC02C: "ECDHE-ECDSA-AES256-GCM-SHA384",
    0xC02F: "ECDHE-RSA-AES128-GCM-SHA256",
    0xC030: "ECDHE-RSA-AES256-GCM-SHA384",
    0xCCA8: "ECDHE-RSA-CHACHA20-POLY1305",
    0xCCA9: "ECDHE-ECDSA-CHACHA20-POLY1305",
    0xCCAA: "DHE-RSA-CHACHA20-POLY1305",
    0x009E: "DHE-RSA-AES128-GCM-SHA256",
    0x009F: "DHE-RSA-AES256-GCM-SHA384",
    0xC023: "ECDHE-ECDSA-AES128-SHA256",
    0xC024: "ECDHE-ECDSA-AES256-SHA384",
    0xC027: "ECDHE-RSA-AES128-SHA256",
    0xC028: "ECDHE-RSA-AES256-SHA384",
    0xC009: "ECDHE-ECDSA-AES128-SHA",
    0xC00A: "ECDHE-ECDSA-AES256-SHA",
    0xC013: "ECDHE-RSA-AES128-SHA",
    0xC014: "ECDHE-RSA-AES256-SHA",
    0x0033: "DHE-RSA-AES128-SHA",
    0x0039: "DHE-RSA-AES256-SHA",
    0x0067: "DHE-RSA-AES128-SHA256",
    0x006B: "DHE-RSA-AES256-SHA256",
    0x009C: "AES128-GCM-SHA256",
    0x009D: "AES256-GCM-SHA384",
    0x002F: "AES128-SHA",
    0x0035: "AES256-SHA",
    0x003C: "AES128-SHA256",
    0x003D: "AES256-SHA256",
    0x000A: "DES-CBC3-SHA",
    0xC012: "ECDHE-RSA-DES-CBC3-SHA",
    0x0005: "RC4-SHA",
    0x0004: "RC4-MD5",
}

_LEVELS = {1: "warning", 2: "fatal"}

# RFC 8446 6 and the TLS Alert registry, including descriptions retired
# since TLS 1.0 that old MTAs still send.
_ALERTS = {
    0: "close_notify",
    10: "unexpected_message",
    20: "bad_record_mac",
    21: "decryption_failed",
    22: "record_overflow",
    30: "decompression_failure",
    40: "handshake_failure",
    41: "no_certificate",
    42: "bad_certificate",
    43: "unsupported_certificate",
    44: "certificate_revoked",
    45: "certificate_expired",
    46: "certificate_unknown",
    47: "illegal_parameter",
    48: "unknown_ca",
    49: "access_denied",
    50: "decode_error",
    51: "decrypt_error",
    60: "export_restriction",
    70: "protocol_version",
    71: "insufficient_security",
    80: "internal_error",
    86: "inappropriate_fallback",
    90: "user_canceled",
    100: "no_renegotiation",
    109: "missing_extension",
    110: "unsupported_extension",
    111: "certificate_unobtainable",
    112: "unrecognized_name",
    113: "bad_certificate_status_response",
    114: "bad_certificate_hash_value",
    115: "unknown_psk_identity",
    116: "certificate_required",
    120: "no_application_protocol",
    121: "ech_required",
}


def version_name(version: int) -> str:
    """Spell a wire version the way ``SSLSocket.version()`` does, so logs match."""
    return _VERSIONS.get(version) or f"0x{version:04X}"


def cipher_name(cipher_id: int) -> str:
    """Name a suite as OpenSSL does; unknown ones stay greppable as hex."""
    return _CIPHERS.get(cipher_id) or f"0x{cipher_id:04X}"


def alert_name(code: int) -> str:
    """Name an alert description; unknown codes keep their number in the name."""
    return _ALERTS.get(code) or f"unknown_{code}"


def level_name(level: int) -> str:
    """Name an alert level; unknown ones keep their number in the name."""
    return _LEVELS.get(level) or f"unknown_{level}"
