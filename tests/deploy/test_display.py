"""The live display: what a person sees while a deploy runs."""
import io
import time

from rich.console import Console

from edgekit.host.cli.deploy_display import LiveDisplay, human_bytes
from edgekit.host.deploy.events import DeployReporter
from edgekit.host.deploy.sync import SyncStats
from edgekit.host.deploy.targets import Target


def _text(display):
    console = Console(file=io.StringIO(), width=140, force_terminal=False)
    console.print(display.render())
    return console.file.getvalue()


def test_live_lines_show_bytes_throughput_and_agent_progress():
    display = LiveDisplay(Console(file=io.StringIO(), force_terminal=True, width=140))
    report = DeployReporter(display)  # the pipeline's calls, as the host's progress events
    a, b = Target(name="orin-1", host="10.0.0.1", user="nvidia"), Target(name="orin 2", host="10.0.0.2", user="nvidia")
    report.stage(a, "sync", "29 new files")
    report.transfer_start(a, 50_000_000, 29)
    report.transfer(a, 20_000_000)
    time.sleep(0.25)  # throughput is shown once it means something
    report.stage(b, "run")
    report.agent_event(b, {"event": "progress", "variant": "p30-int8", "phase": "bench", "done": 40, "total": 100})
    text = _text(display)
    assert "orin-1" in text and "20.0 MB / 50.0 MB" in text and "MB/s" in text
    assert "[p30-int8] bench 40/100" in text
    report.agent_event(b, {"event": "run", "variant": "p30-int8", "status": "ok", "p50_ms": 3.2})
    report.stage(b, "done")
    report.stage(a, "failed", "orin-1 refused the connection")
    text = _text(display)
    assert "1 of 1 variants ok" in text and "refused the connection" in text


def test_variant_count_reads_as_position_not_total():
    display = LiveDisplay(Console(file=io.StringIO(), force_terminal=True, width=140))
    report = DeployReporter(display)  # the pipeline's calls, as the host's progress events
    t = Target(name="orin", host="h", user="u")
    report.stage(t, "run")
    report.agent_event(t, {"event": "start", "command": "run", "bundle": "demo", "variants": ["fp32", "fp16", "int8", "p30-int8"]})
    report.agent_event(t, {"event": "run", "variant": "fp32", "status": "ok", "p50_ms": 3.2})
    report.agent_event(t, {"event": "progress", "variant": "fp16", "phase": "bench", "done": 5, "total": 100})
    text = _text(display)
    # During the second of four variants: its position and the count so far, not "(1/1 variants ok)".
    assert "[fp16] bench 5/100  (variant 2/4, 1 ok)" in text and "1/1" not in text
    for name, status in (("fp16", "skipped"), ("int8", "ok"), ("p30-int8", "failed")):
        report.agent_event(t, {"event": "run", "variant": name, "status": status})
    report.stage(t, "done")
    assert "2 of 4 variants ok" in _text(display)


def test_plain_mode_prints_one_line_per_event():
    out = io.StringIO()
    display = LiveDisplay(Console(file=out, force_terminal=False, width=200))
    report = DeployReporter(display)
    t = Target(name="board 'A'", host="h", user="u")
    with display:
        report.stage(t, "connect", "u@h")
        report.agent_event(t, {"event": "run", "variant": "fp32", "status": "ok", "p50_ms": 12.5, "map": 0.61})
        report.transfer_done(t, SyncStats(files_total=3, files_sent=2, files_present=1, bytes_sent=2_000_000, seconds=0.7, upload_seconds=0.5))
    lines = out.getvalue().splitlines()
    assert lines == [
        "board 'A': connect (u@h)",
        "board 'A': [fp32] ok, p50 12.50 ms, mAP 0.6100",
        "board 'A': synced: 2 of 3 files sent (2.0 MB at 4.0 MB/s), 1 already there; 0.70 s",
    ]
    assert human_bytes(999) == "999 B" and human_bytes(1_500_000_000) == "1.5 GB"
