"""`edgekit deploy` end to end: real sshd, real agent, real bundle, real ONNX Runtime."""
import glob
import json
import os
import shutil
import subprocess
import sys

import pytest

from edgekit.contract.result import validate_result

# Few iterations and a small evaluation keep these tests quick; the numbers are still real.
FAST = ["--iterations", "5", "--warmup", "1"]


def _ssh_args(server, remote_dir, python=None):
    return [
        "-i", server.client_key,
        "--known-hosts", server.known_hosts,
        "--remote-dir", remote_dir,
        "--python", python or sys.executable,
        "--connect-timeout", "5",
    ]


def _results(work, target, bundle):
    return sorted(glob.glob(os.path.join(str(work), "results", glob.escape(target), glob.escape(bundle), "*.json")))


@pytest.mark.ssh
@pytest.mark.slow
def test_full_deploy_then_redeploy_sends_nothing(sshd, cpu_bundle, agent_pyz, edgekit_cli, tmp_path):
    remote = str(tmp_path / "remote")
    first = edgekit_cli("deploy", sshd.target, "--bundle", cpu_bundle, "--agent", agent_pyz[0], *_ssh_args(sshd, remote), *FAST)
    assert first.returncode == 0, first.stderr
    assert "p50 ms" in first.stdout and "fp32" in first.stdout and "int8" in first.stdout
    for stage in ("connect", "preflight", "sync", "doctor", "verify", "run", "fetch", "done"):
        assert "%s: %s" % (sshd.target, stage) in first.stderr
    files = _results(edgekit_cli.cwd, sshd.target, "demo-cpu")
    assert len(files) == 1
    with open(files[0]) as f:
        result = json.load(f)
    assert validate_result(result) == [] and result["ok"] is True
    assert {r["variant"] for r in result["runs"]} == {"fp32", "int8"}
    for run in result["runs"]:
        assert run["status"] == "ok" and run["latency_ms"]["p50"] > 0
        # The board's mAP equals the host's reference for the same variant.
        assert abs(run["accuracy"]["drift"]) <= 0.002
    deploy = result["deploy"]
    manifest_bytes = sum(e["size"] for e in json.load(open(os.path.join(cpu_bundle, "manifest.json")))["files"].values())
    assert deploy["sync"]["bytes_sent"] > manifest_bytes  # everything travelled, agent included
    assert deploy["variants"]["fp32"]["size_bytes"] > 0

    again = edgekit_cli("deploy", sshd.target, "--bundle", cpu_bundle, "--agent", agent_pyz[0], *_ssh_args(sshd, remote), *FAST, "--variant", "fp32", "--json")
    assert again.returncode == 0, again.stderr
    outcome = json.loads(again.stdout)[0]
    assert outcome["ok"] and outcome["sync"]["bytes_sent"] == 0 and outcome["sync"]["files_sent"] == 0
    assert outcome["sync"]["files_present"] == outcome["sync"]["files_total"]
    assert len(_results(edgekit_cli.cwd, sshd.target, "demo-cpu")) == 2


@pytest.mark.slow
def test_deploy_local_builds_the_agent_and_prints_the_table(cpu_bundle, edgekit_cli):
    proc = edgekit_cli("deploy", "local", "--bundle", cpu_bundle, *FAST, "--variant", "int8")
    assert proc.returncode == 0, proc.stderr
    assert "int8" in proc.stdout and "p50 ms" in proc.stdout
    files = _results(edgekit_cli.cwd, "local", "demo-cpu")
    assert len(files) == 1
    result = json.load(open(files[0]))
    assert result["deploy"]["address"] == "local" and result["runs"][0]["status"] == "ok"


@pytest.mark.ssh
def test_remote_without_onnxruntime_gets_the_doctor_message(sshd, cpu_bundle, agent_pyz, edgekit_cli, tmp_path):
    bare = tmp_path / "bare venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    python = str(bare / "bin" / "python")
    proc = edgekit_cli("deploy", sshd.target, "--bundle", cpu_bundle, "--agent", agent_pyz[0], *_ssh_args(sshd, str(tmp_path / "r"), python))
    assert proc.returncode == 2
    errors = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr
    assert "cannot run this bundle yet: it lacks numpy, pillow" in errors[0] and "onnxruntime" in errors[0]
    assert "pip3 install numpy" in errors[0] and "pip3 install onnxruntime" in errors[0]
    # Nothing ran: no result stored.
    assert not os.path.exists(os.path.join(str(edgekit_cli.cwd), "results"))


