"""SSH connections with paramiko: host keys, authentication, timeouts, one-line errors.

Host keys follow OpenSSH's ``StrictHostKeyChecking=accept-new`` only when asked:
a host missing from known_hosts is refused with its fingerprint unless
``accept_new_host_key`` is set (then its key is appended to known_hosts); a key
that differs from the known one is always refused. Keys come from ``-i``, the
SSH config's IdentityFile, ssh-agent and ``~/.ssh/id_*``; a password is used
when one is given (``--ask-password`` for freshly flashed boards).
"""
import dataclasses
import errno
import os
import socket
import threading
from typing import Any, List, Optional, Tuple

import paramiko

from edgekit.contract.errors import EdgekitError
from .targets import Target

DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
SYSTEM_KNOWN_HOSTS = "/etc/ssh/ssh_known_hosts"
# AES-GCM needs no separate MAC pass: measurably faster in paramiko than AES-CTR + HMAC.
FAST_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr", "aes256-ctr")
# Larger windows keep the pipe full on fast links (paramiko's default is 2 MiB).
WINDOW_SIZE = 16 * 1024 * 1024
MAX_PACKET = 32768

_known_hosts_lock = threading.Lock()


@dataclasses.dataclass(frozen=True)
class SSHOptions:
    """How to connect; the same for every target of one deploy."""

    known_hosts: Optional[str] = None  # None: ~/.ssh/known_hosts (or the SSH config's UserKnownHostsFile)
    accept_new_host_key: bool = False
    identity_files: Tuple[str, ...] = ()
    password: Optional[str] = dataclasses.field(default=None, repr=False)
    use_agent: bool = True
    look_for_keys: bool = True  # ~/.ssh/id_rsa, id_ecdsa, id_ed25519
    connect_timeout: float = 10.0
    idle_timeout: float = 60.0  # silence on a command or transfer before giving up
    keepalive_s: int = 15


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint, as ssh-keygen -l prints it."""
    return key.fingerprint


def known_hosts_name(host: str, port: int) -> str:
    return host if port == 22 else "[%s]:%d" % (host, port)


def _known_hosts_path(target: Target, options: SSHOptions) -> str:
    return os.path.expanduser(options.known_hosts or target.known_hosts or DEFAULT_KNOWN_HOSTS)


class _HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Unknown host: refuse with the fingerprint, or record it when the user accepted new keys."""

    def __init__(self, target: Target, known_hosts: str, accept_new: bool) -> None:
        self.target = target
        self.known_hosts = known_hosts
        self.accept_new = accept_new

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        if not self.accept_new:
            raise EdgekitError(
                "%s is not in %s; its %s host key is %s" % (hostname, self.known_hosts, key.get_name(), fingerprint(key)),
                "if that fingerprint is the board's (ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub on it), "
                "rerun with --accept-new-host-key",
            )
        line = "%s %s %s\n" % (hostname, key.get_name(), key.get_base64())
        with _known_hosts_lock:
            try:
                folder = os.path.dirname(self.known_hosts)
                if folder and not os.path.isdir(folder):
                    os.makedirs(folder, mode=0o700, exist_ok=True)
                with open(self.known_hosts, "a", encoding="utf-8") as f:
                    f.write(line)
            except OSError as exc:
                raise EdgekitError("cannot add %s to %s (%s)" % (hostname, self.known_hosts, exc.strerror), "pass a writable --known-hosts file")
        client.get_host_keys().add(hostname, key.get_name(), key)


def _transport_factory(sock: Any, **kwargs: Any) -> paramiko.Transport:
    transport = paramiko.Transport(sock, default_window_size=WINDOW_SIZE, default_max_packet_size=MAX_PACKET, **kwargs)
    sec = transport.get_security_options()
    fast = [c for c in FAST_CIPHERS if c in sec.ciphers]
    sec.ciphers = tuple(fast + [c for c in sec.ciphers if c not in fast])
    return transport


