"""The host's one progress protocol: step events carry done/total/unit/elapsed,
and the one drawer turns them into a line that says what, how far and how long."""
import io
import time

from rich.console import Console

from edgekit.host.bundle.stages import Reporter
from edgekit.host.cli.progress import ProgressDisplay, step_text
from edgekit.host.progress import StepCounter, step_event


def test_reporter_counter_emits_step_events_with_unit_and_elapsed():
    events = []
    counter = Reporter(events.append).counter("recover", "p30", "steps")
    time.sleep(0.02)
    counter(120, 300)
    (event,) = events
    assert event["event"] == "step" and event["stage"] == "recover" and event["variant"] == "p30"
    assert (event["done"], event["total"], event["unit"]) == (120, 300, "steps")
    assert event["elapsed"] >= 0.02


def test_step_text_says_unit_rate_and_time_left():
    text = step_text(step_event("recover", 120, 300, "steps", 30.0, "p30", info="loss 0.41"))
    assert text == "recover p30 120/300 steps  4.0 steps/s  0:45 left  loss 0.41"
    # A time budget counts seconds: no rate, the time left is the rest of the budget.
    assert step_text(step_event("recover", 100, 300, "s", 100.0)) == "recover 100/300 s  3:20 left"


def test_display_prints_one_line_per_finished_stage():
    out = io.StringIO()
    display = ProgressDisplay(Console(file=out, width=100, force_terminal=False))
    display({"event": "stage", "stage": "export", "variant": "fp32", "status": "start", "seconds": 0.0, "detail": ""})
    StepCounter(display, "export", "images", "fp32")(1, 2)
    display({"event": "stage", "stage": "export", "variant": "fp32", "status": "done", "seconds": 1.25, "detail": "opset 17"})
    display({"event": "warning", "message": "calibration images are few"})
    lines = [l for l in out.getvalue().splitlines() if l.strip()]
    assert lines[-2].split() == ["done", "export", "fp32", "1.2s:", "opset", "17"]
    assert lines[-1] == "warning: calibration images are few"


def test_build_ends_with_where_its_time_went_longest_first():
    from edgekit.host.cli.build import stage_summary

    line = stage_summary({"export": 1.04, "prune": 321.7, "int8": 6.3, "operators": 0.01}, 340.0)
    assert line == "time by stage: prune 321.7s (95%), int8 6.3s (2%), export 1.0s (0%)"
