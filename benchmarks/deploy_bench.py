"""Deploy transfer speed on loopback: edgekit's sync against OpenSSH scp, same run.

Starts a throwaway sshd on 127.0.0.1 (as the tests do), writes a synthetic
bundle with one random-bytes model of --size MB, then measures, --repeat times each:

* scp -r of the bundle folder into a fresh remote folder (OpenSSH's own client);
* edgekit's first deploy of the bundle into a fresh --remote-dir (library call,
  sync only, doctor off: connect, preflight probe, plan, upload, remote sha256
  verify), timed as a whole like scp is;
* edgekit's redeploy of the unchanged bundle (sync only: nothing to send).

Prints a table with medians. Goals (issue 6): first deploy >= 80 % of scp
throughput; redeploy under 2 s. Run as root (sshd needs it):

    .venv/bin/python benchmarks/deploy_bench.py [--size 50] [--repeat 5]
"""
import argparse
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_sshd_helpers():
    # The loopback sshd lives with the tests; reuse it rather than keep a copy.
    path = os.path.join(REPO, "tests", "deploy", "conftest.py")
    spec = importlib.util.spec_from_file_location("deploy_test_helpers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=float, default=50.0, help="model file size in MB (default 50)")
    parser.add_argument("--repeat", type=int, default=5, help="measurements per method (default 5)")
    args = parser.parse_args()

    from edgekit.host.deploy.agent import build_agent
    from edgekit.host.deploy.pipeline import DeployOptions
    from edgekit.host.deploy.service import deploy
    from edgekit.host.deploy.ssh import SSHOptions
    from edgekit.host.deploy.targets import parse_target

    helpers = _load_sshd_helpers()
    if not os.path.exists(helpers.SSHD) or os.geteuid() != 0:
        sys.exit("needs %s and root" % helpers.SSHD)
    if not os.path.isdir("/run/sshd"):
        os.makedirs("/run/sshd", mode=0o755)
    work = tempfile.mkdtemp(prefix="deploy-bench-")
    server = helpers.SSHServer(os.path.join(work, "sshd"), "bench")
    server.start()
    try:
        size = int(args.size * 1e6)
        bundle = helpers.write_synthetic_bundle(os.path.join(work, "bundles", "bench"), "bench", {"models/fp32.onnx": os.urandom(size)})
        total = sum(os.path.getsize(os.path.join(d, f)) for d, _s, fs in os.walk(bundle) for f in fs)
        agent, _sha = build_agent(os.path.join(work, "agent"))
        config = os.path.join(work, "ssh_config")
        open(config, "w").close()
        target = parse_target(server.target, ssh_config=config)
        ssh = SSHOptions(known_hosts=server.known_hosts, identity_files=(server.client_key,), use_agent=False, look_for_keys=False)

        scp_s, first_s, first_sync_s, redeploy_s = [], [], [], []
        for i in range(args.repeat):
            dest = os.path.join(work, "scp-%d" % i)
            os.makedirs(dest)
            start = time.monotonic()
            subprocess.run(
                ["scp", "-q", "-r", "-P", str(server.port), "-i", server.client_key, "-o", "UserKnownHostsFile=%s" % server.known_hosts,
                 "-o", "BatchMode=yes", bundle, "%s@127.0.0.1:%s/" % (server.user, dest)],
                check=True,
            )
            scp_s.append(time.monotonic() - start)
            shutil.rmtree(dest)

            remote = os.path.join(work, "remote-%d" % i)
            options = DeployOptions(remote_dir=remote, python=sys.executable, run=False, doctor=False, results_dir=os.path.join(work, "results"))
            start = time.monotonic()
            outcome = deploy([target], bundle, ssh, options, agent=agent)[0]
            first_s.append(time.monotonic() - start)
            assert outcome.ok and outcome.sync.bytes_sent >= total, outcome.error
            first_sync_s.append(outcome.sync.upload_seconds)
            start = time.monotonic()
            again = deploy([target], bundle, ssh, options, agent=agent)[0]
            redeploy_s.append(time.monotonic() - start)
            assert again.ok and again.sync.bytes_sent == 0, again.error
            shutil.rmtree(remote)

        mb = total / 1e6
        scp = statistics.median(scp_s)
        first = statistics.median(first_s)
        rows = [
            ("scp -r (OpenSSH %s)" % subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.split(",")[0], scp, mb / scp, "1.00"),
            ("edgekit first deploy (sync only, whole call)", first, mb / first, "%.2f" % (scp / first)),
            ("  of which sending bytes (SFTP upload)", statistics.median(first_sync_s), mb / statistics.median(first_sync_s), ""),
            ("edgekit redeploy, unchanged bundle (whole call)", statistics.median(redeploy_s), None, ""),
        ]
        print("\nDeploy of a %.1f MB bundle over loopback SSH, median of %d runs (%d CPU cores)\n" % (mb, args.repeat, os.cpu_count() or 0))
        print("| method | seconds | MB/s | vs scp throughput |")
        print("|---|---:|---:|---:|")
        for name, sec, rate, ratio in rows:
            print("| %s | %.3f | %s | %s |" % (name, sec, "%.1f" % rate if rate else "-", ratio))
        ratio = scp / first
        print("\nfirst deploy at %.0f %% of scp throughput (goal >= 80 %%): %s" % (100 * ratio, "met" if ratio >= 0.8 else "NOT met"))
        redeploy = statistics.median(redeploy_s)
        print("redeploy %.2f s (goal < 2 s): %s" % (redeploy, "met" if redeploy < 2.0 else "NOT met"))
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
