"""Running commands on a target: over SSH or, for ``local``, in a subprocess.

Both hosts take an argument list, never a shell string: each argument is quoted
with shlex.quote before it reaches the remote shell, so paths with spaces,
quotes or semicolons arrive as one word. Output is read as it comes (stdout
whole, stderr line by line for progress), with a limit on silence and on total
time; a command that overruns is stopped by its process group.
"""
import os
import select
import shlex
import signal
import socket
import subprocess
import threading
import time
from typing import Any, Callable, List, Optional, Sequence, Tuple

from edgekit.contract.errors import EdgekitError
from .ssh import Connection

LineHandler = Callable[[str], None]

# Run on the target by the launcher: a new session (so one kill reaches every
# child the agent starts), its process group id announced on stderr, then the
# command as its child. The launcher stays as a watchdog on its stdin, which the
# host keeps open for the whole run: end of file there means the host is gone
# (killed, link dropped, sshd closed the session), so it stops the group: TERM,
# then KILL after 3 s. While the command runs (not stopped), the launcher writes
# {"event": "alive"} every BEAT seconds (its first argument), so the host can hold
# one idle limit on every run, quiet phases included. setsid fails when sshd already made us a session leader;
# then our process group is already our own.
# Python 2.7/3.x syntax so an old interpreter still gets as far as the version check.
LAUNCHER = (
    "import os,sys,select,signal,time\n"
    "try:\n"
    "    os.setsid()\n"
    "except OSError:\n"
    "    pass\n"
    "pg = os.getpgid(0)\n"
    "sys.stderr.write('{\"event\": \"launched\", \"pgid\": %d}\\n' % pg)\n"
    "sys.stderr.flush()\n"
    "beat = float(sys.argv[1])\n"
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)\n"
    "    os.execvp(sys.argv[2], sys.argv[2:])\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
    "def status(st):\n"
    "    return os.WEXITSTATUS(st) if os.WIFEXITED(st) else 128 + os.WTERMSIG(st)\n"
    "def stopped():\n"
    "    try:\n"
    "        return open('/proc/%d/stat' % pid).read().rsplit(')', 1)[1].split()[0] in 'Tt'\n"
    "    except Exception:\n"
    "        return False\n"
    "last = time.time()\n"
    "while True:\n"
    "    done, st = os.waitpid(pid, os.WNOHANG)\n"
    "    if done:\n"
    "        os._exit(status(st))\n"
    "    if time.time() - last >= beat and not stopped():\n"
    "        last = time.time()\n"
    "        os.write(2, b'{\"event\": \"alive\"}\\n')\n"
    "    ready = select.select([0], [], [], 0.2)[0]\n"
    "    if ready and not os.read(0, 4096):\n"
    "        os.killpg(pg, signal.SIGTERM)\n"
    "        end = time.time() + 3\n"
    "        while time.time() < end and not os.waitpid(pid, os.WNOHANG)[0]:\n"
    "            time.sleep(0.1)\n"
    "        os.killpg(pg, signal.SIGKILL)\n"
)


HEARTBEAT = '{"event": "alive"}'


def heartbeat_s(idle: Optional[float]) -> float:
    """The launcher's heartbeat: a third of the idle limit (at most 2 s), so that a
    live command never looks idle and a stopped one is caught within ~1x the limit."""
    return min(2.0, idle / 3.0) if idle else 2.0


def _launcher_filter(on_stderr_line: Optional[LineHandler], pgid: List[int]) -> LineHandler:
    """The launcher's own stderr lines: its process group id goes into ``pgid``,
    heartbeats only reset the idle clock; every other line is the command's."""

    def on_line(line: str) -> None:
        if not pgid and line.startswith('{"event": "launched"'):
            pgid.append(int(line.split(":")[-1].strip(" }")))
        elif line == HEARTBEAT:
            pass
        elif on_stderr_line is not None:
            on_stderr_line(line)

    return on_line


def quote_command(argv: Sequence[str]) -> str:
    """One POSIX shell command line whose words are exactly ``argv``."""
    return " ".join(shlex.quote(str(a)) for a in argv)


