"""Connections against a real sshd: host keys, authentication, timeouts, quoting."""
import dataclasses
import time

import paramiko
import pytest

from edgekit.host.deploy.shell import SSHHost, quote_command
from edgekit.host.deploy.ssh import connect
from edgekit.host.deploy.targets import parse_target
from edgekit.contract.errors import EdgekitError

pytestmark = pytest.mark.ssh


def _target(sshd, tmp_path):
    (tmp_path / "ssh_config").write_text("")
    return parse_target(sshd.target, ssh_config=str(tmp_path / "ssh_config"))


def _fingerprint(sshd):
    return paramiko.Ed25519Key.from_private_key_file(sshd.host_key).fingerprint


def test_connect_and_run_with_awkward_arguments(sshd, ssh_options, tmp_path):
    awkward = ["a b", "it's", 'say "hi"', "x; rm -rf /nonexistent", "$HOME", "`id`", "*", "", "tab\there", "new\nline"]
    with connect(_target(sshd, tmp_path), ssh_options) as conn:
        host = SSHHost(conn)
        # Each argument must arrive as exactly one word, unexpanded.
        result = host.run(["python3", "-c", "import sys, json; print(json.dumps(sys.argv[1:]))"] + awkward)
        assert result.rc == 0, result.err
        import json

        assert json.loads(result.out) == awkward
        assert conn.transport.remote_cipher.startswith("aes128-gcm")


def test_unknown_host_key_refused_then_accepted_with_flag(sshd, ssh_options, tmp_path):
    known = tmp_path / "known_hosts"  # does not exist yet: the board is unknown
    options = dataclasses.replace(ssh_options, known_hosts=str(known))
    with pytest.raises(EdgekitError) as info:
        connect(_target(sshd, tmp_path), options)
    message = str(info.value)
    assert _fingerprint(sshd) in message and "--accept-new-host-key" in message and "is not in" in message
    assert not known.exists()
    with connect(_target(sshd, tmp_path), dataclasses.replace(options, accept_new_host_key=True)) as conn:
        assert SSHHost(conn).run(["true"]).rc == 0
    assert known.read_text().startswith("[127.0.0.1]:%d ssh-ed25519 " % sshd.port)
    # Recorded: the next connection needs no flag.
    with connect(_target(sshd, tmp_path), options) as conn:
        assert SSHHost(conn).run(["true"]).rc == 0


def test_changed_host_key_is_always_refused(sshd, ssh_options, tmp_path, make_key):
    other = make_key("impostor")
    with open(other + ".pub") as f:
        kind, blob = f.read().split()[:2]
    known = tmp_path / "known_hosts"
    known.write_text("[127.0.0.1]:%d %s %s\n" % (sshd.port, kind, blob))
    for accept in (False, True):
        options = dataclasses.replace(ssh_options, known_hosts=str(known), accept_new_host_key=accept)
        with pytest.raises(EdgekitError) as info:
            connect(_target(sshd, tmp_path), options)
        message = str(info.value)
        assert "CHANGED" in message and _fingerprint(sshd) in message and "ssh-keygen -f" in message
    assert known.read_text().count("\n") == 1  # never rewritten


def test_wrong_key_is_an_authentication_error(sshd, ssh_options, tmp_path, make_key):
    options = dataclasses.replace(ssh_options, identity_files=(make_key("stranger"),))
    with pytest.raises(EdgekitError) as info:
        connect(_target(sshd, tmp_path), options)
    assert "authentication to %s failed" % sshd.target in str(info.value)
    assert "-i KEY" in str(info.value)


def test_missing_identity_file(sshd, ssh_options, tmp_path):
    options = dataclasses.replace(ssh_options, identity_files=(str(tmp_path / "nope"),))
    with pytest.raises(EdgekitError, match="does not exist"):
        connect(_target(sshd, tmp_path), options)


def test_closed_port_is_refused_quickly(ssh_options, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends
    (tmp_path / "c").write_text("")
    target = parse_target("root@127.0.0.1:%d" % port, ssh_config=str(tmp_path / "c"))
    start = time.monotonic()
    with pytest.raises(EdgekitError, match="refused the connection"):
        connect(target, ssh_options)
    assert time.monotonic() - start < ssh_options.connect_timeout


def test_silent_port_fails_within_the_timeout(silent_port, ssh_options, tmp_path):
    (tmp_path / "c").write_text("")
    target = parse_target("root@127.0.0.1:%d" % silent_port, ssh_config=str(tmp_path / "c"))
    options = dataclasses.replace(ssh_options, connect_timeout=1.5)
    start = time.monotonic()
    with pytest.raises(EdgekitError, match="did not speak SSH within 1.5s"):
        connect(target, options)
    elapsed = time.monotonic() - start
    assert 1.0 < elapsed < 5.0


def test_proxyjump_through_the_same_server(sshd, ssh_options, tmp_path):
    config = tmp_path / "ssh_config"
    config.write_text(
        "Host board\n  HostName 127.0.0.1\n  Port %d\n  User %s\n  ProxyJump gate\n"
        "Host gate\n  HostName 127.0.0.1\n  Port %d\n  User %s\n" % (sshd.port, sshd.user, sshd.port, sshd.user)
    )
    target = parse_target("board", ssh_config=str(config))
    with connect(target, ssh_options) as conn:
        assert len(conn.jumps) == 1
        assert SSHHost(conn).run(["echo", "through"]).out.strip() == "through"


def test_remote_command_timeout_and_silence(sshd, ssh_options, tmp_path):
    from edgekit.host.deploy.shell import CommandTimeout

    with connect(_target(sshd, tmp_path), ssh_options) as conn:
        host = SSHHost(conn)
        start = time.monotonic()
        with pytest.raises(CommandTimeout, match="went silent for 1s"):
            host.run(["sleep", "30"], idle_timeout=1)
        assert time.monotonic() - start < 5
        assert quote_command(["a b", "c'd"]) == "'a b' 'c'\"'\"'d'"
