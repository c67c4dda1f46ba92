"""Why a Kafka client could not connect, when the reason is TLS or SASL.

kafka-python retries a failed TLS handshake until its bootstrap timeout and then says only
"Unable to bootstrap". When that happens, this probe repeats the handshake with the standard
library, with the same CA, client certificate and host-name check, and names the cause: a
certificate the configured CA did not sign, a host name the certificate does not hold, a TLS
client at a plaintext listener, a plaintext client at a TLS listener. A refused SASL password is
is dropped by the broker without a word kafka-python passes on: the probe then runs the SASL
exchange itself (SaslHandshake, SaslAuthenticate with kafka-python's own mechanisms) and reads
the broker's error message.
"""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import Mapping
from typing import Any

from kafka.errors import KafkaError, SaslAuthenticationFailedError, UnsupportedSaslMechanismError
from kafka.net.sasl import get_sasl_mechanism

from replicator.errors import AuthenticationFailed, ReplicatorError, TLSFailed

_TLS = ("SSL", "SASL_SSL")


def servers(bootstrap: str) -> list[tuple[str, int]]:
    out = []
    for item in bootstrap.split(","):
        host, _, port = item.strip().rpartition(":")
        if host and port.isdigit():
            out.append((host.strip("[]"), int(port)))
    return out


def security_error(
    exc: KafkaError, bootstrap: str, security: Mapping[str, Any]
) -> ReplicatorError | None:
    """The TLS or SASL problem behind a failed connection (None: not one of those)."""
    protocol = str(security.get("security_protocol", "PLAINTEXT"))
    if isinstance(exc, SaslAuthenticationFailedError):
        user = security.get("sasl_plain_username", "")
        return AuthenticationFailed(
            f"Kafka at {bootstrap} refused the SASL credentials of user {user!r} "
            f"({security.get('sasl_mechanism')})",
            hint="check kafka.sasl_username and kafka.sasl_password (or sasl_password_file), "
            "and that kafka.sasl_mechanism is one the broker enables",
        )
    if isinstance(exc, UnsupportedSaslMechanismError):
        return AuthenticationFailed(
            f"Kafka at {bootstrap} does not enable SASL mechanism {security.get('sasl_mechanism')}",
            hint="set kafka.sasl_mechanism to one the broker's listener enables",
        )
    for host, port in servers(bootstrap):
        try:
            sock = socket.create_connection((host, port), timeout=5)
        except OSError:
            continue
        with sock:
            problem = (
                _tls_problem(sock, host, port, security)
                if protocol in _TLS
                else _plaintext_at_tls(sock, host, port, protocol)
            )
        if problem is None and protocol.startswith("SASL_"):
            problem = _sasl_problem(host, port, security)
        return problem
    return None


def _sasl_problem(host: str, port: int, security: Mapping[str, Any]) -> ReplicatorError | None:
    """Authenticate once by hand; the broker's refusal, if any, as an error with its fix."""
    mechanism = str(security.get("sasl_mechanism"))
    user = security.get("sasl_plain_username", "")
    where = f"Kafka at {host}:{port}"
    try:
        with socket.create_connection((host, port), timeout=5) as raw:
            sock: socket.socket = raw
            if security.get("security_protocol") == "SASL_SSL":
                ctx = _context(security)
                sock = ctx.wrap_socket(raw, server_hostname=host)
            error, mechanisms = _handshake(sock, mechanism)
            if error:
                return AuthenticationFailed(
                    f"{where} does not enable SASL mechanism {mechanism} "
                    f"(it offers {', '.join(mechanisms) or 'none'})",
                    hint="set kafka.sasl_mechanism to one of those",
                )
            client = get_sasl_mechanism(mechanism)(**security)
            while not client.is_done():
                error, message, reply = _authenticate(sock, client.auth_bytes())
                if error:
                    return AuthenticationFailed(
                        f"{where} refused the SASL credentials of user {user!r} ({mechanism}): "
                        f"{message}",
                        hint="check kafka.sasl_username and kafka.sasl_password "
                        "(or sasl_password_file)",
                    )
                client.receive(reply)
    except (OSError, ssl.SSLError, struct.error, ValueError, KafkaError):
        return None  # no clearer answer than the client's own
    return None


def _context(security: Mapping[str, Any]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=security.get("ssl_cafile"))
    ctx.check_hostname = bool(security.get("ssl_check_hostname", True))
    if security.get("ssl_certfile"):
        ctx.load_cert_chain(
            security["ssl_certfile"], security.get("ssl_keyfile"), security.get("ssl_password")
        )
    return ctx


