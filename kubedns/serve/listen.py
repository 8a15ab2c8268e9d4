"""UDP and TCP listening sockets as Twisted services, optionally with SO_REUSEPORT.

``workers: N`` runs N processes that all bind the same address; the kernel spreads datagrams and
connections across them only if every socket sets SO_REUSEPORT before ``bind``.  Twisted's
``listenUDP``/``listenTCP`` cannot set it, so we make the socket ourselves and hand it to the
reactor with ``adoptDatagramPort``/``adoptStreamPort``.  With one worker the plain reactor calls
are used, so a second copy started by mistake still fails loudly with "address in use".

Failing loudly means one line, not Twisted's traceback: a listener that cannot bind raises
:class:`ListenError` naming the config file, the key, the address and why (busy, not an address
of this host, a privileged port without CAP_NET_BIND_SERVICE); :func:`http_listen_error` says the
same for the health, ready and prometheus addresses.

Every address (host ``""``: YAML's ``:53``, a Corefile block without ``bind``) is two sockets,
``0.0.0.0`` and an IPv6-only ``::`` where the host has IPv6, as CoreDNS's ``.:53`` answers both
families; one dual-stack socket would show IPv4 clients as ``::ffff:a.b.c.d`` to logs and plugins.
The HTTP endpoints (:mod:`kubedns.ops.health`) listen through :class:`TCPListener` too, so a
host-less ``health :8080`` is both families as well, as CoreDNS's Go listener is.
"""

from __future__ import annotations

import copy
import errno
import os
import socket
from typing import TYPE_CHECKING, Any

from twisted.application import service
from twisted.internet.error import CannotListenError

from kubedns.configbase import Address

if TYPE_CHECKING:
    from kubedns.config import Config

__all__ = ["ListenError", "TCPListener", "UDPListener", "bind_failure", "http_addresses", "http_listen_error", "interface"]


class ListenError(Exception):
    """An address from the config that cannot be listened on.

    ``str()`` is the whole message an operator needs, on one line: the config file, the key that
    names the address, the address and why (``conf/x.yaml: servers[0].listen: 127.0.0.1:53:
    address already in use``).  twistd would print a 40-line traceback for the same thing.
    """


def _unprivileged_port_start() -> int:
    """Lowest port an unprivileged process may bind (``net.ipv4.ip_unprivileged_port_start``)."""
    try:
        with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 1024


def bind_failure(err: BaseException, port: int) -> str:
    """Why binding ``port`` failed, in words an operator can act on.

    ``err`` is the ``OSError`` from ``bind`` or Twisted's ``CannotListenError`` wrapping it.
    """
    if isinstance(err, CannotListenError) and isinstance(err.socketError, BaseException):
        err = err.socketError
    code = getattr(err, "errno", None)
    if code == errno.EADDRINUSE:
        return "address already in use"
    if code == errno.EADDRNOTAVAIL:
        return "not an address of this host (cannot assign requested address)"
    if code == errno.EACCES and port < _unprivileged_port_start():
        return (
            f"permission denied: port {port} is privileged and this process lacks the capability "
            "CAP_NET_BIND_SERVICE (run as root, or grant it: systemd AmbientCapabilities=CAP_NET_BIND_SERVICE, "
            "Kubernetes securityContext.capabilities.add: [NET_BIND_SERVICE])"
        )
    if isinstance(code, int):
        return os.strerror(code).lower() if code else str(err)
    return " ".join(str(err).split())


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _bound_socket(host: str, port: int, kind: socket.SocketKind, reuse_port: bool = True,
                  v6only: bool = False) -> socket.socket:
    s = socket.socket(_family(host), kind)
    try:
        if kind == socket.SOCK_STREAM or reuse_port:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as listenTCP; listenUDP sets none
        if reuse_port:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if v6only:  # the IPv6 half of every address: IPv4 clients come in on the IPv4 socket
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((host, port))
        if kind == socket.SOCK_STREAM:
            s.listen(1024)
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s


def interface(host: str) -> str:
    """The interface to bind for a configured host: ``""`` (every address: ``:53`` in YAML, a
    Corefile block without ``bind``) stays ``""``, which the DNS listeners bind as ``0.0.0.0``
    plus ``::`` where the host has IPv6 (CoreDNS's ``.:53`` answers both); ``0.0.0.0`` is every
    IPv4 address only, as ``bind 0.0.0.0``."""
    return "127.0.0.1" if host == "localhost" else host


#: errors binding ``::`` that mean "this host has no IPv6": "every address" is then IPv4's
_NO_IPV6 = (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT)


_HTTP_KEYS = (("health", "/health"), ("ready", "/ready"), ("prometheus", "/metrics"))


def http_addresses(config: Config, worker: int = 0) -> list[tuple[str, str, Address]]:
    """(config key, path, address) of every HTTP endpoint this process serves, in config order.

    As :mod:`kubedns.ops.health` does: /health and /ready only in worker 0, /metrics of worker N on
    the prometheus port plus N.
    """
    out = []
    for b in config.servers:
        for key, path in _HTTP_KEYS:
            v = getattr(b, key)
            if v is None or (worker and key != "prometheus"):
                continue
            addr = Address(v.listen.host, v.listen.port + worker) if key == "prometheus" else v.listen
            out.append((f"servers[{b.index}].{key}", path, addr))
    return out


