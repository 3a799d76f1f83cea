"""Deploy and agent under faults, concurrency and hostile input (issue 14).

Every test talks to the real loopback sshd of conftest.py, bounded in count and time.
"""
import dataclasses
import json
import os
import threading

import pytest

from edgekit.contract.errors import EdgekitError
from edgekit.host.deploy.results import save_result
from edgekit.host.deploy.ssh import connect
from edgekit.host.deploy.targets import parse_target

MB = 1024 * 1024


def _target(sshd, tmp_path):
    (tmp_path / "ssh_config").write_text("")
    return parse_target(sshd.target, ssh_config=str(tmp_path / "ssh_config"))


@pytest.mark.ssh
def test_key_refused_hint_is_a_valid_ssh_copy_id_line(sshd, ssh_options, tmp_path, make_key):
    options = dataclasses.replace(ssh_options, identity_files=(make_key("stranger"),))
    with pytest.raises(EdgekitError) as info:
        connect(_target(sshd, tmp_path), options)
    assert "ssh-copy-id -p %d %s@127.0.0.1" % (sshd.port, sshd.user) in info.value.fix
    assert "127.0.0.1:%d" % sshd.port not in info.value.fix


def _minimal_result():
    from edgekit.contract.result import new_result, finish

    return finish(new_result("run", {}, {"name": "b", "manifest_sha256": "0" * 64, "path": "b"}, {}))


def test_concurrent_result_writers_never_overwrite_each_other(tmp_path):
    # Eight writers with the same host timestamp, 20 rounds: each result must land in its own file.
    results = str(tmp_path / "results")
    writers, rounds = 8, 20
    paths = []

    def write(i, barrier):
        barrier.wait()
        path, _record = save_result(results, "board", "bundle", _minimal_result(), {"host_time": "20260101T000000.00Z", "writer": i})
        paths.append(path)

    for r in range(rounds):
        barrier = threading.Barrier(writers)
        threads = [threading.Thread(target=write, args=(r * writers + i, barrier)) for i in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert len(set(paths)) == writers * rounds
    stored = sorted(json.load(open(p))["deploy"]["writer"] for p in paths)
    assert stored == list(range(writers * rounds))
    folder = os.path.join(results, "board", "bundle")
    assert sorted(os.listdir(folder)) == sorted(os.path.basename(p) for p in paths)  # no temporary files left


def _agent(*args, timeout=120):
    import subprocess
    import sys

    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return subprocess.run([sys.executable, "-m", "edgekit.device"] + list(args), capture_output=True, text=True, timeout=timeout, env=env)


def _edit_manifest(bundle, edit):
    path = os.path.join(bundle, "manifest.json")
    with open(path) as f:
        manifest = json.load(f)
    edit(manifest)
    with open(path, "w") as f:
        json.dump(manifest, f)


def _one_error_line(stderr):
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr and "internal error" not in stderr
    return lines[0]


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("size", "12", "size is '12', not a whole number of bytes"),
        ("size", -1, "size is -1, not a whole number of bytes"),
        ("size", True, "size is True, not a whole number of bytes"),
        ("sha256", "../../../etc/passwd", "not 64 lowercase hex characters"),
        ("sha256", "A" * 64, "not 64 lowercase hex characters"),
    ],
)
def test_mistyped_manifest_entries_are_one_line_errors_on_host_and_agent(synthetic_bundle, field, value, words):
    from edgekit.host.deploy.sync import load_local_bundle

    bundle = synthetic_bundle("typed", {"models/fp32.onnx": b"model", "x.txt": b"x"})
    _edit_manifest(bundle, lambda m: m["files"]["x.txt"].update({field: value}))
    with pytest.raises(EdgekitError) as info:
        load_local_bundle(bundle)  # the host's side
    assert words in info.value.one_line() and "files['x.txt']" in info.value.one_line()
    for command in ("verify", "run"):
        proc = _agent(command, bundle, "--progress", "none") if command == "run" else _agent(command, bundle)
        assert proc.returncode == 2, proc.stderr
        assert words in _one_error_line(proc.stderr)
        assert proc.stdout == ""  # no result to give, so none printed


