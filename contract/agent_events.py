"""Progress reporting on stderr, so stdout carries only the result.

``json`` mode writes one JSON object per line (``{"event": "progress", ...}``)
for the host to parse over SSH; ``text`` mode draws a single updating line for
a person at a terminal; ``none`` is silent. Every event has ``event`` and
``t`` (seconds since the agent started). Events:

- ``start``     {command, bundle, variants}
- ``phase``     {variant, phase}: load, build, warmup, bench, stages, eval
- ``progress``  {variant, phase, done, total}  (rate-limited)
- ``warning``   {message}
- ``log``       {source, level, message}: runtime messages (TensorRT's logger)
- ``run``       {variant, status, error, p50_ms, map}
- ``done``      {ok}

Stdlib only: the CLI imports this before knowing whether numpy exists.
"""
import json
import sys
import threading
import time
from typing import Any, Optional, TextIO

MODES = ("auto", "json", "text", "none")


class Progress(object):
    def __init__(self, mode: str = "json", stream: Optional[TextIO] = None, min_interval: float = 0.25) -> None:
        self.stream = stream if stream is not None else sys.stderr
        if mode == "auto":
            isatty = getattr(self.stream, "isatty", None)
            mode = "text" if isatty is not None and isatty() else "json"
        if mode not in ("json", "text", "none"):
            raise ValueError("progress mode must be one of %s" % ", ".join(MODES))
        self.mode = mode
        self.min_interval = float(min_interval)
        self._t0 = time.monotonic()
        self._last = {}  # (variant, phase) -> time of the last progress line written
        self._lock = threading.Lock()
        self._text_open = False  # a text progress line is on screen without its newline

    def _write_json(self, event: str, fields: Any) -> None:
        record = {"event": event, "t": round(time.monotonic() - self._t0, 3)}
        record.update(fields)
        line = json.dumps(record, sort_keys=False, default=str)
        with self._lock:
            try:
                self.stream.write(line + "\n")
                self.stream.flush()
            except (OSError, ValueError):  # stderr gone (the host hung up): progress is best-effort
                self.mode = "none"

    def _write_text(self, text: str, transient: bool = False) -> None:
        try:
            self._write_text_unsafe(text, transient)
        except (OSError, ValueError):
            self.mode = "none"

    def _write_text_unsafe(self, text: str, transient: bool) -> None:
        with self._lock:
            if transient:
                self.stream.write("\r\x1b[K" + text)
                self._text_open = True
            else:
                if self._text_open:
                    self.stream.write("\r\x1b[K")
                    self._text_open = False
                self.stream.write(text + "\n")
            self.stream.flush()

    def event(self, event: str, **fields: Any) -> None:
        """A one-off event: always written (except in ``none`` mode)."""
        if self.mode == "none":
            return
        if self.mode == "json":
            self._write_json(event, fields)
            return
        if event == "phase":
            self._write_text("[%s] %s" % (fields.get("variant"), fields.get("phase")), transient=True)
        elif event == "warning":
            self._write_text("warning: %s" % fields.get("message"))
        elif event == "log" and fields.get("level") in ("error", "warning"):
            self._write_text("%s %s: %s" % (fields.get("source"), fields.get("level"), fields.get("message")))
        elif event == "run":
            status = fields.get("status")
            detail = fields.get("error") or ""
            if status == "ok":
                parts = []
                if fields.get("p50_ms") is not None:
                    parts.append("p50 %.2f ms" % fields["p50_ms"])
                if fields.get("map") is not None:
                    parts.append("mAP %.4f" % fields["map"])
                detail = ", ".join(parts)
            self._write_text("[%s] %s%s" % (fields.get("variant"), status, (": " + detail) if detail else ""))
        elif event == "start":
            self._write_text("%s %s: %s" % (fields.get("command"), fields.get("bundle"), ", ".join(fields.get("variants") or [])))

    def progress(self, variant: str, phase: str, done: int, total: Optional[int]) -> None:
        """Rate-limited progress; the last step (done == total) is always written."""
        if self.mode == "none":
            return
        now = time.monotonic()
        key = (variant, phase)
        final = total is not None and done >= total
        if not final and now - self._last.get(key, 0.0) < self.min_interval:
            return
        self._last[key] = now
        if self.mode == "json":
            self._write_json("progress", {"variant": variant, "phase": phase, "done": done, "total": total})
        else:
            of = "/%d" % total if total is not None else ""
            self._write_text("[%s] %s %d%s" % (variant, phase, done, of), transient=True)

    def warning(self, message: str) -> None:
        self.event("warning", message=message)

    def close(self) -> None:
        if self.mode == "text" and self._text_open:
            with self._lock:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
                self._text_open = False
