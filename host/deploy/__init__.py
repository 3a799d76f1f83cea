"""edgekit deploy: take a bundle to boards over SSH (or run it locally), measure there, bring the numbers home.

Small pieces, Fabric-like:

* targets, inventory: ``user@host[:port]``, ~/.ssh/config aliases, ``local``; YAML lists and Ansible INI files
* ssh: connections (host-key policy, authentication, timeouts, one-line errors, ProxyJump)
* shell: quoted commands over SSH or in a local subprocess, silence/total timeouts, process-group stop
* remote_helper (runs on the board) and helper (its host side): probe, plan, hash, run, one process per deploy
* sync: content-addressed, resumable, verified upload over SFTP
* preflight: interpreter, folder, free disk, the agent's doctor
* agent: the agent's command line as the host uses it
* pipeline: one target end to end; fleet: many in a bounded thread pool; service: the library call
* results: the host's store; events, display: what the user sees while it runs
"""
from .lazy_invoke import defer_invoke

defer_invoke()  # before any module of this package imports paramiko

from .service import deploy, find_latest_bundle  # noqa: E402

__all__ = ["deploy", "find_latest_bundle"]