class Connection(object):
    """An authenticated SSH connection (and the jump hosts it goes through)."""

    def __init__(self, target: Target, client: paramiko.SSHClient, jumps: List["Connection"], options: SSHOptions) -> None:
        self.target = target
        self.client = client
        self.jumps = jumps
        self.options = options
        self._sftp: Optional[paramiko.SFTPClient] = None

    @property
    def transport(self) -> paramiko.Transport:
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise EdgekitError("the SSH connection to %s was lost" % self.target.address, "check the board's network and retry")
        return transport

    def sftp(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            try:
                self._sftp = paramiko.SFTPClient.from_transport(self.transport, window_size=WINDOW_SIZE, max_packet_size=MAX_PACKET)
            except paramiko.SSHException as exc:
                raise EdgekitError(
                    "%s offers no SFTP (%s)" % (self.target.address, exc),
                    "enable 'Subsystem sftp internal-sftp' (or sftp-server) in the board's sshd_config",
                )
            self._sftp.get_channel().settimeout(self.options.idle_timeout)
        return self._sftp

    def close(self) -> None:
        if self._sftp is not None:
            try:
                self._sftp.close()
            except Exception:  # closing a dead connection must not hide the real error
                pass
            self._sftp = None
        self.client.close()
        for jump in reversed(self.jumps):
            jump.close()

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def copy_id_command(target: Target) -> str:
    """The ssh-copy-id line for this target: it takes the port as -p, not as host:port."""
    port = "" if target.port == 22 else "-p %d " % target.port
    return "ssh-copy-id %s%s%s" % (port, target.user + "@" if target.user else "", target.host)


def _auth_error(target: Target, options: SSHOptions, detail: str) -> EdgekitError:
    tried = []
    if options.identity_files or target.identity_files:
        tried.append("keys " + ", ".join(dict.fromkeys(options.identity_files + target.identity_files)))
    if options.use_agent and os.environ.get("SSH_AUTH_SOCK"):
        tried.append("ssh-agent")
    if options.look_for_keys:
        tried.append("~/.ssh/id_*")
    if options.password is not None or target.password is not None:
        tried.append("password")
    return EdgekitError(
        "authentication to %s failed (%s; tried %s)" % (target.address, detail, ", ".join(tried) or "nothing"),
        "pass the right key with -i KEY, install your key on the board (%s), or use --ask-password" % copy_id_command(target),
    )


def _translate(exc: BaseException, target: Target, options: SSHOptions, via: str = "") -> EdgekitError:
    """One line for each way a connection fails."""
    where = "%s (%s:%d%s)" % (target.name, target.host, target.port, via) if target.name != target.address else "%s%s" % (target.address, via)
    timeout = options.connect_timeout
    if isinstance(exc, EdgekitError):
        return exc
    if isinstance(exc, paramiko.BadHostKeyException):
        name = known_hosts_name(target.host, target.port)
        path = _known_hosts_path(target, options)
        return EdgekitError(
            "the host key of %s has CHANGED: it offers %s %s but %s has %s %s; this is either a reflashed board "
            "or someone intercepting the connection, so it is refused"
            % (where, exc.key.get_name(), fingerprint(exc.key), path, exc.expected_key.get_name(), fingerprint(exc.expected_key)),
            "if the board was reinstalled, remove the old key with: ssh-keygen -f %s -R '%s', then rerun with --accept-new-host-key" % (path, name),
        )
    if isinstance(exc, paramiko.PasswordRequiredException):
        return EdgekitError("a private key for %s is encrypted (%s)" % (where, exc), "load it into ssh-agent with ssh-add KEY, or pass an unencrypted key with -i")
    if isinstance(exc, paramiko.AuthenticationException):
        return _auth_error(target, options, str(exc) or "the server rejected every method")
    if isinstance(exc, paramiko.SSHException) and "No authentication methods" in str(exc):
        return _auth_error(target, options, "no key or password was available")
    if isinstance(exc, paramiko.ChannelException):
        return EdgekitError("jump host could not open a connection to %s (%s)" % (where, exc), "check that the board is reachable from the jump host")
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        codes = {getattr(e, "errno", None) for e in exc.errors.values()}
        if codes <= {errno.ECONNREFUSED}:
            return EdgekitError("%s refused the connection" % where, "check that sshd runs on the board and the port is right")
        return EdgekitError("cannot reach %s (%s)" % (where, exc), "check the address and the board's network")
    if isinstance(exc, socket.gaierror):
        return EdgekitError("cannot resolve host name %r of %s" % (target.host, target.name), "check the spelling, or add a HostName to your SSH config")
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return EdgekitError("%s did not answer within %gs" % (where, timeout), "check that the board is on and reachable (or raise --connect-timeout)")
    if isinstance(exc, ConnectionRefusedError):
        return EdgekitError("%s refused the connection" % where, "check that sshd runs on the board and the port is right")
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN):
        return EdgekitError("cannot reach %s (%s)" % (where, exc.strerror), "check the address and the board's network")
    # paramiko gives up on a silent server either while reading its banner or, when
    # the negotiation timer fires first, with "No existing session".
    if isinstance(exc, paramiko.SSHException) and ("banner" in str(exc).lower() or str(exc) == "No existing session"):
        return EdgekitError(
            "%s accepted the connection but did not speak SSH within %gs" % (where, timeout),
            "check the port (is it sshd?) and that the board is not overloaded",
        )
    if isinstance(exc, (EOFError, ConnectionResetError, paramiko.SSHException)):
        return EdgekitError("%s closed the connection during the SSH handshake (%s)" % (where, exc or type(exc).__name__), "check the board's sshd log (journalctl -u ssh)")
    if isinstance(exc, OSError):
        return EdgekitError("cannot connect to %s (%s)" % (where, exc.strerror or exc), "check the address and the board's network")
    raise exc