def http_listen_error(config: Config, err: CannotListenError, worker: int = 0) -> ListenError:
    """The one-line :class:`ListenError` for an HTTP endpoint Twisted could not listen on."""
    for key, _, addr in http_addresses(config, worker):
        if addr.port == err.port and (interface(addr.host) or "0.0.0.0") == err.interface:
            return ListenError(f"{config.path}: {key}: {addr}: {bind_failure(err, addr.port)}")
    return ListenError(f"{config.path}: {err.interface or '*'}:{err.port}: {bind_failure(err, err.port)}")


class _Listener(service.Service):
    """``where`` names the address in errors: ``"<file>: <key>: <address>"`` (see :class:`ListenError`).

    Host ``""`` binds two sockets: ``0.0.0.0`` (``_port``) and ``::`` IPv6-only (``_port6``), so
    a client of either family reaches it and keeps its own address (no ``::ffff:`` mapping).
    """

    def __init__(self, host: str, port: int, target: Any, reactor: Any, reuse_port: bool, where: str = ""):
        self.host = host
        self.port = port
        self.target = target
        self.reactor = reactor
        self.reuse_port = reuse_port
        self.where = where or f"{host}:{port}"
        self._port: Any = None
        self._port6: Any = None

    def privilegedStartService(self) -> None:  # noqa: N802 - bind before dropping privileges
        service.Service.privilegedStartService(self)
        self._port = self._bind()

    def startService(self) -> None:  # noqa: N802
        service.Service.startService(self)
        if self._port is None:
            self._port = self._bind()

    def _bind(self) -> Any:
        target6 = self._second_target()  # before the first port connects self.target
        try:
            port = self._listen()
        except (CannotListenError, OSError) as e:
            raise ListenError(f"{self.where}: {bind_failure(e, self.port)}") from None
        if self.host == "":
            try:
                sock = _bound_socket("::", self.port, self._kind, self.reuse_port, v6only=True)
                self._port6 = self._adopt(sock, target6)
            except OSError as e:
                if e.errno not in _NO_IPV6:
                    port.stopListening()
                    raise ListenError(f"{self.where}: [::]:{self.port}: {bind_failure(e, self.port)}") from None
        return port

    def stopService(self) -> Any:  # noqa: N802
        service.Service.stopService(self)
        if self._port6 is not None:
            self._port6.stopListening()
            self._port6 = None
        if self._port is not None:
            d = self._port.stopListening()
            self._port = None
            return d
        return None

    _kind = socket.SOCK_DGRAM

    def _listen(self) -> Any:
        raise NotImplementedError

    def _adopt(self, s: socket.socket, target: Any) -> Any:
        """Hand the bound socket ``s`` to the reactor (which keeps a duplicate) and close ours."""
        raise NotImplementedError

    def _second_target(self) -> Any:
        """What the IPv6 port of every address serves: a factory serves any number of ports."""
        return self.target


_FD_CEILING = 1 << 20


def fd_limit() -> int:
    """The process's soft open-files limit (unlimited counts as 2**20)."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        return _FD_CEILING if soft == resource.RLIM_INFINITY else soft
    except (ImportError, ValueError, OSError):
        return 1024


def raise_fd_limit() -> int:
    """Raise the soft open-files limit to the hard one (at most 2**20); :func:`fd_limit` after.

    Go raises it by itself at start, so CoreDNS runs with the hard limit; a Python process keeps
    systemd's or the shell's soft 1024, where a few hundred idle TCP clients would leave no file
    descriptor for the sockets forwarding needs.  Called once at process start (kubedns.tap).
    """
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = _FD_CEILING if hard == resource.RLIM_INFINITY else min(hard, _FD_CEILING)
        if soft != resource.RLIM_INFINITY and soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ImportError, ValueError, OSError):
        pass
    return fd_limit()


#: Read whole datagrams: twisted's default of 8192 silently cuts a larger (legal, e.g. padded)
#: query, which then reads as malformed.  Reading with a 64 KB limit costs no more per packet.
MAX_DATAGRAM = 65535


class UDPListener(_Listener):
    """A UDP port for a DatagramProtocol."""

    def _listen(self) -> Any:
        if not self.reuse_port:
            return self.reactor.listenUDP(self.port, self.target, interface=self.host, maxPacketSize=MAX_DATAGRAM)
        return self._adopt(_bound_socket(self.host or "0.0.0.0", self.port, socket.SOCK_DGRAM), self.target)

    def _adopt(self, s: socket.socket, target: Any) -> Any:
        try:
            return self.reactor.adoptDatagramPort(s.fileno(), s.family, target, maxPacketSize=MAX_DATAGRAM)
        finally:
            s.close()  # the reactor holds its own duplicate

    def _second_target(self) -> Any:
        """A protocol has one transport: the IPv6 port gets a copy (same dispatcher), its
        ``for_ipv6()`` where it has one (which counts its fast-path hits as IPv6's)."""
        for_ipv6 = getattr(self.target, "for_ipv6", None)
        return for_ipv6() if for_ipv6 is not None else copy.copy(self.target)


class TCPListener(_Listener):
    """A TCP port for a ServerFactory."""

    _kind = socket.SOCK_STREAM

    def _listen(self) -> Any:
        if not self.reuse_port:
            return self.reactor.listenTCP(self.port, self.target, interface=self.host, backlog=1024)
        return self._adopt(_bound_socket(self.host or "0.0.0.0", self.port, socket.SOCK_STREAM), self.target)

    def _adopt(self, s: socket.socket, target: Any) -> Any:
        try:
            return self.reactor.adoptStreamPort(s.fileno(), s.family, target)
        finally:
            s.close()
