"""Inventories: many targets from one file.

Two formats, chosen by extension (``.yml``/``.yaml`` vs anything else) or, failing
that, by the first line:

* a plain YAML list (optionally under ``targets:``) of ``user@host[:port]`` strings or
  small mappings ``{name, host, user, port, key, python, password}``. The reader is
  deliberately tiny: flat lists only, no anchors or nesting.
* Ansible's INI inventory: ``[group]`` sections of ``alias key=value ...`` lines,
  ``[group:vars]`` and ``[group:children]``, numeric ranges like ``orin[01:03]``,
  and the variables ansible_host, ansible_user, ansible_port,
  ansible_ssh_private_key_file, ansible_python_interpreter, ansible_password
  and ansible_connection=local.
"""
import dataclasses
import os
import re
import shlex
from typing import Dict, List, Optional, Tuple

from edgekit.contract.errors import EdgekitError
from .targets import LOCAL, Target, parse_target

_FIX_YAML = "write a list of entries like '- nvidia@orin.local' or '- {name: orin, host: 10.0.0.2, user: nvidia}' (see docs/deploy.md)"
_YAML_KEYS = ("name", "host", "user", "port", "key", "python", "password")


def load_inventory(path: str, group: Optional[str] = None, ssh_config: Optional[str] = None) -> List[Target]:
    """Targets listed in an inventory file (``group`` selects an INI group)."""
    try:
        with open(os.path.expanduser(path), "r", encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise EdgekitError("cannot read inventory %s (%s)" % (path, exc.strerror), "pass an existing file to --inventory")
    if _looks_like_yaml(path, text):
        if group:
            raise EdgekitError("--group %s given but %s is a YAML list without groups" % (group, path), "drop --group or use an INI inventory")
        entries = parse_yaml_list(text, path)
    else:
        entries = parse_ansible_ini(text, path, group)
    if not entries:
        raise EdgekitError("inventory %s lists no targets%s" % (path, " in group %r" % group if group else ""), "add targets to it")
    return [_entry_target(e, path, ssh_config) for e in entries]


def _looks_like_yaml(path: str, text: str) -> bool:
    if path.lower().endswith((".yml", ".yaml")):
        return True
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";")):
            return line.startswith("-") or line == "targets:" or line == "---"
    return False


