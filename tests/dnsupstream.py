"""A small, controllable upstream DNS server for tests: UDP + TCP (or DNS-over-TLS) on 127.0.0.x.

Runs in background threads with plain sockets and dnspython, so it works beside the Twisted
reactor of the test (and beside a ``twistd`` child process in end-to-end tests).  It only ever
binds and sends to loopback addresses.

Usage::

    up = DNSUpstream(host="127.0.0.1").start()      # ephemeral port, same for UDP and TCP
    up.add("example.com", "A", "192.0.2.1", ttl=300)
    up.add("example.com", "MX", "10 mail.example.com")
    up.set_soa("example.com", ttl=60, minimum=30)   # the SOA sent with NXDOMAIN / NODATA
    ...  forward to f"127.0.0.1:{up.port}" (or up.address) ...
    up.count("example.com", "A")                     # queries received for that question
    up.queries                                       # every query received (Received records)
    up.mode = "drop"                                 # black hole from now on
    up.delay = 0.2                                   # answer after 200 ms (without blocking others)
    up.stop()

Modes (``up.mode``):

- ``"answer"`` (default): records added with :meth:`add`; a known name with another type gets
  NODATA, an unknown name NXDOMAIN, both with the SOA in the authority section
  (``up.negative_soa = False`` leaves it out).  UDP answers larger than the client's EDNS size
  (512 without EDNS) come back truncated (TC set, no records); TCP answers are whole.
- ``"drop"``: read the query, never answer (a black-holed upstream).
- ``"servfail"``, ``"refused"``: that rcode, no records.
- ``"nxdomain"``: NXDOMAIN with the SOA for every name.
- ``"truncate"``: every UDP answer has TC set and no records; TCP answers normally.
- ``"spoof"``: before the real answer, send one with a wrong ID and one for a different
  question (a client must ignore both).
- ``"forward"``: relay each query over UDP to ``up.forward_to = (host, port)`` and return what
  comes back (SERVFAIL after ``up.forward_timeout``); used to build forwarding loops.

EDNS: every :class:`Received` records the query's AD bit and its EDNS options as
``(code, wire data)`` pairs.  ``up.shape = fn`` lets a test shape each answer: ``fn(query,
response)`` gets both dnspython messages before the response is encoded, and may add EDNS
options (``response.use_edns(0, options=[...])``), set flags (AD) or an extended rcode, or
answer per client subnet.  ``up.rewrite = fn`` goes further: ``fn(query, wire)`` returns the
bytes to send instead of the encoded answer (answers no encoder would write: malformed names).

DNS-over-TLS: ``DNSUpstream(tls=make_tls_files(tmpdir, dns_names=["dns.test"]))`` serves TLS on
the TCP port (UDP stays plain).  :func:`make_tls_files` writes a throw-away CA and a leaf
certificate for the given names/IPs with ``cryptography``.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

__all__ = ["DNSUpstream", "Received", "TLSFiles", "closed_port", "make_tls_files"]

MODES = ("answer", "drop", "servfail", "refused", "nxdomain", "truncate", "spoof", "forward")


@dataclass(frozen=True, slots=True)
class Received:
    """One query as the upstream saw it."""

    name: str  # lower-case, no trailing dot ("" for the root)
    rdtype: str  # "A", "NS", ...
    transport: str  # "udp", "tcp" or "tls"
    rd: bool
    cd: bool
    do: bool
    edns_payload: int  # 0 without EDNS
    source: tuple[str, int]
    id: int
    at: float = field(default_factory=time.monotonic)
    ad: bool = False
    options: tuple[tuple[int, bytes], ...] = ()  # EDNS options as (code, wire data)

    def option(self, code: int) -> bytes | None:
        """The data of the first EDNS option ``code`` the query carried, or None."""
        return next((data for c, data in self.options if c == code), None)


def _norm(name: str) -> str:
    return name.lower().rstrip(".")


def closed_port(host: str = "127.0.0.1") -> int:
    """A UDP+TCP port on ``host`` that nothing listens on (a "dead" upstream)."""
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, 0))
    port = s.getsockname()[1]
    s.close()
    return port


class _Outbox:
    """Replies for a TLS connection, queued by any thread and written by the connection's own."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: list[bytes] = []
        self._closed = False

    def sendall(self, data: bytes) -> None:
        with self._lock:
            self._data.append(data)

    def close(self) -> None:
        self._closed = True

    def flush(self, sock: Any) -> bool:
        """Write what is queued; False once the connection is to be closed."""
        with self._lock:
            data, self._data = b"".join(self._data), []
        if data:
            sock.sendall(data)
        return not self._closed


