"""Deploy targets: ``local``, ``user@host[:port]`` and ``~/.ssh/config`` aliases.

A :class:`Target` is what a deploy needs to reach one board: where to connect,
as whom, with which keys, through which jump hosts, and a name for its results
folder. Aliases are resolved with paramiko's SSHConfig (HostName, User, Port,
IdentityFile, ProxyJump, UserKnownHostsFile), like OpenSSH would.
"""
import dataclasses
import getpass
import os
import re
from typing import Dict, List, Optional, Tuple

import paramiko

from edgekit.contract.errors import EdgekitError

LOCAL = "local"
DEFAULT_SSH_CONFIG = "~/.ssh/config"

# user@host, user@host:port, host:port, user@[v6addr]:port, ssh://user@host:port
_SPEC = re.compile(
    r"^(?:ssh://)?(?:(?P<user>[^@\s]+)@)?(?:\[(?P<v6>[0-9A-Fa-f:.%]+)\]|(?P<host>[^@:\[\]\s/]+))(?::(?P<port>\d+))?/?$"
)


@dataclasses.dataclass(frozen=True)
class Target:
    """One board (or ``local``). ``name`` labels its results; ``host`` is what we connect to."""

    name: str
    host: str = ""
    user: str = ""
    port: int = 22
    identity_files: Tuple[str, ...] = ()
    proxy_jump: Tuple["Target", ...] = ()
    known_hosts: Optional[str] = None
    # Remote interpreter for this board (inventory ``python`` / ansible_python_interpreter).
    python: Optional[str] = None
    password: Optional[str] = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def is_local(self) -> bool:
        return self.host == ""

    @property
    def address(self) -> str:
        """``user@host:port`` as shown to the user (``local`` for the local target)."""
        if self.is_local:
            return LOCAL
        host = "[%s]" % self.host if ":" in self.host else self.host
        return "%s@%s%s" % (self.user, host, "" if self.port == 22 else ":%d" % self.port)


def _load_ssh_config(path: Optional[str]) -> Optional[paramiko.SSHConfig]:
    explicit = path is not None
    path = os.path.expanduser(path if explicit else DEFAULT_SSH_CONFIG)
    if not os.path.isfile(path):
        if explicit:
            raise EdgekitError("SSH config %s does not exist" % path, "pass an existing file to --ssh-config")
        return None
    try:
        return paramiko.SSHConfig.from_path(path)
    except (OSError, paramiko.ConfigParseError, ValueError) as exc:
        raise EdgekitError("cannot read SSH config %s (%s)" % (path, exc), "fix the file or pass another --ssh-config")


def _port(text: str, spec: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        raise EdgekitError("target %r has port %r" % (spec, text), "use a port between 1 and 65535")
    return port


def parse_target(
    spec: str,
    ssh_config: Optional[str] = None,
    name: Optional[str] = None,
    identity_files: Tuple[str, ...] = (),
    _config: Optional[paramiko.SSHConfig] = None,
    _depth: int = 0,
) -> Target:
    """Parse ``local``, ``[ssh://][user@]host[:port]`` or an alias of the SSH config.

    Values on the command line win over the SSH config's, as with OpenSSH; the
    config's IdentityFile entries are tried after ``identity_files``.
    """
    spec = spec.strip()
    if spec == LOCAL:
        return Target(name=name or LOCAL)
    m = _SPEC.match(spec)
    if not m:
        raise EdgekitError(
            "target %r is not user@host[:port], an SSH config alias or 'local'" % spec,
            "write it like nvidia@orin.local or nvidia@192.168.1.20:2222",
        )
    if _depth > 8:
        raise EdgekitError("ProxyJump chain for %r is longer than 8 hops" % spec, "check ProxyJump in your SSH config for a loop")
    alias = m.group("v6") or m.group("host")
    config = _config if _config is not None else _load_ssh_config(ssh_config)
    opts: Dict[str, object] = dict(config.lookup(alias)) if config is not None else {}
    host = str(opts.get("hostname") or alias)
    user = m.group("user") or str(opts.get("user") or "") or getpass.getuser()
    if m.group("port"):
        port = _port(m.group("port"), spec)
    else:
        port = _port(str(opts.get("port", 22)), spec)
    keys = list(identity_files)
    for key in opts.get("identityfile", []) or []:
        path = os.path.expanduser(str(key))
        # OpenSSH silently skips default identities that do not exist; so do we.
        if path not in keys and os.path.isfile(path):
            keys.append(path)
    jumps: List[Target] = []
    jump_spec = str(opts.get("proxyjump") or "")
    if jump_spec and jump_spec.lower() != "none":
        for hop in jump_spec.split(","):
            jumps.append(parse_target(hop, _config=config, identity_files=identity_files, _depth=_depth + 1))
    known_hosts = None
    if opts.get("userknownhostsfile"):
        known_hosts = os.path.expanduser(str(opts["userknownhostsfile"]).split()[0])
    return Target(
        name=name or spec,
        host=host,
        user=user,
        port=port,
        identity_files=tuple(keys),
        proxy_jump=tuple(jumps),
        known_hosts=known_hosts,
    )


def safe_component(name: str) -> str:
    """A target or bundle name as one folder name: spaces and quotes stay, separators go."""
    cleaned = "".join("_" if (c in "/\\" or ord(c) < 32) else c for c in name).strip()
    if cleaned in ("", ".", ".."):
        cleaned = "_" + cleaned
    return cleaned