@pytest.mark.ssh
def test_unknown_host_refused_on_the_command_line(sshd, cpu_bundle, agent_pyz, edgekit_cli, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    args = _ssh_args(sshd, str(tmp_path / "r"))
    args[args.index("--known-hosts") + 1] = str(empty)
    proc = edgekit_cli("deploy", sshd.target, "--bundle", cpu_bundle, "--agent", agent_pyz[0], "--sync-only", *args)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "SHA256:" in proc.stderr and "--accept-new-host-key" in proc.stderr
    accepted = edgekit_cli("deploy", sshd.target, "--bundle", cpu_bundle, "--agent", agent_pyz[0], "--sync-only", "--accept-new-host-key", *args)
    assert accepted.returncode == 0, accepted.stderr
    assert "sync: " in accepted.stdout and empty.read_text().count("ssh-ed25519") == 1


@pytest.mark.ssh
@pytest.mark.slow
def test_names_with_spaces_quotes_and_semicolons(sshd, cpu_bundle, agent_pyz, edgekit_cli, tmp_path):
    odd_bundle = str(tmp_path / "my bundles" / "demo it's; \"v2\"")
    shutil.copytree(cpu_bundle, odd_bundle)
    manifest_path = os.path.join(odd_bundle, "manifest.json")
    manifest = json.load(open(manifest_path))
    manifest["name"] = "demo it's; \"v2\""
    json.dump(manifest, open(manifest_path, "w"), indent=2)
    target_name = "board 'A'; $(touch pwned) #1"
    inventory = tmp_path / "boards.yml"
    inventory.write_text("- name: \"%s\"\n  host: 127.0.0.1\n  user: %s\n  port: %d\n" % (target_name.replace('"', '\\"'), sshd.user, sshd.port))
    remote = str(tmp_path / "remote 'dir'; rm -rf x; \"y\"")
    proc = edgekit_cli(
        "deploy", "--inventory", inventory, "--bundle", odd_bundle, "--agent", agent_pyz[0], *_ssh_args(sshd, remote), *FAST,
        "--variant", "fp32", "--max-images", "4",
    )
    assert proc.returncode == 0, proc.stderr
    files = _results(edgekit_cli.cwd, target_name, "demo it's; \"v2\"")
    assert len(files) == 1, os.listdir(os.path.join(str(edgekit_cli.cwd), "results"))
    assert json.load(open(files[0]))["bundle"]["name"] == "demo it's; \"v2\""
    assert os.path.isdir(os.path.join(remote, "bundles")) and not os.path.exists(os.path.join(str(edgekit_cli.cwd), "pwned"))


@pytest.mark.ssh
@pytest.mark.slow
def test_fleet_with_one_board_down(sshd, sshd_b, cpu_bundle, agent_pyz, edgekit_cli, tmp_path):
    sshd_b.write_known_hosts(sshd.known_hosts + ".b")
    known = tmp_path / "known_hosts"
    known.write_text(open(sshd.known_hosts).read() + open(sshd.known_hosts + ".b").read())
    port_b = sshd_b.port
    sshd_b.stop()  # board b is down
    inventory = tmp_path / "lab.ini"
    inventory.write_text(
        "[lab]\nboard-a ansible_host=127.0.0.1 ansible_port=%d\nboard-b ansible_host=127.0.0.1 ansible_port=%d\n"
        "[lab:vars]\nansible_user=%s\nansible_ssh_private_key_file=%s\n" % (sshd.port, port_b, sshd.user, sshd.client_key)
    )
    # board b needs its own key too; one -i for both keeps the command short.
    proc = edgekit_cli(
        "deploy", "--inventory", inventory, "--group", "lab", "--bundle", cpu_bundle, "--agent", agent_pyz[0],
        "--known-hosts", known, "--remote-dir", tmp_path / "r", "--python", sys.executable, "--connect-timeout", "3",
        *FAST, "--variant", "fp32", "--max-images", "4",
    )
    assert proc.returncode == 2, proc.stderr
    assert "board-a" in proc.stdout and "fp32" in proc.stdout
    errors = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
    assert len(errors) == 1 and "board-b" in errors[0] and "board-a" not in errors[0]
    assert "refused the connection" in errors[0]
    assert len(_results(edgekit_cli.cwd, "board-a", "demo-cpu")) == 1
    assert not os.path.exists(os.path.join(str(edgekit_cli.cwd), "results", "board-b"))


@pytest.mark.ssh
def test_ask_password_prompts_once_and_reports_what_was_tried(sshd, cpu_bundle, agent_pyz, edgekit_cli, tmp_path, make_key):
    # The test server takes keys only, so the password (read from stdin: no terminal here) is refused too.
    args = _ssh_args(sshd, str(tmp_path / "r"))
    args[args.index("-i") + 1] = make_key("stranger")
    proc = subprocess.run(
        [sys.executable, "-c", "from edgekit.host.cli.main import main; main()", "deploy", sshd.target, "--bundle", cpu_bundle,
         "--agent", agent_pyz[0], "--sync-only", "--ask-password", "--no-ssh-agent", *args],
        input="not-the-password\n", cwd=str(edgekit_cli.cwd), env=edgekit_cli.env, capture_output=True, text=True, timeout=60,
        start_new_session=True,  # no controlling terminal: the prompt reads stdin
    )
    assert proc.returncode == 2
    errors = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
    assert len(errors) == 1 and "authentication to %s failed" % sshd.target in errors[0] and "password" in errors[0]


@pytest.mark.slow
def test_exit_status_says_what_failed(cpu_bundle, agent_pyz, edgekit_cli):
    # The doctor is asked about the backend the run will use: no TensorRT here.
    proc = edgekit_cli("deploy", "local", "--bundle", cpu_bundle, "--agent", agent_pyz[0], "--backend", "tensorrt", "--variant", "fp32")
    assert proc.returncode == 2 and "it lacks tensorrt" in proc.stderr
    # Without the doctor the agent runs, the variant fails, the result is kept: exit 1.
    proc = edgekit_cli("deploy", "local", "--bundle", cpu_bundle, "--agent", agent_pyz[0], "--backend", "tensorrt", "--variant", "fp32", "--skip-doctor")
    assert proc.returncode == 1, proc.stderr
    assert "failed" in proc.stdout and "error: local: fp32: " in proc.stderr and "TensorRT" in proc.stderr
    result = json.load(open(_results(edgekit_cli.cwd, "local", "demo-cpu")[0]))
    assert result["ok"] is False and result["runs"][0]["status"] == "failed"