class CommandResult(object):
    def __init__(self, argv: Sequence[str], rc: int, stdout: bytes, stderr: bytes) -> None:
        self.argv = list(argv)
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr

    @property
    def out(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    @property
    def err(self) -> str:
        return self.stderr.decode("utf-8", "replace")

    def last_error_line(self) -> str:
        lines = [l.strip() for l in self.err.splitlines() if l.strip()]
        return lines[-1] if lines else "exit status %d" % self.rc


class CommandTimeout(EdgekitError):
    """A command overran its time limit or went silent (it has been stopped)."""


class Cancelled(EdgekitError):
    """The user interrupted the deploy (Ctrl-C); remote work has been stopped."""

    exit_code = 130


def check_cancel(cancel: Optional[threading.Event], name: str) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("interrupted while working on %s" % name, "nothing is left running there")


class _LineSplitter(object):
    def __init__(self, handler: Optional[LineHandler]) -> None:
        self.handler = handler
        self.buffer = b""
        self.lines: List[bytes] = []

    def feed(self, data: bytes) -> None:
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            self._emit(line)

    def close(self) -> None:
        if self.buffer:
            self._emit(self.buffer)
            self.buffer = b""

    def _emit(self, line: bytes) -> None:
        self.lines.append(line)
        if self.handler is not None:
            self.handler(line.decode("utf-8", "replace"))

    def text(self) -> bytes:
        return b"\n".join(self.lines) + (b"\n" if self.lines else b"")


class Host(object):
    """Where commands run. ``name`` labels messages."""

    name = ""
    is_local = False
    # Set from another thread (Ctrl-C in a fleet) to stop what this host is doing.
    cancel: Optional[threading.Event] = None

    def run(
        self,
        argv: Sequence[str],
        input: Optional[bytes] = None,
        timeout: Optional[float] = None,
        idle_timeout: Optional[float] = None,
        on_stderr_line: Optional[LineHandler] = None,
        stoppable: bool = False,
    ) -> CommandResult:
        """Run ``argv``; on a timeout, Ctrl-C or any error while it runs, a
        ``stoppable`` command (argv[0] a Python interpreter) is stopped with its
        whole process group before the exception propagates."""
        raise NotImplementedError

    def spawn(self, argv: Sequence[str]) -> "Process":
        """Start ``argv`` with pipes to talk to it line by line (the deploy helper)."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class Process(object):
    """A running command we exchange lines with."""

    name = ""

    def send(self, data: bytes, idle: Optional[float] = None) -> None:
        """Write to its stdin; ``idle``: give up after that long without progress (SSH)."""
        raise NotImplementedError

    def abort(self) -> None:
        """Drop the command without waiting: it sees its stdin end."""

    def readline(self, timeout: Optional[float]) -> bytes:
        """One line of stdout (b"" once it closed); CommandTimeout after ``timeout`` s of silence."""
        raise NotImplementedError

    def finish(self) -> "Tuple[int, str]":
        """Close stdin, wait for the exit: (exit status, stderr text)."""
        raise NotImplementedError


class _SendWatchdog(threading.Thread):
    """Closes ``transport`` when one send has been stuck for ``limit`` seconds."""

    def __init__(self, transport: Any, limit: float) -> None:
        super().__init__(name="send-watchdog", daemon=True)
        self.transport, self.limit = transport, limit
        self.deadline: Optional[float] = None
        self.fired = False
        self._done = threading.Event()

    def arm(self) -> None:
        self.deadline = time.monotonic() + self.limit

    def disarm(self) -> None:
        self.deadline = None

    def stop(self) -> None:
        self._done.set()

    def run(self) -> None:
        while not self._done.wait(0.1):
            deadline = self.deadline
            if deadline is not None and time.monotonic() > deadline:
                self.fired = True
                self.transport.close()  # paramiko's stuck socket write then ends with EOFError
                return


# How often a wait for the helper's answer looks at the cancel event.
READ_SLICE_S = 0.25


class _SSHProcess(Process):
    def __init__(self, host: "SSHHost", argv: Sequence[str]) -> None:
        self.name = host.name
        self.argv = list(argv)
        self.chan = host.conn.transport.open_session(timeout=host.conn.options.connect_timeout)
        self.chan.exec_command(quote_command(argv))
        self._host = host  # its cancel event (Ctrl-C) is checked while waiting for a line
        self._buf = bytearray()  # stdout read but not yet returned as lines
        self._err = bytearray()
        self._watchdog: Optional[_SendWatchdog] = None

    def send(self, data: bytes, idle: Optional[float] = None) -> None:
        """Send all of ``data``; with ``idle``, CommandTimeout once the board has taken
        no byte for ``idle`` seconds (the clock restarts with every byte it takes).

        The channel's timeout covers waiting for the board's SSH window, the usual
        stall. Should the TCP buffer fill first (paramiko then retries its socket write
        without a limit), a watchdog closes the connection at 1.25x the limit."""
        view = memoryview(data)
        watchdog = self._watchdog_for(idle)
        try:
            while view:
                self.chan.settimeout(idle)
                if watchdog is not None:
                    watchdog.arm()
                n = self.chan.send(view)
                if n == 0:  # paramiko's answer once the channel is closed
                    raise EOFError("the session closed")
                view = view[n:]
        except socket.timeout:
            raise self._silent(idle) from None
        except (socket.error, OSError, EOFError) as exc:
            if watchdog is not None and watchdog.fired:
                raise self._silent(idle) from None
            raise EdgekitError("lost the session to %s (%s)" % (self.name, exc or type(exc).__name__), "check the connection and retry")
        finally:
            if watchdog is not None:
                watchdog.disarm()

    def _silent(self, idle: Optional[float]) -> CommandTimeout:
        return CommandTimeout(
            "%s went silent for %gs on %s (it takes no more data)" % (self.argv[0], idle or 0, self.name),
            "check the board (overloaded, hung, disk stalled?) and rerun: the upload resumes where it stopped",
        )

    def _watchdog_for(self, idle: Optional[float]) -> "Optional[_SendWatchdog]":
        if not idle:
            return None
        if self._watchdog is None or self._watchdog.limit != 1.25 * idle:
            if self._watchdog is not None:
                self._watchdog.stop()
            self._watchdog = _SendWatchdog(self.chan.get_transport(), 1.25 * idle)
            self._watchdog.start()
        return self._watchdog

    def abort(self) -> None:
        """Give the command up without waiting for it (it sees its stdin end)."""
        self._stop_watchdog()
        try:
            self.chan.close()
        except Exception:  # a dead connection: nothing to close
            pass

    def _stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None

    def readline(self, timeout: Optional[float]) -> bytes:
        """One line; waits in short slices so that a Ctrl-C (the host's cancel event)
        is seen within a fraction of a second, not after ``timeout`` (the doctor's wait
        is up to two minutes). Own buffer, not paramiko's file: its readline drops the
        part of a line it had read when a timeout interrupts it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            end = self._buf.find(b"\n")
            if end >= 0:
                line = bytes(self._buf[: end + 1])
                del self._buf[: end + 1]
                return line
            check_cancel(self._host.cancel, self.name)
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise CommandTimeout("%s went silent for %gs on %s" % (self.argv[0], timeout, self.name), "check the board (overloaded or hung?) and retry")
            self.chan.settimeout(READ_SLICE_S if left is None else min(READ_SLICE_S, left))
            try:
                data = self.chan.recv(1 << 16)
            except socket.timeout:
                continue
            if not data:  # stdout closed: the rest, then b""
                line = bytes(self._buf)
                self._buf.clear()
                return line
            self._buf += data

    def finish(self) -> "Tuple[int, str]":
        self._stop_watchdog()
        try:
            self.chan.shutdown_write()
        except (socket.error, OSError, EOFError):
            pass
        self.chan.settimeout(10.0)
        deadline = time.monotonic() + 10.0
        try:
            while not self.chan.exit_status_ready() and time.monotonic() < deadline:
                while self.chan.recv_stderr_ready():
                    self._err += self.chan.recv_stderr(1 << 16)
                time.sleep(0.01)
            while self.chan.recv_stderr_ready():
                self._err += self.chan.recv_stderr(1 << 16)
            rc = self.chan.recv_exit_status() if self.chan.exit_status_ready() else -1
        finally:
            self.chan.close()
        return rc, self._err.decode("utf-8", "replace")


class _LocalProcess(Process):
    def __init__(self, name: str, argv: Sequence[str]) -> None:
        self.name = name
        self.argv = list(argv)
        self.proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)

    def abort(self) -> None:
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass

    def send(self, data: bytes, idle: Optional[float] = None) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # the reader sees EOF and reports the exit

    def readline(self, timeout: Optional[float]) -> bytes:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise CommandTimeout("%s went silent for %gs" % (self.argv[0], timeout), "check what it is doing and retry")
        return self.proc.stdout.readline()

    def finish(self) -> "Tuple[int, str]":
        assert self.proc.stdin is not None and self.proc.stderr is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            rc = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _kill_local_group(self.proc)
            rc = -1
        err = self.proc.stderr.read().decode("utf-8", "replace")
        self.proc.stdout.close()
        self.proc.stderr.close()
        return rc, err


class SSHHost(Host):
    """Commands over an SSH connection: one exec channel each."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.name = conn.target.name

    def run(self, argv, input=None, timeout=None, idle_timeout=None, on_stderr_line=None, stoppable=False):  # type: ignore[override]
        idle = self.conn.options.idle_timeout if idle_timeout is None else idle_timeout
        command = quote_command([argv[0], "-c", LAUNCHER, "%g" % heartbeat_s(idle)] + list(argv) if stoppable else argv)
        pgid: List[int] = []
        on_line = _launcher_filter(on_stderr_line, pgid) if stoppable else on_stderr_line

        try:
            chan = self.conn.transport.open_session(timeout=self.conn.options.connect_timeout)
            chan.exec_command(command)
            if input is not None:
                chan.sendall(input)
            if not stoppable:
                chan.shutdown_write()  # a stoppable command's stdin stays open: the launcher's watchdog
        except (socket.error, EOFError, OSError) as exc:
            raise EdgekitError("cannot start a command on %s (%s)" % (self.name, exc or type(exc).__name__), "check the connection and retry")
        except Exception as exc:  # paramiko.SSHException and friends
            raise EdgekitError("cannot start a command on %s (%s)" % (self.name, exc), "check the connection and retry")
        out = bytearray()
        err = _LineSplitter(on_line)
        start = last = time.monotonic()
        try:
            while True:
                got = False
                while chan.recv_ready():
                    out += chan.recv(1 << 16)
                    got = True
                while chan.recv_stderr_ready():
                    err.feed(chan.recv_stderr(1 << 16))
                    got = True
                now = time.monotonic()
                check_cancel(self.cancel, self.name)
                if got:
                    last = now
                    continue
                if chan.eof_received or chan.closed:
                    break
                if timeout is not None and now - start > timeout:
                    raise CommandTimeout("%s did not finish within %gs on %s" % (argv[0], timeout, self.name), "raise --timeout")
                if idle and now - last > idle:
                    raise CommandTimeout(
                        "%s went silent for %gs on %s" % (argv[0], idle, self.name), "check the board (is it overloaded or hung?) and retry"
                    )
                select.select([chan], [], [], 0.2)
            # Data can still trail the EOF marker in the buffers.
            while chan.recv_ready():
                out += chan.recv(1 << 16)
            while chan.recv_stderr_ready():
                err.feed(chan.recv_stderr(1 << 16))
            err.close()
            deadline = time.monotonic() + max(idle or 0, 5.0)
            while not chan.exit_status_ready():
                if time.monotonic() > deadline:
                    raise CommandTimeout("%s closed its output but did not exit on %s" % (argv[0], self.name), "check the board")
                time.sleep(0.01)
            rc = chan.recv_exit_status()
        except BaseException:
            if pgid:
                self.stop_group(pgid[0])
            raise
        finally:
            chan.close()
        return CommandResult(argv, rc, bytes(out), err.text())

    def spawn(self, argv: Sequence[str]) -> Process:
        try:
            return _SSHProcess(self, argv)
        except (socket.error, OSError, EOFError) as exc:
            raise EdgekitError("cannot start a command on %s (%s)" % (self.name, exc or type(exc).__name__), "check the connection and retry")
        except Exception as exc:  # paramiko.SSHException
            raise EdgekitError("cannot start a command on %s (%s)" % (self.name, exc), "check the connection and retry")

    def stop_group(self, pgid: int, grace_s: float = 3.0) -> None:
        """TERM the remote process group, then KILL what is left after ``grace_s``."""
        script = (
            "kill -TERM -- -{p} 2>/dev/null || exit 0; kill -CONT -- -{p} 2>/dev/null; i=0; "
            "while kill -0 -- -{p} 2>/dev/null && [ $i -lt {n} ]; do sleep 0.1; i=$((i+1)); done; "
            "kill -KILL -- -{p} 2>/dev/null; exit 0"
        ).format(p=int(pgid), n=int(grace_s * 10))
        try:
            chan = self.conn.transport.open_session(timeout=self.conn.options.connect_timeout)
            chan.settimeout(grace_s + 10)
            chan.exec_command(script)
            chan.recv_exit_status()
            chan.close()
        except Exception:  # the connection is gone: nothing more we can do from here
            pass

    def close(self) -> None:
        self.conn.close()


class LocalHost(Host):
    """The ``local`` target: the same commands in a subprocess on this machine."""

    is_local = True

    def __init__(self, name: str = "local") -> None:
        self.name = name

    def run(self, argv, input=None, timeout=None, idle_timeout=None, on_stderr_line=None, stoppable=False):  # type: ignore[override]
        # Every local command gets its own session, so stopping it reaches its children too.
        # A stoppable one runs under the same launcher as on a board, its stdin a pipe
        # from this process held open for the whole run: if this process dies (kill -9,
        # a closed terminal), the kernel closes the pipe and the launcher stops the agent.
        watched = stoppable and input is None
        command = [argv[0], "-c", LAUNCHER, "%g" % heartbeat_s(idle_timeout)] + list(argv) if watched else list(argv)
        try:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.PIPE if input is not None or watched else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            return CommandResult(argv, 127, b"", ("%s: %s\n" % (argv[0], exc.strerror)).encode())
        if input is not None:
            assert proc.stdin is not None
            try:
                proc.stdin.write(input)
            except BrokenPipeError:
                pass
            proc.stdin.close()
        assert proc.stdout is not None and proc.stderr is not None
        out = bytearray()
        err = _LineSplitter(_launcher_filter(on_stderr_line, []) if watched else on_stderr_line)
        streams = {proc.stdout.fileno(): "out", proc.stderr.fileno(): "err"}
        start = last = time.monotonic()
        try:
            while streams:
                ready, _, _ = select.select(list(streams), [], [], 0.2)
                now = time.monotonic()
                for fd in ready:
                    data = os.read(fd, 1 << 16)
                    if not data:
                        del streams[fd]
                    elif streams[fd] == "out":
                        out += data
                    else:
                        err.feed(data)
                    last = now
                check_cancel(self.cancel, self.name)
                if timeout is not None and now - start > timeout:
                    raise CommandTimeout("%s did not finish within %gs" % (argv[0], timeout), "raise --timeout")
                if idle_timeout and now - last > idle_timeout:
                    raise CommandTimeout("%s went silent for %gs" % (argv[0], idle_timeout), "check what it is doing and retry")
            err.close()
            rc = proc.wait()
        except BaseException:
            _kill_local_group(proc)
            raise
        finally:
            proc.stdout.close()
            proc.stderr.close()
            if watched and proc.stdin is not None:
                proc.stdin.close()
        return CommandResult(argv, rc, bytes(out), err.text())

    def spawn(self, argv: Sequence[str]) -> Process:
        try:
            return _LocalProcess(self.name, argv)
        except OSError as exc:
            raise EdgekitError("cannot run %s (%s)" % (argv[0], exc.strerror), "pass an existing interpreter with --python")


def _kill_local_group(proc: "subprocess.Popen[bytes]") -> None:
    """Stop the subprocess and everything it started (its own session)."""
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue

