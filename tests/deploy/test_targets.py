"""Target parsing, ~/.ssh/config aliases and inventories (no SSH needed)."""
import getpass

import pytest

from edgekit.host.deploy.inventory import load_inventory, parse_ansible_ini, parse_yaml_list
from edgekit.host.deploy.targets import parse_target, safe_component
from edgekit.contract.errors import EdgekitError


def test_user_host_port_and_local(tmp_path):
    none = str(tmp_path / "no-config")
    (tmp_path / "no-config").write_text("")
    t = parse_target("nvidia@orin.local:2222", ssh_config=none)
    assert (t.user, t.host, t.port, t.name) == ("nvidia", "orin.local", 2222, "nvidia@orin.local:2222")
    assert t.address == "nvidia@orin.local:2222"
    t = parse_target("orin.local", ssh_config=none)
    assert (t.user, t.port) == (getpass.getuser(), 22)
    t = parse_target("root@[fe80::1]:22", ssh_config=none)
    assert t.host == "fe80::1" and t.address == "root@[fe80::1]"
    t = parse_target("ssh://pi@10.0.0.5:2200", ssh_config=none)
    assert (t.user, t.host, t.port) == ("pi", "10.0.0.5", 2200)
    assert parse_target("local").is_local


@pytest.mark.parametrize("spec", ["nvidia@", "a b", "user@host:0", "user@host:70000", "user@host:port"])
def test_bad_specs_are_one_line_errors(spec, tmp_path):
    (tmp_path / "c").write_text("")
    with pytest.raises(EdgekitError) as info:
        parse_target(spec, ssh_config=str(tmp_path / "c"))
    assert "\n" not in str(info.value) and info.value.fix


def test_ssh_config_alias_is_honoured(tmp_path):
    key = tmp_path / "lab_key"
    key.write_text("not used here")
    config = tmp_path / "config"
    config.write_text(
        "Host orin\n  HostName 192.168.7.20\n  User nvidia\n  Port 2222\n  IdentityFile %s\n  ProxyJump gate\n"
        "  UserKnownHostsFile %s/kh\n\nHost gate\n  HostName gate.example.org\n  User jump\n" % (key, tmp_path)
    )
    t = parse_target("orin", ssh_config=str(config))
    assert (t.host, t.user, t.port, t.name) == ("192.168.7.20", "nvidia", 2222, "orin")
    assert t.identity_files == (str(key),)
    assert t.known_hosts == str(tmp_path / "kh")
    assert len(t.proxy_jump) == 1
    jump = t.proxy_jump[0]
    assert (jump.host, jump.user, jump.port) == ("gate.example.org", "jump", 22)
    # The command line wins over the config, as with OpenSSH.
    t = parse_target("root@orin:22", ssh_config=str(config))
    assert (t.user, t.port, t.host) == ("root", 22, "192.168.7.20")


def test_missing_explicit_ssh_config_is_an_error(tmp_path):
    with pytest.raises(EdgekitError, match="does not exist"):
        parse_target("orin", ssh_config=str(tmp_path / "nope"))


def test_proxyjump_loop_is_refused(tmp_path):
    config = tmp_path / "config"
    config.write_text("Host a\n  ProxyJump b\nHost b\n  ProxyJump a\n")
    with pytest.raises(EdgekitError, match="ProxyJump"):
        parse_target("a", ssh_config=str(config))


def test_yaml_inventory(tmp_path):
    (tmp_path / "cfg").write_text("")
    inv = tmp_path / "boards.yml"
    inv.write_text(
        "# lab boards\n"
        "targets:\n"
        "  - nvidia@orin1.local\n"
        "  - name: \"lab board 'B'; #2\"\n"
        "    host: 10.0.0.2\n"
        "    user: pi\n"
        "    port: 2200\n"
        "    python: /usr/bin/python3.10   # newer python\n"
        "  - {name: here, host: local}\n"
    )
    targets = load_inventory(str(inv), ssh_config=str(tmp_path / "cfg"))
    assert [t.name for t in targets] == ["nvidia@orin1.local", "lab board 'B'; #2", "here"]
    b = targets[1]
    assert (b.host, b.user, b.port, b.python) == ("10.0.0.2", "pi", 2200, "/usr/bin/python3.10")
    assert targets[2].is_local


@pytest.mark.parametrize(
    "text, message",
    [("- {name: a}\n", "no host"), ("- host: a\n  colour: red\n", "unknown key"), ("hosts:\n  a: 1\n", "cannot read")],
)
def test_yaml_inventory_errors(text, message):
    with pytest.raises(EdgekitError, match=message):
        parse_yaml_list(text, "inv.yml")


def test_ansible_ini_inventory(tmp_path):
    text = (
        "gateway ansible_host=10.0.0.1\n"
        "[jetsons]\n"
        "orin[01:03] ansible_user=nvidia\n"
        "xavier ansible_host=10.0.0.9 ansible_port=2222 ansible_ssh_private_key_file=~/.ssh/lab\n"
        "[jetsons:vars]\n"
        "ansible_python_interpreter=/usr/bin/python3.8\n"
        "[pis]\n"
        "pi4 ansible_host=10.0.1.4 ansible_user=pi\n"
        "[lab:children]\n"
        "jetsons\n"
        "pis\n"
        "[all:vars]\n"
        "ansible_user=root\n"
    )
    all_hosts = parse_ansible_ini(text)
    assert [e["name"] for e in all_hosts] == ["gateway", "orin01", "orin02", "orin03", "xavier", "pi4"]
    by_name = {e["name"]: e for e in all_hosts}
    assert by_name["gateway"]["user"] == "root"  # [all:vars]
    assert by_name["orin02"] == {"name": "orin02", "host": "orin02", "user": "nvidia", "python": "/usr/bin/python3.8"}
    assert by_name["xavier"]["port"] == "2222" and by_name["xavier"]["user"] == "root"
    assert [e["name"] for e in parse_ansible_ini(text, group="pis")] == ["pi4"]
    assert len(parse_ansible_ini(text, group="lab")) == 5
    with pytest.raises(EdgekitError, match="no group 'cameras'"):
        parse_ansible_ini(text, group="cameras")
    inv = tmp_path / "hosts.ini"
    inv.write_text(text)
    (tmp_path / "cfg").write_text("")
    targets = load_inventory(str(inv), group="jetsons", ssh_config=str(tmp_path / "cfg"))
    assert [(t.name, t.user, t.host, t.port, t.python) for t in targets][-1] == ("xavier", "root", "10.0.0.9", 2222, "/usr/bin/python3.8")


def test_empty_inventory_is_an_error(tmp_path):
    inv = tmp_path / "empty.ini"
    inv.write_text("# nothing\n")
    with pytest.raises(EdgekitError, match="lists no targets"):
        load_inventory(str(inv))


def test_safe_component_keeps_spaces_and_quotes_but_not_separators():
    assert safe_component("lab board 'B'; #2") == "lab board 'B'; #2"
    assert safe_component("a/b\\c") == "a_b_c"
    assert safe_component("..") == "_.."