class DNSUpstream:
    """See the module docstring."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, tls: TLSFiles | None = None) -> None:
        ip = ipaddress.ip_address(host)
        if not ip.is_loopback:
            raise ValueError("tests only use loopback addresses")
        self.host = host
        self.port = port
        self.tls = tls
        self.mode = "answer"
        self.delay = 0.0
        self.forward_to: tuple[str, int] | None = None
        self.forward_timeout = 2.0
        self.negative_soa = True
        self.close_tcp_after_answer = False  # act like a server that closes connections at once
        self.shape: Any = None  # fn(query, response) -> None, see the module docstring
        self.rewrite: Any = None  # fn(query, wire) -> wire: the encoded answer replaced (malformed answers)
        self.queries: list[Received] = []
        self.tcp_connections = 0
        self._records: dict[tuple[str, str], tuple[int, list[str]]] = {}
        self._soa: tuple[str, int, int] = ("", 60, 30)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._ssl_ctx: ssl.SSLContext | None = None
        self._conns: set[socket.socket] = set()

    # -- configuration -------------------------------------------------------------------------
    def add(self, name: str, rdtype: str, *rdatas: str, ttl: int = 300) -> DNSUpstream:
        """Serve ``name rdtype rdatas`` (rdata in zone-file text, e.g. ``"10 mx.example.com."``)."""
        key = (_norm(name), rdtype.upper())
        with self._lock:
            _, old = self._records.get(key, (ttl, []))
            self._records[key] = (ttl, old + list(rdatas))
        return self

    def clear(self) -> None:
        with self._lock:
            self._records.clear()

    def set_soa(self, zone: str, *, ttl: int = 60, minimum: int = 30) -> DNSUpstream:
        self._soa = (_norm(zone), ttl, minimum)
        return self

    @property
    def address(self) -> str:
        """``host:port`` (``[v6]:port``) as a forward ``to`` entry."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    # -- observation ---------------------------------------------------------------------------
    def count(self, name: str | None = None, rdtype: str | None = None, transport: str | None = None) -> int:
        with self._lock:
            qs = list(self.queries)
        return sum(
            1
            for q in qs
            if (name is None or q.name == _norm(name))
            and (rdtype is None or q.rdtype == rdtype.upper())
            and (transport is None or q.transport == transport)
        )

    def reset(self) -> None:
        with self._lock:
            self.queries.clear()
            self.tcp_connections = 0

    def wait_for(self, n: int, timeout: float = 5.0, **filters: Any) -> bool:
        """Block until ``count(**filters) >= n`` (for use outside the reactor thread)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.count(**filters) >= n:
                return True
            time.sleep(0.01)
        return False

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> DNSUpstream:
        fam = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        for _ in range(50):
            udp = socket.socket(fam, socket.SOCK_DGRAM)
            udp.bind((self.host, self.port))
            port = udp.getsockname()[1]
            tcp = socket.socket(fam, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                tcp.bind((self.host, port))
            except OSError:
                udp.close()
                tcp.close()
                if self.port:
                    raise
                continue
            break
        else:
            raise RuntimeError("no free port")
        tcp.listen(64)
        udp.settimeout(0.05)
        tcp.settimeout(0.05)
        self._udp, self._tcp, self.port = udp, tcp, port
        if self.tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(self.tls.cert), str(self.tls.key))
            self._ssl_ctx = ctx
        self._spawn(self._udp_loop)
        self._spawn(self._accept_loop)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(2)
        for s in (self._udp, self._tcp, *list(self._conns)):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass

    def __enter__(self) -> DNSUpstream:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _spawn(self, target: Any, *args: Any) -> None:
        t = threading.Thread(target=target, args=args, daemon=True, name=f"dnsupstream-{self.port}")
        t.start()
        self._threads.append(t)

    def _later(self, fn: Any, *args: Any) -> None:
        """Run ``fn`` now or after ``delay`` without blocking the receive loop."""
        if self.delay > 0:
            t = threading.Timer(self.delay, fn, args)
            t.daemon = True
            t.start()
        else:
            fn(*args)

    # -- UDP -----------------------------------------------------------------------------------
    def _udp_loop(self) -> None:
        assert self._udp is not None
        while not self._stop.is_set():
            try:
                data, addr = self._udp.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            q = self._parse(data, "udp", addr)
            if q is None:
                continue
            if self.mode == "forward":
                threading.Thread(target=self._udp_forward, args=(data, q, addr), daemon=True).start()
                continue
            self._later(self._udp_reply, q, addr)

    def _udp_reply(self, q: dns.message.Message, addr: Any) -> None:
        for wire in self._answers(q, "udp"):
            self._sendto(wire, addr)

    def _udp_forward(self, data: bytes, q: dns.message.Message, addr: Any) -> None:
        wire = self._relay(data, q)
        if wire is not None:
            self._sendto(wire, addr)

    def _sendto(self, wire: bytes, addr: Any) -> None:
        try:
            if self._udp is not None and not self._stop.is_set():
                self._udp.sendto(wire, addr)
        except OSError:
            pass

    def _relay(self, data: bytes, q: dns.message.Message) -> bytes | None:
        target = self.forward_to
        if target is None:
            return self._rcode_reply(q, dns.rcode.SERVFAIL)
        fam = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_DGRAM)
        try:
            s.settimeout(self.forward_timeout)
            s.connect(target)
            s.send(data)
            while True:
                resp = s.recv(65535)
                if resp[:2] == data[:2]:
                    return resp
        except OSError:
            return self._rcode_reply(q, dns.rcode.SERVFAIL)
        finally:
            s.close()

    # -- TCP / TLS -----------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        assert self._tcp is not None
        while not self._stop.is_set():
            try:
                conn, addr = self._tcp.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.tcp_connections += 1
            threading.Thread(target=self._serve_conn, args=(conn, addr), daemon=True).start()

    def _serve_conn(self, conn: socket.socket, addr: Any) -> None:
        transport = "tcp"
        sock: Any = conn
        self._conns.add(conn)
        try:
            if self._ssl_ctx is not None:
                transport = "tls"
                conn.settimeout(5)
                try:
                    sock = self._ssl_ctx.wrap_socket(conn, server_side=True)
                except (ssl.SSLError, OSError):
                    return  # the client refused our certificate, or went away
            sock.settimeout(0.05)
            send_lock = threading.Lock()
            buf = b""
            # An SSL socket must not be read and written from two threads at once (OpenSSL's
            # SSL objects are not thread-safe; doing so corrupts the stream now and then): over
            # TLS, replies made on other threads are queued and written by this thread.
            out: Any = _Outbox() if transport == "tls" else sock
            if transport == "tls":
                sock.settimeout(0.01)
            while not self._stop.is_set():
                if transport == "tls" and not out.flush(sock):
                    return
                try:
                    chunk = sock.recv(65535)
                except TimeoutError:
                    continue
                except (OSError, ssl.SSLError):
                    return
                if not chunk:
                    return
                buf += chunk
                while len(buf) >= 2:
                    (n,) = struct.unpack("!H", buf[:2])
                    if len(buf) < 2 + n:
                        break
                    data, buf = buf[2 : 2 + n], buf[2 + n :]
                    q = self._parse(data, transport, addr)
                    if q is None:
                        continue
                    if self.mode == "forward":
                        threading.Thread(
                            target=lambda d=data, q=q: self._stream_send(out, send_lock, [self._relay(d, q)]),
                            daemon=True,
                        ).start()
                        continue
                    self._later(self._stream_reply, out, send_lock, q, transport)
        finally:
            self._conns.discard(conn)
            try:
                sock.close()  # a reply still pending on a timer then fails quietly
            except OSError:
                pass

    def _stream_reply(self, sock: Any, lock: threading.Lock, q: dns.message.Message, transport: str) -> None:
        self._stream_send(sock, lock, self._answers(q, transport))
        if self.close_tcp_after_answer:
            try:
                sock.close()
            except OSError:
                pass

    def _stream_send(self, sock: Any, lock: threading.Lock, wires: list[bytes | None]) -> None:
        with lock:
            for wire in wires:
                if wire is None:
                    continue
                try:
                    sock.sendall(struct.pack("!H", len(wire)) + wire)
                except OSError:
                    return

    # -- answers -------------------------------------------------------------------------------
    def _parse(self, data: bytes, transport: str, addr: Any) -> dns.message.Message | None:
        try:
            q = dns.message.from_wire(data)
        except Exception:
            return None
        if not q.question:
            return None
        qq = q.question[0]
        rec = Received(
            name=_norm(qq.name.to_text()),
            rdtype=dns.rdatatype.to_text(qq.rdtype),
            transport=transport,
            rd=bool(q.flags & dns.flags.RD),
            cd=bool(q.flags & dns.flags.CD),
            do=bool(q.ednsflags & dns.flags.DO),
            edns_payload=int(q.payload) if q.edns >= 0 else 0,
            source=(addr[0], addr[1]),
            id=q.id,
            ad=bool(q.flags & dns.flags.AD),
            options=tuple((int(o.otype), o.to_wire()) for o in q.options),
        )
        with self._lock:
            self.queries.append(rec)
        return q

    def _rcode_reply(self, q: dns.message.Message, rcode: int) -> bytes:
        r = dns.message.make_response(q)
        r.set_rcode(rcode)
        return r.to_wire()

    def _soa_rrset(self) -> dns.rrset.RRset:
        zone, ttl, minimum = self._soa
        owner = zone + "." if zone else "."
        text = f"ns.{owner} hostmaster.{owner} 1 7200 1800 1209600 {minimum}".replace("..", ".")
        return dns.rrset.from_text(owner, ttl, "IN", "SOA", text)

    def _answers(self, q: dns.message.Message, transport: str) -> list[bytes]:
        mode = self.mode
        if mode == "drop":
            return []
        if mode == "servfail":
            return [self._rcode_reply(q, dns.rcode.SERVFAIL)]
        if mode == "refused":
            return [self._rcode_reply(q, dns.rcode.REFUSED)]
        r = dns.message.make_response(q)
        r.flags |= dns.flags.RA
        qq = q.question[0]
        name = _norm(qq.name.to_text())
        rdtype = dns.rdatatype.to_text(qq.rdtype)
        with self._lock:
            found = self._records.get((name, rdtype))
            known = any(n == name for n, _ in self._records)
        if mode == "nxdomain" or (found is None and not known):
            r.set_rcode(dns.rcode.NXDOMAIN)
            if self.negative_soa:
                r.authority.append(self._soa_rrset())
        elif found is None:
            if self.negative_soa:
                r.authority.append(self._soa_rrset())
        else:
            ttl, rdatas = found
            r.answer.append(dns.rrset.from_text(qq.name, ttl, "IN", rdtype, *rdatas))
        if self.shape is not None:
            self.shape(q, r)
        if transport == "udp":
            limit = max(512, q.payload) if q.edns >= 0 else 512
            if mode == "truncate":
                wire = self._truncated(q)
            else:
                try:
                    wire = r.to_wire(max_size=limit)
                except dns.exception.TooBig:
                    wire = self._truncated(q)
        else:
            wire = r.to_wire(max_size=65535)
        if self.rewrite is not None:
            wire = self.rewrite(q, wire)
        if mode == "spoof":
            other = dns.message.make_query("spoofed.invalid.", qq.rdtype)
            other.id = q.id
            bad_q = dns.message.make_response(other)
            bad_q.answer.append(dns.rrset.from_text("spoofed.invalid.", 300, "IN", "A", "192.0.2.66"))
            bad_id = bytearray(r.to_wire())
            bad_id[:2] = ((q.id + 1) & 0xFFFF).to_bytes(2, "big")
            return [bytes(bad_id), bad_q.to_wire(), wire]
        return [wire]

    @staticmethod
    def _truncated(q: dns.message.Message) -> bytes:
        t = dns.message.make_response(q)
        t.flags |= dns.flags.TC | dns.flags.RA
        return t.to_wire()


# -- certificates --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TLSFiles:
    """PEM files: the CA certificate (for ``tls_ca``), the server's certificate and key."""

    ca: Path
    cert: Path
    key: Path


def make_tls_files(
    directory: str | Path,
    *,
    dns_names: tuple[str, ...] | list[str] = ("dns.test",),
    ips: tuple[str, ...] | list[str] = ("127.0.0.1",),
) -> TLSFiles:
    """Write a fresh CA and a server certificate for ``dns_names`` and ``ips`` into ``directory``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=1)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubedns test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (list(dns_names) or list(ips))[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    files = TLSFiles(ca=d / "ca.pem", cert=d / "server.pem", key=d / "server.key")
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files