def _link_out(bundle, rel, tmp_path):
    """Replace a bundle file by a symlink to a host file with the same bytes (sizes and hashes still match)."""
    path = os.path.join(bundle, *rel.split("/"))
    outside = str(tmp_path / "host-secret")
    os.replace(path, outside)
    os.symlink(outside, path)


def test_a_symlink_in_a_folder_bundle_is_refused_by_deploy(synthetic_bundle, tmp_path, edgekit_cli):
    from edgekit.host.deploy.sync import load_local_bundle

    bundle = synthetic_bundle("linked", {"models/fp32.onnx": b"model", "eval/x.txt": b"secret"})
    _link_out(bundle, "eval/x.txt", tmp_path)
    with pytest.raises(EdgekitError, match=r"eval/x\.txt is a symbolic link"):
        load_local_bundle(bundle)
    proc = edgekit_cli("deploy", "local", "--bundle", bundle, timeout=120)
    assert proc.returncode == 2, proc.stderr
    line = _one_error_line(proc.stderr)
    assert "eval/x.txt is a symbolic link" in line and "refusing to deploy it" in line


def test_a_bundle_the_agent_refuses_is_one_clear_preflight_sentence(synthetic_bundle, tmp_path):
    # What `deploy local` met: the agent's doctor refused the bundle (a file that leaves it).
    from edgekit.host.deploy.preflight import check_doctor

    bundle = synthetic_bundle("leaves", {"models/fp32.onnx": b"model", "eval/x.txt": b"secret"})
    _link_out(bundle, "eval/x.txt", tmp_path)
    doctor = _agent("doctor", bundle)
    with pytest.raises(EdgekitError) as info:
        check_doctor({"rc": doctor.returncode, "stdout": doctor.stdout, "stderr": doctor.stderr}, "local")
    line = info.value.one_line()
    assert line.startswith("the agent on local refuses the bundle: manifest file 'eval/x.txt' points outside the bundle; refusing"), line
    assert "lacks" not in line and "install with" not in line


def _random(n, seed):
    import random

    return random.Random(seed).randbytes(n)


def _tree_ok(root, bundle_dir):
    """Every file of the deployed bundle on the 'board' matches its sha256; no final name holds a partial file."""
    import hashlib

    from edgekit.host.deploy.sync import bundle_rel, load_local_bundle

    bundle = load_local_bundle(bundle_dir)
    for f in bundle.files:
        with open(os.path.join(root, bundle_rel(bundle.manifest_sha256), *f.rel.split("/")), "rb") as g:
            assert hashlib.sha256(g.read()).hexdigest() == f.sha256, f.rel


@pytest.mark.ssh
@pytest.mark.parametrize("writers,bundles", [(2, "same"), (8, "same"), (8, "different")])
def test_concurrent_deploys_to_one_board_all_succeed(sshd, ssh_options, synthetic_bundle, agent_pyz, tmp_path, remote_python, writers, bundles):
    """Deploys at once to one board's store: of one bundle (the same .partial names
    raced), or of different bundles sharing their images (the reuse path raced)."""
    from edgekit.host.deploy.pipeline import DeployOptions
    from edgekit.host.deploy.service import deploy

    images = {"eval/images/%03d.jpg" % i: _random(20_000, 100 + i) for i in range(40)}
    if bundles == "same":
        paths = [synthetic_bundle("shared", dict({"models/fp32.onnx": _random(4 * MB, 1)}, **images))] * writers
    else:
        paths = [synthetic_bundle("own-%d" % i, dict({"models/fp32.onnx": _random(2 * MB, 10 + i)}, **images)) for i in range(writers)]
    target = _target(sshd, tmp_path)
    remote = str(tmp_path / "remote")
    options = DeployOptions(remote_dir=remote, python=remote_python, run=False, doctor=False, results_dir=str(tmp_path / "results"))
    outcomes = [None] * writers
    barrier = threading.Barrier(writers)

    def one(i):
        barrier.wait()
        outcomes[i] = deploy([target], paths[i], ssh_options, options, agent=agent_pyz[0])[0]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    assert [o.error for o in outcomes] == [None] * writers
    assert all(o.ok for o in outcomes)
    for path in set(paths):
        _tree_ok(remote, path)
        again = deploy([target], path, ssh_options, options, agent=agent_pyz[0])[0]
        assert again.ok and again.sync.bytes_sent == 0
    leftovers = [os.path.join(d, f) for d, _, names in os.walk(remote) for f in names if ".partial" in f]
    assert leftovers == []