def connect(target: Target, options: SSHOptions) -> Connection:
    """Open an authenticated connection to ``target`` (through its ProxyJump hosts)."""
    if target.is_local:
        raise EdgekitError("target 'local' needs no SSH connection", "this is a bug in the caller")
    jumps: List[Connection] = []
    sock = None
    try:
        for hop in target.proxy_jump:
            # The first hop is reached directly, each later one through the previous hop.
            jumps.append(_connect_through(jumps[-1], hop, options) if jumps else connect(hop, options))
        if jumps:
            sock = _open_tunnel(jumps[-1], target, options)
    except BaseException:
        for jump in reversed(jumps):
            jump.close()
        raise
    return _connect_direct(target, options, sock, jumps, " via " + jumps[-1].target.address if jumps else "")


def _open_tunnel(jump: Connection, target: Target, options: SSHOptions) -> Any:
    try:
        return jump.transport.open_channel("direct-tcpip", (target.host, target.port), ("127.0.0.1", 0), timeout=options.connect_timeout)
    except (paramiko.SSHException, socket.error, EOFError) as exc:
        raise EdgekitError(
            "jump host %s could not reach %s:%d (%s)" % (jump.target.address, target.host, target.port, exc or type(exc).__name__),
            "check ProxyJump and that the board is reachable from the jump host",
        )


def _connect_through(previous: Connection, hop: Target, options: SSHOptions) -> Connection:
    return _connect_direct(hop, options, _open_tunnel(previous, hop, options), [], " via " + previous.target.address)


def _connect_direct(target: Target, options: SSHOptions, sock: Any, jumps: List[Connection], via: str) -> Connection:
    client = paramiko.SSHClient()
    known_hosts = _known_hosts_path(target, options)
    try:
        if options.known_hosts is None and target.known_hosts is None and os.path.isfile(SYSTEM_KNOWN_HOSTS):
            client.load_system_host_keys(SYSTEM_KNOWN_HOSTS)
        if os.path.isfile(known_hosts):
            client.load_host_keys(known_hosts)
    except (OSError, paramiko.SSHException) as exc:
        for jump in jumps:
            jump.close()
        raise EdgekitError("cannot read known hosts file %s (%s)" % (known_hosts, exc), "fix or remove the damaged line")
    client.set_missing_host_key_policy(_HostKeyPolicy(target, known_hosts, options.accept_new_host_key))
    keys = list(dict.fromkeys(tuple(options.identity_files) + tuple(target.identity_files)))
    for key in keys:
        if not os.path.isfile(key):
            raise EdgekitError("identity file %s does not exist" % key, "pass an existing private key with -i")
    password = target.password if target.password is not None else options.password
    try:
        client.connect(
            target.host,
            port=target.port,
            username=target.user,
            password=password,
            key_filename=keys or None,
            timeout=options.connect_timeout,
            banner_timeout=options.connect_timeout,
            auth_timeout=max(options.connect_timeout, 15.0),
            channel_timeout=options.connect_timeout,
            allow_agent=options.use_agent,
            look_for_keys=options.look_for_keys,
            sock=sock,
            transport_factory=_transport_factory,
        )
    except BaseException as exc:
        client.close()
        for jump in reversed(jumps):
            jump.close()
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise _translate(exc, target, options, via) from None
    transport = client.get_transport()
    if transport is not None and options.keepalive_s:
        transport.set_keepalive(options.keepalive_s)
    return Connection(target, client, jumps, options)