def _scalar(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        inner = text[1:-1]
        return inner.replace("''", "'") if text[0] == "'" else inner.replace('\\"', '"').replace("\\\\", "\\")
    # A trailing comment after an unquoted value.
    return re.split(r"\s+#", text, 1)[0].strip()


def _flow_mapping(text: str, where: str) -> Dict[str, str]:
    body = text.strip()[1:-1]
    out = {}
    for part in re.findall(r"""(?:[^,'"]|'[^']*'|"[^"]*")+""", body):
        if part.strip():
            key, sep, value = part.partition(":")
            if not sep:
                raise EdgekitError("%s: %r is not key: value" % (where, part.strip()), _FIX_YAML)
            out[key.strip()] = _scalar(value)
    return out


def parse_yaml_list(text: str, where: str = "inventory") -> List[Dict[str, str]]:
    """A flat YAML list of strings or one-level mappings (see the module docstring)."""
    entries: List[Dict[str, str]] = []
    current: Optional[Dict[str, str]] = None
    item_indent = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped in ("---", "targets:"):
            continue
        indent = len(line) - len(line.lstrip(" "))
        loc = "%s line %d" % (where, number)
        if stripped.startswith("- ") or stripped == "-":
            item = stripped[1:].strip()
            item_indent = indent + 2
            if item.startswith("{") and item.endswith("}"):
                current = _flow_mapping(item, loc)
            elif re.match(r"^[A-Za-z_]+\s*:(\s|$)", item):
                key, _, value = item.partition(":")
                current = {key.strip(): _scalar(value)}
            elif item:
                current = {"host": _scalar(item)}
            else:
                current = {}
            entries.append(current)
        elif current is not None and indent >= item_indent and re.match(r"^[A-Za-z_]+\s*:", stripped):
            key, _, value = stripped.partition(":")
            current[key.strip()] = _scalar(value)
        else:
            raise EdgekitError("%s: cannot read %r" % (loc, stripped), _FIX_YAML)
    for i, entry in enumerate(entries):
        unknown = [k for k in entry if k not in _YAML_KEYS]
        if unknown:
            raise EdgekitError("%s: entry %d has unknown key %r" % (where, i + 1, unknown[0]), "use only %s" % ", ".join(_YAML_KEYS))
        if not entry.get("host"):
            raise EdgekitError("%s: entry %d has no host" % (where, i + 1), _FIX_YAML)
    return entries


def _expand_range(pattern: str) -> List[str]:
    """Ansible host ranges: ``orin[01:03]`` -> orin01, orin02, orin03."""
    m = re.search(r"\[(\d+):(\d+)\]", pattern)
    if not m:
        return [pattern]
    lo, hi = m.group(1), m.group(2)
    width = len(lo) if lo.startswith("0") else 0
    names = []
    for n in range(int(lo), int(hi) + 1):
        names.extend(_expand_range(pattern[: m.start()] + str(n).zfill(width) + pattern[m.end():]))
    return names


def parse_ansible_ini(text: str, where: str = "inventory", group: Optional[str] = None) -> List[Dict[str, str]]:
    """Hosts of Ansible's INI inventory, with group and host variables applied."""
    hosts: Dict[str, Dict[str, str]] = {}
    order: List[str] = []
    members: Dict[str, List[str]] = {"all": [], "ungrouped": []}
    children: Dict[str, List[str]] = {}
    group_vars: Dict[str, Dict[str, str]] = {}
    section, kind = "ungrouped", "hosts"
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        loc = "%s line %d" % (where, number)
        if line.startswith("["):
            m = re.match(r"^\[([^\]:]+)(?::(vars|children))?\]$", line)
            if not m:
                raise EdgekitError("%s: bad section header %r" % (loc, line), "write [group], [group:vars] or [group:children]")
            section, kind = m.group(1), m.group(2) or "hosts"
            members.setdefault(section, [])
            continue
        try:
            words = shlex.split(line, comments=True)
        except ValueError as exc:
            raise EdgekitError("%s: %s" % (loc, exc), "close the quotes on that line")
        if not words:
            continue
        if kind == "children":
            children.setdefault(section, []).append(words[0])
        elif kind == "vars":
            key, sep, value = line.partition("=")
            if not sep:
                raise EdgekitError("%s: %r is not key=value" % (loc, line), "write variables as name=value")
            group_vars.setdefault(section, {})[key.strip()] = _scalar(value)
        else:
            variables = {}
            for word in words[1:]:
                key, sep, value = word.partition("=")
                if not sep:
                    raise EdgekitError("%s: %r is not key=value" % (loc, word), "write host variables as name=value")
                variables[key] = value
            for alias in _expand_range(words[0]):
                if alias not in hosts:
                    hosts[alias] = {}
                    order.append(alias)
                hosts[alias].update(variables)
                members[section].append(alias)

    def expand(name: str, seen: Tuple[str, ...] = ()) -> List[str]:
        if name in seen:
            return []
        out = list(members.get(name, []))
        for child in children.get(name, []):
            out.extend(expand(child, seen + (name,)))
        return out

    if group and group != "all" and group not in members and group not in children:
        known = sorted(set(members) | set(children) - {"ungrouped"})
        raise EdgekitError("inventory %s has no group %r" % (where, group), "use one of %s" % ", ".join(known))
    selected = set(expand(group)) if group and group != "all" else set(order)

    def groups_of(alias: str) -> List[str]:
        # Variables apply from the widest group to the narrowest; host variables win.
        found = [g for g in list(members) + list(children) if alias in expand(g) and g not in ("all", "ungrouped")]
        return sorted(set(found), key=lambda g: -len(expand(g)))

    entries = []
    for alias in order:
        if alias not in selected:
            continue
        merged: Dict[str, str] = dict(group_vars.get("all", {}))
        for g in groups_of(alias):
            merged.update(group_vars.get(g, {}))
        merged.update(hosts[alias])
        entry = {"name": alias, "host": merged.get("ansible_host", alias)}
        if merged.get("ansible_connection") == "local":
            entry["host"] = LOCAL
        for src, dst in (
            ("ansible_user", "user"),
            ("ansible_port", "port"),
            ("ansible_ssh_private_key_file", "key"),
            ("ansible_python_interpreter", "python"),
            ("ansible_password", "password"),
            ("ansible_ssh_pass", "password"),
        ):
            if merged.get(src):
                entry[dst] = merged[src]
        entries.append(entry)
    return entries


def _entry_target(entry: Dict[str, str], where: str, ssh_config: Optional[str]) -> Target:
    host = entry["host"]
    name = entry.get("name") or host
    if host == LOCAL:
        return Target(name=name, python=entry.get("python"))
    spec = host
    if entry.get("port"):
        if not str(entry["port"]).isdigit():
            raise EdgekitError("%s: target %r has port %r" % (where, name, entry["port"]), "use a port number")
        bare = host.split("@")[-1]
        if ":" in bare and not bare.startswith("["):  # an IPv6 address
            spec = host[: len(host) - len(bare)] + "[%s]" % bare
        spec = "%s:%s" % (spec, entry["port"])
    if entry.get("user") and "@" not in spec:
        spec = "%s@%s" % (entry["user"], spec)
    keys = (os.path.expanduser(entry["key"]),) if entry.get("key") else ()
    target = parse_target(spec, ssh_config=ssh_config, name=name, identity_files=keys)
    if entry.get("python") or entry.get("password"):
        target = dataclasses.replace(target, python=entry.get("python"), password=entry.get("password"))
    return target
