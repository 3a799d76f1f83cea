"""Deploy transfer speed on loopback: ``edgekit deploy --sync-only`` against OpenSSH scp.

Starts a throwaway sshd on 127.0.0.1 (the tests' one, tests/deploy/conftest.py)
and times, as whole commands (a fresh process each, the way a user runs them),
interleaved A/B, same key and port:

* ``scp -q -r`` of the bundle folder into a fresh remote folder;
* ``edgekit deploy --sync-only --skip-doctor`` of the same bundle into a fresh
  ``--remote-dir`` (connect, probe, plan, upload, per-file sha256 on the board);
* the same deploy again, unchanged bundle (nothing to send).

Two shapes: many small files (``--bundle``, default the demo bundle under
bundles/demo-cpu, else a synthetic one of the demo's shape: 250 images of
~40 kB and 4 models, 13.6 MB) and one large file (``--size`` MB of random bytes).
Prints a markdown table of medians. Goals (issue 14): >= 0.9x scp throughput on
both shapes; the unchanged redeploy under 0.5 s. Run as root (sshd needs it):

    .venv/bin/python benchmarks/deploy_bench.py [--bundle DIR] [--size 50] [--repeat 7]
"""
import argparse
import importlib.util
import os
import random
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


def _demo_shaped(helpers, out: str) -> str:
    rng = random.Random(14)
    files = {"models/fp32.onnx": rng.randbytes(5_800_000), "models/int8.onnx": rng.randbytes(1_700_000),
             "models/p30-fp32.onnx": rng.randbytes(2_900_000), "models/p30-int8.onnx": rng.randbytes(900_000)}
    for i in range(250):
        files["eval/images/val_%06d.jpg" % i] = rng.randbytes(rng.randint(20_000, 70_000))
    return helpers.write_synthetic_bundle(out, "demo-shaped", files)


def _timed(argv, env) -> float:
    start = time.monotonic()
    proc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    took = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit("%s failed (%d): %s" % (argv[0], proc.returncode, proc.stderr.strip()[-400:]))
    return took