@pytest.mark.ssh
@pytest.mark.parametrize("where", ["remote", "local"])
def test_the_agent_stops_when_the_host_is_killed(where, sshd, cpu_bundle, agent_pyz, edgekit_cli, tmp_path, agent_procs):
    """kill -9 of `edgekit deploy` mid-run: the agent (on the board, or here for `local`)
    stops on its own: its launcher sees its stdin, held open by the host, reach EOF."""
    import shutil
    import signal
    import subprocess
    import sys
    import time

    if where == "remote":
        marker = str(tmp_path / "remote kill-9") + "/agent/"
        target = [sshd.target, "-i", sshd.client_key, "--known-hosts", sshd.known_hosts, "--remote-dir", str(tmp_path / "remote kill-9")]
        agent = agent_pyz[0]
    else:
        # The local agent runs from --agent's path: a copy of its own names this test's processes.
        agent = marker = str(tmp_path / "local kill-9 agent.pyz")
        shutil.copyfile(agent_pyz[0], agent)
        target = ["local"]
    args = [sys.executable, "-c", "from edgekit.host.cli.main import main; main()", "deploy"] + target + [
        "--bundle", cpu_bundle, "--agent", agent, "--python", sys.executable, "--variant", "fp32", "--iterations", "1000000", "--warmup", "1",
    ]
    proc = subprocess.Popen(args, cwd=str(edgekit_cli.cwd), env=edgekit_cli.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while not agent_procs.find(marker) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert agent_procs.find(marker), "the agent never started"
        time.sleep(1.0)
        proc.send_signal(signal.SIGKILL)  # the host dies: no Ctrl-C handler, no goodbye to the board
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    left = [] if agent_procs.gone_within(marker, 10) else agent_procs.find(marker)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert left == [], "agent processes %s still running 10 s after the host died" % left


@pytest.fixture
def small_disk(tmp_path):
    """An 80 MB tmpfs as the board's --remote-dir (needs root, as the sshd tests do)."""
    import subprocess

    mount = tmp_path / "small disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=80m", "tmpfs", str(mount)], capture_output=True, text=True)
    if proc.returncode != 0:
        from .conftest import unavailable

        unavailable("cannot mount a tmpfs here (%s)" % proc.stderr.strip())
    yield str(mount)
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.ssh
def test_a_small_remote_disk_is_refused_before_the_first_byte(sshd, ssh_options, synthetic_bundle, agent_pyz, tmp_path, remote_python, small_disk):
    from edgekit.host.deploy.pipeline import DeployOptions
    from edgekit.host.deploy.service import deploy

    bundle = synthetic_bundle("too big", {"models/fp32.onnx": _random(20 * MB, 9), "eval/a.jpg": b"a"})
    options = DeployOptions(remote_dir=small_disk, python=remote_python, run=False, results_dir=str(tmp_path / "results"))
    outcome = deploy([_target(sshd, tmp_path)], bundle, ssh_options, options, agent=agent_pyz[0])[0]
    assert not outcome.ok
    # The filesystem, what is free and what is needed, in one line.
    assert "free on the filesystem at %s" % small_disk in outcome.error, outcome.error
    assert "MB free" in outcome.error and "this deploy needs" in outcome.error and "nothing was sent" in outcome.error
    written = sum(os.path.getsize(os.path.join(d, n)) for d, _s, names in os.walk(small_disk) for n in names)
    assert written == 0


