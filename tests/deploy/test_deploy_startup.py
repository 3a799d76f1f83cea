"""What `edgekit deploy` loads before it connects: its start is part of every deploy's time."""
import subprocess
import sys
import textwrap


def _run(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_the_deploy_command_loads_no_model_stack_and_defers_invoke():
    out = _run("""
        import sys
        from edgekit.host.cli.main import _register
        _register()
        heavy = ("torch", "numpy", "onnx", "onnxruntime", "rich", "matplotlib", "invoke.tasks", "yaml")
        print(sorted(m for m in heavy if m in sys.modules))
    """)
    assert out == "[]"


def test_an_ssh_config_match_exec_still_works_through_the_deferred_invoke(tmp_path):
    config = tmp_path / "ssh_config"
    config.write_text('Match exec "true"\n  HostName 10.1.2.3\n  Port 2200\n')
    out = _run("""
        import sys
        import edgekit.host.deploy
        before = "invoke.tasks" in sys.modules
        from edgekit.host.deploy.targets import parse_target
        t = parse_target("board", ssh_config=%r)
        print(before, t.host, t.port, "invoke.tasks" in sys.modules)
    """ % str(config))
    assert out == "False 10.1.2.3 2200 True"