def _request(sock: socket.socket, api_key: int, version: int, body: bytes) -> bytes:
    client_id = b"replicator-probe"
    header = struct.pack(">hhih", api_key, version, 1, len(client_id)) + client_id
    sock.sendall(struct.pack(">i", len(header) + len(body)) + header + body)
    size = struct.unpack(">i", _read(sock, 4))[0]
    return _read(sock, size)[4:]  # past the correlation id


def _read(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise OSError("connection closed")
        out += chunk
    return out


def _string(data: bytes, at: int) -> tuple[str, int]:
    n = struct.unpack_from(">h", data, at)[0]
    if n < 0:
        return "", at + 2
    return data[at + 2 : at + 2 + n].decode(), at + 2 + n


def _handshake(sock: socket.socket, mechanism: str) -> tuple[int, list[str]]:
    """SaslHandshake v1: (error code, the mechanisms the listener enables)."""
    name = mechanism.encode()
    data = _request(sock, 17, 1, struct.pack(">h", len(name)) + name)
    error, count = struct.unpack_from(">hi", data, 0)
    at, names = 6, []
    for _ in range(max(count, 0)):
        item, at = _string(data, at)
        names.append(item)
    return error, names


def _authenticate(sock: socket.socket, auth: bytes) -> tuple[int, str, bytes]:
    """SaslAuthenticate v1: (error code, error message, the server's bytes)."""
    data = _request(sock, 36, 1, struct.pack(">i", len(auth)) + auth)
    error = struct.unpack_from(">h", data, 0)[0]
    message, at = _string(data, 2)
    n = struct.unpack_from(">i", data, at)[0]
    return error, message, data[at + 4 : at + 4 + max(n, 0)]


def _tls_problem(
    sock: socket.socket, host: str, port: int, security: Mapping[str, Any]
) -> ReplicatorError | None:
    try:
        ctx = _context(security)
    except (OSError, ssl.SSLError) as exc:
        return TLSFailed(
            f"Kafka TLS settings cannot be loaded: {_reason(exc)}",
            hint="check kafka.ssl_cafile, ssl_certfile, ssl_keyfile and ssl_key_password",
        )
    where = f"Kafka at {host}:{port}"
    try:
        with ctx.wrap_socket(sock, server_hostname=host) as tls:
            tls.settimeout(2)
            # A broker that wants a client certificate says so after the handshake (TLS 1.3).
            tls.sendall(b"\x00\x00\x00\x00")
            tls.recv(1)
    except ssl.SSLCertVerificationError as exc:
        return TLSFailed(
            f"{where}: the broker's certificate is not trusted ({exc.verify_message})",
            hint="set kafka.ssl_cafile to the CA that signed the brokers' certificates; "
            "bootstrap_servers must name a host the certificate holds",
        )
    except ssl.SSLError as exc:
        reason = _reason(exc)
        if "CERTIFICATE_REQUIRED" in reason.upper() or "BAD_CERTIFICATE" in reason.upper():
            if not security.get("ssl_certfile"):
                return TLSFailed(
                    f"{where} requires a client certificate (mutual TLS)",
                    hint="set kafka.ssl_certfile and kafka.ssl_keyfile",
                )
            return TLSFailed(
                f"{where} refused the client certificate ({reason})",
                hint="kafka.ssl_certfile must be signed by a CA the brokers trust, and valid",
            )
        if any(s in reason.upper() for s in ("WRONG_VERSION", "RECORD_LAYER", "PACKET_LENGTH")):
            return TLSFailed(
                f"{where} does not speak TLS",
                hint="this is a PLAINTEXT or SASL_PLAINTEXT listener: set "
                "kafka.security_protocol to match it, or use the TLS listener's port",
            )
        return TLSFailed(f"{where}: TLS handshake failed ({reason})")
    except OSError:
        return None  # the handshake worked; the broker closed on our probe bytes
    return None


def _plaintext_at_tls(
    sock: socket.socket, host: str, port: int, protocol: str
) -> ReplicatorError | None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with ctx.wrap_socket(sock, server_hostname=host):
            pass
    except (OSError, ssl.SSLError):
        return None
    return TLSFailed(
        f"Kafka at {host}:{port} is a TLS listener and kafka.security_protocol is {protocol}",
        hint="set kafka.security_protocol = SASL_SSL (or SSL) and kafka.ssl_cafile to the CA "
        "that signed the brokers' certificates",
    )


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None)
    return str(reason or type(exc).__name__)