def test_the_agent_run_reports_a_declared_file_that_is_missing(synthetic_bundle):
    bundle = synthetic_bundle("gap", {"models/fp32.onnx": b"not a model", "reports/prune.json": b"{}"})
    os.remove(os.path.join(bundle, "reports", "prune.json"))
    proc = _agent("bench", bundle, "--progress", "none", "--iterations", "1", "--warmup", "0")
    result = json.loads(proc.stdout)
    assert "the bundle declares reports/prune.json but it is missing; copy the bundle again or rebuild it" in result["warnings"], result["warnings"]
    assert result["ok"] is False


@pytest.mark.ssh
def test_a_stopped_agent_is_given_up_within_one_and_a_half_idle_limits(sshd, cpu_bundle, agent_pyz, edgekit_cli, tmp_path, agent_procs):
    import signal
    import subprocess
    import sys
    import time

    idle = 3.0
    remote = str(tmp_path / "remote stalled")
    args = [
        sys.executable, "-c", "from edgekit.host.cli.main import main; main()", "deploy", sshd.target, "--bundle", cpu_bundle,
        "--agent", agent_pyz[0], "-i", sshd.client_key, "--known-hosts", sshd.known_hosts, "--remote-dir", remote,
        "--python", sys.executable, "--variant", "fp32", "--iterations", "1000000", "--warmup", "1", "--idle-timeout", "%g" % idle,
    ]
    proc = subprocess.Popen(args, cwd=str(edgekit_cli.cwd), env=edgekit_cli.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while not agent_procs.find(remote + "/agent/") and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert agent_procs.find(remote + "/agent/"), "the agent never started"
        time.sleep(2 * idle)  # running, though quiet at times: the heartbeat keeps it alive
        assert proc.poll() is None
        # Taken now, not when the launcher first appeared: on a loaded machine the
        # launcher can be seen before it has started the agent, and stopping only
        # the launcher leaves the agent talking.
        pids = agent_procs.find(remote + "/agent/")
        assert len(pids) >= 2, "expected the launcher and the agent, found %s" % pids
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)  # a stalled agent (and its launcher)
        stopped = time.monotonic()
        _out, err = proc.communicate(timeout=60)
        elapsed = time.monotonic() - stopped
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in agent_procs.find(remote + "/agent/"):
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 2, err
    assert "went silent for %gs" % idle in err and "Traceback" not in err
    assert elapsed < 1.5 * idle + 1.5, "gave up after %.1f s with an idle limit of %g s" % (elapsed, idle)
    assert agent_procs.gone_within(remote + "/agent/", 10)


KILL_CYCLES = 30  # bounded for CI; each cycle is one killed deploy and one clean redeploy


def _largest_partial(folder):
    """The longest upload in progress under ``folder`` (files come and go while we look)."""
    sizes = [0]
    for d, _, names in os.walk(folder):
        for f in names:
            if f.endswith(".partial") and not f.endswith(".link.partial"):
                try:
                    sizes.append(os.path.getsize(os.path.join(d, f)))
                except FileNotFoundError:  # renamed to its final name since the listing
                    pass
    return max(sizes)