def _size(folder: str):
    sizes = [os.path.getsize(os.path.join(d, f)) for d, _s, fs in os.walk(folder) for f in fs]
    return len(sizes), sum(sizes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", help="the many-small-files bundle (default: bundles/demo-cpu, else a synthetic one of its shape)")
    parser.add_argument("--size", type=float, default=50.0, help="the large file's size in MB (default 50)")
    parser.add_argument("--repeat", type=int, default=7, help="measurements per method and shape (default 7)")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]  # what else the machine runs: the bench's own load shows in the one after

    from edgekit.host.deploy.agent import build_agent

    helpers = _load_sshd_helpers()
    if not os.path.exists(helpers.SSHD) or os.geteuid() != 0:
        sys.exit("needs %s and root" % helpers.SSHD)
    if not os.path.isdir("/run/sshd"):
        os.makedirs("/run/sshd", mode=0o755)
    work = tempfile.mkdtemp(prefix="deploy-bench-")
    server = helpers.SSHServer(os.path.join(work, "sshd"), "bench")
    server.start()
    try:
        small = args.bundle or os.path.join(REPO, "bundles", "demo-cpu")
        if not os.path.isfile(os.path.join(small, "manifest.json")):
            small = _demo_shaped(helpers, os.path.join(work, "bundles", "demo-shaped"))
        large = helpers.write_synthetic_bundle(os.path.join(work, "bundles", "large"), "large", {"models/fp32.onnx": os.urandom(int(args.size * 1e6))})
        agent, _sha = build_agent(os.path.join(work, "agent"))
        config = os.path.join(work, "ssh_config")
        open(config, "w").close()
        env = dict(os.environ, HOME=os.path.join(work, "home"))
        env.pop("SSH_AUTH_SOCK", None)
        os.makedirs(env["HOME"])
        scp = ["scp", "-q", "-r", "-P", str(server.port), "-i", server.client_key, "-o", "UserKnownHostsFile=%s" % server.known_hosts,
               "-o", "BatchMode=yes", "-F", config]
        edgekit = [sys.executable, "-c", "from edgekit.host.cli.main import main; main()", "deploy", server.target, "--sync-only", "--skip-doctor",
                   "--known-hosts", server.known_hosts, "-i", server.client_key, "--no-ssh-agent", "--ssh-config", config,
                   "--python", sys.executable, "--agent", agent, "--results", os.path.join(work, "results")]
        table = []
        for label, bundle in (("many small files", small), ("one large file", large)):
            count, total = _size(bundle)
            scp_s, first_s, again_s = [], [], []
            for i in range(args.repeat):
                dest = os.path.join(work, "scp-%d" % i)
                os.makedirs(dest)
                remote = os.path.join(work, "remote-%d" % i)
                runs = [("scp", lambda: scp_s.append(_timed(scp + [bundle, "%s@127.0.0.1:%s/" % (server.user, dest)], env))),
                        ("edgekit", lambda: first_s.append(_timed(edgekit + ["--bundle", bundle, "--remote-dir", remote], env)))]
                for _name, run in runs if i % 2 == 0 else runs[::-1]:  # interleaved, alternating who goes first
                    run()
                again_s.append(_timed(edgekit + ["--bundle", bundle, "--remote-dir", remote], env))
                shutil.rmtree(dest)
                shutil.rmtree(remote)
            mb = total / 1e6
            s, e, a = statistics.median(scp_s), statistics.median(first_s), statistics.median(again_s)
            table.append((label, count, mb, s, e, s / e, a))
        # Fixed costs scp does not pay, timed the same way (what a whole-command ratio is made of).
        ssh = ["ssh", "-q", "-p", str(server.port), "-i", server.client_key, "-o", "UserKnownHostsFile=%s" % server.known_hosts,
               "-o", "BatchMode=yes", "-F", config, "%s@127.0.0.1" % server.user]
        shell_s = statistics.median(_timed(ssh + ["true"], env) for _ in range(args.repeat))
        sftp_s = statistics.median(_timed(["sftp", "-q", "-b", os.devnull] + ["-P", str(server.port), "-i", server.client_key,
                                          "-o", "UserKnownHostsFile=%s" % server.known_hosts, "-F", config, "%s@127.0.0.1" % server.user], env)
                                   for _ in range(args.repeat))
        imports_s = statistics.median(_timed([sys.executable, "-c", "import edgekit.host.cli.main, edgekit.host.cli.deploy, edgekit.host.deploy.service"], env)
                                      for _ in range(args.repeat))
        version = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.split(",")[0]
        load = os.getloadavg()[0]
        # Without bytecode caches every edgekit module is compiled again in every command.
        pyc = "off (PYTHONDONTWRITEBYTECODE set)" if os.environ.get("PYTHONDONTWRITEBYTECODE") else "on"
        print("\nWhole commands over loopback SSH (%s, edgekit paramiko), median of %d interleaved runs, %d CPU cores, "
              "1-min load %.1f before, %.1f after (the bench's own included); Python bytecode cache %s\n"
              % (version, args.repeat, os.cpu_count() or 0, load_before, load, pyc))
        print("| shape | files | MB | scp -r s | edgekit first deploy s | edgekit/scp throughput | unchanged redeploy s |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for label, count, mb, s, e, ratio, a in table:
            print("| %s | %d | %.1f | %.3f | %.3f | %.2fx | %.3f |" % (label, count, mb, s, e, ratio, a))
        print("\nFixed costs, medians: an SFTP session that does nothing (what scp starts) %.3f s; `ssh board true` (a command: the"
              " login shell that edgekit's board-side helper needs) %.3f s; edgekit's Python imports %.3f s.\n" % (sftp_s, shell_s, imports_s))
        for label, _c, _m, _s, _e, ratio, a in table:
            print("%s: %.2fx scp throughput (goal >= 0.9x): %s; redeploy %.2f s (goal < 0.5 s): %s"
                  % (label, ratio, "met" if ratio >= 0.9 else "NOT met", a, "met" if a < 0.5 else "NOT met"))
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