@pytest.mark.ssh
@pytest.mark.slow
def test_deploys_killed_at_random_moments_always_redeploy_cleanly(sshd, ssh_options, synthetic_bundle, agent_pyz, edgekit_cli, tmp_path, remote_python, agent_procs):
    """Each cycle: a new bundle (new model, the same images) deployed by the CLI and killed
    (SIGINT or SIGKILL) at a random moment of its model's upload, then a clean redeploy
    that must succeed, send only what the killed one had not (it resumes the partial
    file), and leave a tree that verifies with no partial file under a final name."""
    import random
    import signal
    import subprocess
    import sys
    import time

    from edgekit.contract.manifest import manifest_sha256
    from edgekit.host.deploy.pipeline import DeployOptions
    from edgekit.host.deploy.service import deploy

    images = {"eval/images/%03d.jpg" % i: _random(30_000, 300 + i) for i in range(30)}
    remote = str(tmp_path / "remote killed")
    target = _target(sshd, tmp_path)
    options = DeployOptions(remote_dir=remote, python=remote_python, run=False, doctor=False, results_dir=str(tmp_path / "results"))
    rng = random.Random(14)
    kills = resent = resumed = mid_upload = 0
    for cycle in range(KILL_CYCLES):
        model = _random(16 * MB, 1000 + cycle)
        bundle = synthetic_bundle("killed-%d" % cycle, dict({"models/fp32.onnx": model}, **images))
        args = [
            sys.executable, "-c", "from edgekit.host.cli.main import main; main()", "deploy", sshd.target, "--bundle", bundle,
            "--agent", agent_pyz[0], "-i", sshd.client_key, "--known-hosts", sshd.known_hosts, "--remote-dir", remote,
            "--python", remote_python, "--sync-only", "--skip-doctor",
        ]
        proc = subprocess.Popen(args, cwd=str(edgekit_cli.cwd), env=edgekit_cli.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # A random moment of the model's upload, chosen by progress (a random share of the
        # model on the board), not by time: how fast 16 MB travel depends on the machine's load.
        folder = os.path.join(remote, "bundles", manifest_sha256(bundle))
        at = int(len(model) * rng.uniform(0.02, 0.9))
        deadline = time.monotonic() + 30
        while _largest_partial(folder) < at and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        if proc.poll() is None:
            proc.send_signal(rng.choice([signal.SIGINT, signal.SIGKILL]))
            kills += 1
        proc.wait(30)
        left = _largest_partial(folder)
        mid_upload += 1 if left else 0
        clean = deploy([target], bundle, ssh_options, options, agent=agent_pyz[0])[0]
        assert clean.ok, "cycle %d: %s" % (cycle, clean.error)
        manifest_size = os.path.getsize(os.path.join(bundle, "manifest.json"))
        # After the first cycle the agent and images are on the board: only the rest of the model and the manifest travel.
        if cycle > 0:
            assert clean.sync.bytes_sent <= len(model) - left + manifest_size, "cycle %d resent %d bytes (%d were on the board)" % (cycle, clean.sync.bytes_sent, left)
        resent += clean.sync.bytes_sent
        resumed += clean.sync.files_resumed
        _tree_ok(remote, bundle)
    assert kills >= KILL_CYCLES // 2  # most cycles really interrupted a deploy
    assert mid_upload >= KILL_CYCLES // 3 and resumed >= mid_upload - 1  # the kills landed mid-upload, and those uploads resumed
    print("\nkill cycles: %d, kills: %d, killed mid-upload: %d, files resumed: %d, bytes sent by the clean redeploys: %d of %d" % (
        KILL_CYCLES, kills, mid_upload, resumed, resent, KILL_CYCLES * 16 * MB))
    assert agent_procs.find(remote) == []


@pytest.mark.ssh
@pytest.mark.slow
def test_a_fleet_with_one_board_killed_mid_upload_and_one_stalled(make_sshd, cpu_bundle, agent_pyz, tmp_path, remote_python, agent_procs):
    """Four boards in one deploy: one dies mid-upload (its sshd and sessions killed), one
    stalls in the run (its agent stopped). The other two finish and are stored exactly
    once; the two faults fail with their cause, the stall within 1.5 idle limits; no
    agent is left running and the store verifies."""
    import signal
    import time

    from edgekit.contract.agent_command import AgentCall
    from edgekit.host.deploy.pipeline import DeployOptions
    from edgekit.host.deploy.service import deploy
    from edgekit.host.deploy.ssh import SSHOptions
    from edgekit.host.deploy.targets import Target

    names = ["ok-1", "killed", "stalled", "ok-2"]
    boards = {name: make_sshd(name) for name in names}
    known = str(tmp_path / "known_hosts")
    with open(known, "w") as f:
        f.write("".join(b.host_key_line for b in boards.values()))
    idle = 6.0
    ssh_options = SSHOptions(known_hosts=known, identity_files=tuple(b.client_key for b in boards.values()), use_agent=False,
                             look_for_keys=False, connect_timeout=5.0, idle_timeout=idle)
    targets = [Target(name=n, host="127.0.0.1", user=b.user, port=b.port) for n, b in boards.items()]
    remote = str(tmp_path / "fleet store")
    results = str(tmp_path / "results")
    options = DeployOptions(remote_dir=remote, python=remote_python, results_dir=results,
                            agent=AgentCall(["fp32"], warmup=2, iterations=30, max_images=8))
    marks = {}

    def sessions_of(name):
        """Every process one board's sshd runs (its sessions, the helper, the agent)."""
        return agent_procs.descendants(boards[name].proc.pid)

    def on_event(event):
        target = event.get("target")
        if target == "killed" and event["event"] == "step" and event["total"] and event["done"] > event["total"] * 0.3 and "killed" not in marks:
            marks["killed"] = time.monotonic()
            for pid in sessions_of("killed") + [boards["killed"].proc.pid]:
                try:
                    os.kill(pid, signal.SIGKILL)  # the board's power is cut
                except OSError:
                    pass
        if target == "stalled" and event["event"] == "agent" and event["agent"].get("event") == "start" and "stalled" not in marks:
            agents = set(agent_procs.find(remote + "/agent/"))
            stopped = [p for p in sessions_of("stalled") if p in agents]
            for pid in stopped:
                os.kill(pid, signal.SIGSTOP)  # a hung driver: the agent and its launcher stop answering
            marks["stalled"] = time.monotonic()
            marks["stopped"] = stopped
        if event["event"] == "stage" and event["status"] == "failed":
            marks["failed " + target] = time.monotonic()

    started = time.monotonic()
    outcomes = {o.target.name: o for o in deploy(targets, cpu_bundle, ssh_options, options, progress=on_event, jobs=4, agent=agent_pyz[0])}
    assert "killed" in marks and marks.get("stopped"), "the faults were not injected: %s" % marks
    assert outcomes["ok-1"].ok and outcomes["ok-2"].ok, (outcomes["ok-1"].error, outcomes["ok-2"].error)
    assert not outcomes["killed"].ok and outcomes["killed"].stage in ("sync", "failed") and outcomes["killed"].result is None
    assert "killed" in outcomes["killed"].error or "broke" in outcomes["killed"].error or "closed" in outcomes["killed"].error, outcomes["killed"].error
    stalled = outcomes["stalled"]
    assert not stalled.ok and "went silent for %gs" % idle in stalled.error, stalled.error
    given_up = marks["failed stalled"] - marks["stalled"]
    assert given_up < 1.5 * idle + 1.0, "the stalled board was given up after %.1f s with an idle limit of %g s" % (given_up, idle)
    # Every completed result stored exactly once; none for the failed boards.
    stored = sorted(os.path.relpath(os.path.join(d, f), results).split(os.sep)[0] for d, _, fs in os.walk(results) for f in fs if f.endswith(".json"))
    assert stored == ["ok-1", "ok-2"]
    assert agent_procs.gone_within(remote + "/agent/", 10), "agents left: %s" % agent_procs.find(remote + "/agent/")
    _tree_ok(remote, cpu_bundle)
    print("\nfleet of 4: ok %s, killed after %.1f s, stalled board given up %.1f s after it stopped (idle limit %g s), total %.1f s" % (
        [n for n, o in outcomes.items() if o.ok], marks["killed"] - started, given_up, idle, time.monotonic() - started))
