"""Generated sessions played byte for byte through the real wrapper or serve.

A session is an ordered transcript of client and server steps (SMTP-shaped,
with hostile bytes mixed in).  The server steps go to the child,
``tests/fakes/script_child.c``, as a script it plays; the client steps are
played here over TCP.  Each step is cut into chunks with pauses, and a step
may wait for what the other side said before it (lock-step SMTP) or not
(pipelining, early talkers).  What each side received is then compared with
what the other side sent: byte for byte, both ways.

One generator, two engines: ``session(draw)`` takes a ``Draw``, either
``HypothesisDraw`` (the property tests: shrinking, replay) or ``RandomDraw``
(a seeded PRNG for ``play_many``: the volume test, the deep run and
bench/byte_exact.py; Hypothesis keeps every example it tried and does not
scale to 10^6 of them).

Sessions are told apart by the client's address: the client binds its
socket first and writes the script as ``<ip>_<port>.script`` in the
child's directory; the child reads ``$TCPREMOTEIP``/``$TCPREMOTEPORT``, as
tcpserver and serve set them.  So many sessions run at once through one
server, which is started once and reused (``Server``).
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from strict_logfmt import StrictError, parse, parse_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from benchlib import printed_port  # noqa: E402

TESTS_DIR = Path(__file__).resolve().parent
CHILD_SOURCE = TESTS_DIR / "fakes" / "script_child.c"
BUILD_DIR = TESTS_DIR / "fakes" / "build"
SESSION_TIMEOUT_S = 60.0
T = TypeVar("T")


def script_child() -> Path:
    """tests/fakes/script_child.c compiled once (again when the source is newer)."""
    exe = BUILD_DIR / "script_child"
    if not exe.exists() or exe.stat().st_mtime < CHILD_SOURCE.stat().st_mtime:
        BUILD_DIR.mkdir(exist_ok=True)
        tmp = BUILD_DIR / f"script_child.{os.getpid()}"
        subprocess.run([os.environ.get("CC", "cc"), "-O2", "-Wall", "-o", str(tmp),
                        str(CHILD_SOURCE)], check=True, timeout=120)
        tmp.replace(exe)  # atomic: parallel runs may build it at once
    return exe


# ---------------------------------------------------------------------------
# Drawing: the two engines behind one small interface.

class Draw:
    """What the generator needs; ``chance(p)`` is True p% of the time and is
    the simple case (Hypothesis shrinks toward it)."""

    def integer(self, lo: int, hi: int) -> int:
        raise NotImplementedError

    def binary(self, lo: int, hi: int) -> bytes:
        raise NotImplementedError

    def choice(self, seq: Sequence[T]) -> T:
        return seq[self.integer(0, len(seq) - 1)]

    def chance(self, percent: int) -> bool:
        return self.integer(0, 99) < percent


class RandomDraw(Draw):
    """A seeded ``random.Random``: fast, for volume."""

    def __init__(self, rng) -> None:  # random.Random
        self.rng = rng

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def binary(self, lo: int, hi: int) -> bytes:
        return self.rng.randbytes(self.rng.randint(lo, hi))


class HypothesisDraw(Draw):
    """Hypothesis' ``draw`` (from ``st.data()`` or ``st.composite``)."""

    def __init__(self, draw: Callable) -> None:
        from hypothesis import strategies as st

        self.draw = draw
        self.st = st

    def integer(self, lo: int, hi: int) -> int:
        return int(self.draw(self.st.integers(lo, hi)))

    def binary(self, lo: int, hi: int) -> bytes:
        return bytes(self.draw(self.st.binary(min_size=lo, max_size=hi)))


# ---------------------------------------------------------------------------
# What the two sides say.

ENDINGS = [b"\r\n", b"\n", b"\r", b"\r\r\n", b"\n\r", b"", b"\r\n\r\n"]
SMUGGLING = [b"\n.\n", b"\r.\r", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\r", b"\n..\n",
             b"\r\n.\r\n"]
NAMES = [b"client.example", b"x", b"[127.0.0.1]", b"", b"x verdict=ok", b'"q" \\ "', b"\x1b[31m",
         b"caf\xc3\xa9", b"\xff\xfe\x80", b"a\x00b", b"a" * 300]
ADDRESSES = [b"<a@example.com>", b"<>", b"a@example.org", b"<x@y> SIZE=100 BODY=8BITMIME",
             b"<\x00@x>", b"<" + b"l" * 600 + b"@y>", b"<a=b@c>", b"<\xe9@x>", b"<@relay:a@b>"]
VERBS = [b"NOOP", b"RSET", b"QUIT", b"HELP", b"VRFY x", b"EXPN y", b"ETRN z", b"TURN", b"XYZZY",
         b"quit", b"DATA", b"STARTTLS", b"AUTH LOGIN", b"AUTH PLAIN", b"AUTH CRAM-MD5", b"*",
         b"GET / HTTP/1.1", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"]
REPLIES = [b"250 ok", b"250-mx.example\r\n250-PIPELINING\r\n250-CHUNKING\r\n250-8BITMIME\r\n"
           b"250-STARTTLS\r\n250 AUTH LOGIN PLAIN", b"354 go ahead", b"221 bye",
           b"451 See http://pobox.com/~djb/docs/smtplf.html.", b"451 timeout (#4.4.2)",
           b"451 qq temporary problem (#4.3.0)", b"554 qq permanent problem (#5.3.0)",
           b"553 sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)",
           b"503 MAIL first (#5.5.1)", b"502 unimplemented (#5.5.1)", b"334 VXNlcm5hbWU6",
           b"334 ", b"235 ok", b"535 authorization failed (#5.7.0)", b"220 ready for tls",
           b"421 closing", b"250 ok 1234567890 qp 4242", b"220 mx.example ESMTP",
           b"250-", b"2", b"999 what", b"250 " + b"r" * 2000]
TLS_BYTES = [b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00", b"\x15\x03\x03\x00\x02\x02\x28",
             b"\x17\x03\x03\x00\x10" + bytes(range(16))]


def _ending(d: Draw) -> bytes:
    return b"\r\n" if d.chance(80) else d.choice(ENDINGS)


def _body_line(d: Draw) -> bytes:
    kind = d.integer(0, 9)
    if kind == 0:
        return b"." + d.choice([b"", b".", b"hidden", b"\r\n"])  # dot-stuffing, lone dots
    if kind == 1:
        return b"x" * (997, 998, 999, 1000, 2000, 4096)[d.integer(0, 5)]  # around the caps
    if kind == 2:
        return d.binary(1, 64)  # binary junk: NUL, CR, LF, 8-bit anywhere
    if kind == 3:
        return bytes(0x80 + b % 0x80 for b in d.binary(1, 40))  # 8-bit
    if kind == 4:
        return b"nul\x00in\x00line"
    if kind == 5:
        return d.choice(SMUGGLING) + b"MAIL FROM:<smuggled@example>"
    if kind == 6:
        return d.choice([b"From: a@example.com", b"Subject: \xe9t\xe9", b"", b" folded"])
    return bytes(0x20 + b % 0x5f for b in d.binary(0, 80))  # printable text


def _body(d: Draw) -> bytes:
    out = b"".join(_body_line(d) + (d.choice(SMUGGLING) if d.chance(10) else _ending(d))
                   for _ in range(d.integer(0, 12)))
    if d.chance(80):
        return out + b".\r\n"  # after the CRLF of the last line: the real end marker
    return out + d.choice(SMUGGLING + [b"", b".", b"\r\n."])  # never ended, or smuggled


def _command(d: Draw) -> bytes:
    kind = d.integer(0, 6)
    if kind == 0:
        line = d.choice([b"EHLO ", b"HELO ", b"ehlo "]) + d.choice(NAMES)
    elif kind == 1:
        line = b"MAIL FROM:" + d.choice(ADDRESSES)
    elif kind == 2:
        line = b"RCPT TO:" + d.choice(ADDRESSES)
    elif kind == 3:
        line = d.choice([b"AUTH PLAIN AHVzZXIAcGFzcw==", b"AUTH LOGIN dXNlcg==", b"cGFzcw==",
                         b"*", b"AUTH PLAIN =", b"AUTH LOGIN"])
    elif kind == 4:
        size = d.integer(0, 300)
        last = d.choice([b"", b" LAST"])
        return b"BDAT %d%s\r\n" % (size, last) + d.binary(size, size)
    elif kind == 5:
        line = b"x" * d.integer(990, 2100)  # around qmail's and the observer's caps
    else:
        line = d.choice(VERBS)
    return line + _ending(d)


def _client_bytes(d: Draw) -> bytes:
    kind = d.integer(0, 9)
    if kind <= 5:
        return b"".join(_command(d) for _ in range(d.integer(1, 3)))  # 2+: pipelined
    if kind <= 7:
        return _body(d)
    if kind == 8:
        return d.choice(TLS_BYTES) + d.binary(0, 200)
    return d.binary(1, 300)


def _server_bytes(d: Draw) -> bytes:
    kind = d.integer(0, 9)
    if kind <= 6:
        return b"".join(d.choice(REPLIES) + _ending(d) for _ in range(d.integer(1, 3)))
    if kind == 7:
        code = d.integer(100, 999)
        return b"%d%s%s\r\n" % (code, d.choice([b" ", b"-", b""]), d.binary(0, 40))
    if kind == 8:
        return d.choice(TLS_BYTES) + d.binary(0, 200)
    return d.binary(1, 300)


# ---------------------------------------------------------------------------
# A session, the child's script, the client's plan.

@dataclass(frozen=True)
class Step:
    side: str  # "C" client, "S" server (the child)
    chunks: tuple[tuple[int, bytes], ...]  # (pause in microseconds before it, bytes)
    sync: bool  # wait until everything the other side said before arrived

    @property
    def data(self) -> bytes:
        return b"".join(chunk for _, chunk in self.chunks)


@dataclass(frozen=True)
class Session:
    steps: tuple[Step, ...]
    child_half_close: bool  # the child ends its output before the client's EOF
    exit_code: int
    stderr: bytes = b""  # what the child writes on its stderr first

    def sent(self, side: str) -> bytes:
        return b"".join(s.data for s in self.steps if s.side == side)


def _chunks(d: Draw, data: bytes, max_pause_us: int) -> tuple[tuple[int, bytes], ...]:
    cuts = [] if d.chance(50) or len(data) < 2 else sorted(
        {d.integer(1, len(data) - 1) for _ in range(d.integer(1, 6))})
    bounds = [0, *cuts, len(data)]
    return tuple((0 if d.chance(85) else d.integer(1, max_pause_us), data[a:b])
                 for a, b in zip(bounds, bounds[1:], strict=False))


def _dialogue(d: Draw) -> list[tuple[str, bytes]]:
    """A real SMTP exchange (banner, EHLO, MAIL, RCPT, DATA with a hostile body,
    BDAT, AUTH, QUIT), so that the body bytes go through the DATA path of the
    observer; each part may be swapped for hostile bytes."""
    ehlo = REPLIES[1] + b"\r\n"
    parts: list[tuple[str, bytes]] = [("S", b"220 mx.example ESMTP\r\n")]
    for _ in range(d.integer(1, 3)):
        kind = (2, 0, 1, 2, 2, 3)[d.integer(0, 5)]  # DATA most often
        if kind == 0:
            parts.append(("C", b"EHLO " + d.choice(NAMES) + _ending(d)))
            parts.append(("S", ehlo))
        elif kind == 1:
            parts.append(("C", d.choice([b"AUTH LOGIN\r\n", b"AUTH PLAIN\r\n"])))
            parts += [("S", b"334 \r\n"), ("C", b"dXNlcg==\r\n"), ("S", b"334 \r\n"),
                      ("C", b"cGFzcw==\r\n"), ("S", d.choice([b"235 ok\r\n", b"535 no\r\n"]))]
        else:
            parts.append(("C", b"MAIL FROM:" + d.choice(ADDRESSES) + _ending(d)))
            parts.append(("S", b"250 ok\r\n"))
            for _ in range(d.integer(1, 2)):
                parts.append(("C", b"RCPT TO:" + d.choice(ADDRESSES) + b"\r\n"))
                parts.append(("S", d.choice([b"250 ok\r\n", REPLIES[8] + b"\r\n"])))
            if kind == 2:
                parts += [("C", b"DATA\r\n"), ("S", b"354 go ahead\r\n"), ("C", _body(d)),
                          ("S", d.choice([b"250 ok 1 qp 2\r\n", REPLIES[4] + b"\r\n",
                                          REPLIES[6] + b"\r\n", REPLIES[7] + b"\r\n"]))]
            else:
                size = d.integer(0, 3000)
                parts += [("C", b"BDAT %d LAST\r\n" % size + _body(d).ljust(size, b"b")[:size]),
                          ("S", b"250 ok\r\n")]
    if d.chance(70):
        parts += [("C", b"QUIT\r\n"), ("S", b"221 bye\r\n")]
    return [(side, data if d.chance(90) else (_server_bytes(d) if side == "S"
                                              else _client_bytes(d)))
            for side, data in parts]


def _free_form(d: Draw, max_steps: int) -> list[tuple[str, bytes]]:
    """Steps from both sides in any order, any bytes."""
    parts = []
    side = "S" if d.chance(90) else "C"  # the banner first, or an early talker
    for _ in range(d.integer(0, max_steps)):
        parts.append((side, _server_bytes(d) if side == "S" else _client_bytes(d)))
        if d.chance(85):
            side = "C" if side == "S" else "S"
    return parts


def session(d: Draw, max_steps: int = 14, max_pause_us: int = 20_000) -> Session:
    """One generated session: a real SMTP dialogue with hostile bytes in it, or
    free-form steps; each step cut into chunks, lock-step or pipelined."""
    parts = _dialogue(d) if d.chance(60) else _free_form(d, max_steps)
    lockstep = d.chance(50)  # else each step may not wait (pipelining, early talk)
    steps = tuple(Step(side, _chunks(d, data, max_pause_us), sync=lockstep or d.chance(70))
                  for side, data in parts)
    exit_code = 0 if d.chance(80) else d.integer(1, 255)
    return Session(steps, child_half_close=not d.chance(70), exit_code=exit_code)


def child_script(s: Session) -> bytes:
    """The script_child program that plays the server's side of ``s``."""
    out = bytearray()
    if s.stderr:
        out += b"E" + struct.pack("<I", len(s.stderr)) + s.stderr
    heard = 0
    for step in s.steps:
        if step.side == "C":
            heard += len(step.data)
            continue
        if step.sync:
            out += b"W" + struct.pack("<I", heard)
        for pause, chunk in step.chunks:
            if pause:
                out += b"P" + struct.pack("<I", pause)
            out += b"S" + struct.pack("<I", len(chunk)) + chunk
    if s.child_half_close:
        out += b"H"
    out += b"X" + struct.pack("<I", s.exit_code)
    return bytes(out)


# ---------------------------------------------------------------------------
# The server (tcpserver or serve) and its log, read and checked line by line.

@dataclass
class Logged:
    """One session's lines as the log reader matched them."""

    connect: dict[str, object]
    summary: dict[str, object] | None = None


class Server:
    """``FRONT [-v -R -H -l 0 -c N] -1 127.0.0.1 0 PROG`` in its own session.

    ``front`` is ``["tcpserver"]`` or the wrapper's argv plus ``serve``; the
    program is the wrapper around script_child (tcpserver) or script_child
    itself (serve).  Every line on its stderr, except tcpserver's own
    (``tcpserver: ...``), is parsed strictly as it comes, by a thread:
    logfmt or, with ``fmt="json"``, JSON.  A line that does not parse goes
    to ``bad_lines``; each connection's ``connect`` and ``summary`` events
    are matched by the client's address; ``keep`` keeps every line.
    """

    def __init__(self, front: list[str], prog: list[str], child_dir: Path,
                 fmt: str = "logfmt", limit: int = 64, env: dict[str, str] | None = None,
                 check_line: Callable[[dict[str, object]], None] | None = None,
                 keep: bool = False) -> None:
        self.fmt = fmt
        self.keep = keep  # keep every line: (raw, event), in order
        self.kept: list[tuple[bytes, dict[str, object]]] = []
        self.child_dir = child_dir
        self.check_line = check_line
        self.bad_lines: list[str] = []
        self.lines = 0
        self.foreign_lines = 0
        self._lock = threading.Lock()
        # A connection is (remote, remote_port); its summary names (remote, child_pid).
        self._connects: dict[tuple[str, str], dict[str, object]] = {}
        self._ports: dict[tuple[str, str], str] = {}
        self._done: dict[tuple[str, str], Logged] = {}
        self._waiters: dict[tuple[str, str], tuple[asyncio.AbstractEventLoop,
                                                   asyncio.Future[Logged]]] = {}
        environ = dict(os.environ if env is None else env, SCRIPT_CHILD_DIR=str(child_dir))
        self.proc = subprocess.Popen(
            [*front, "-v", "-R", "-H", "-l", "0", "-c", str(limit), "-1", "127.0.0.1", "0",
             *prog],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=environ, start_new_session=True)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._reader = threading.Thread(target=self._read_log, args=(self.proc.stderr,),
                                        daemon=True)
        self._reader.start()
        port = printed_port(self.proc, 20)
        if port is None:
            self.stop()
            raise AssertionError(f"{front} did not start: {self.bad_lines!r}")
        self.port = port

    def _read_log(self, pipe) -> None:
        for raw in pipe:
            if raw.startswith(b"tcpserver: "):
                self.foreign_lines += 1
                continue
            try:
                ev = parse_json(raw) if self.fmt == "json" else parse(raw)
                if self.check_line is not None:
                    self.check_line(ev)
            except (StrictError, AssertionError) as err:
                with self._lock:
                    self.bad_lines.append(f"{err}: {raw!r}")
                continue
            with self._lock:
                self.lines += 1
                if self.keep:
                    self.kept.append((raw, ev))
                if ev["event"] == "connect":
                    key = (str(ev["remote"]), str(ev["remote_port"]))
                    self._connects[key] = ev
                    self._ports[(key[0], str(ev["child_pid"]))] = key[1]
                elif ev["event"] == "summary":
                    port = self._ports.pop((str(ev["remote"]), str(ev["child_pid"])), None)
                    if port is not None:
                        key = (str(ev["remote"]), port)
                        self._finish(key, Logged(self._connects.pop(key), ev))

    def _finish(self, key: tuple[str, str], logged: Logged) -> None:
        """A connection's summary came: wake its client, or keep it for later."""
        waiter = self._waiters.pop(key, None)
        if waiter is None:
            self._done[key] = logged
            return
        loop, future = waiter
        loop.call_soon_threadsafe(lambda: future.done() or future.set_result(logged))

    async def logged(self, ip: str, port: int, timeout: float) -> Logged:
        """The connect and summary events of the client at ip:port (waits for them)."""
        key = (ip, str(port))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Logged] = loop.create_future()
        with self._lock:
            done = self._done.pop(key, None)
            if done is not None:
                return done
            self._waiters[key] = (loop, future)
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            with self._lock:
                self._waiters.pop(key, None)
                return Logged(self._connects.get(key, {}))

    def stop(self) -> None:
        """Kill the server's process group; reap it."""
        for sig in (15, 9):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=5)
                break
            except subprocess.TimeoutExpired:
                continue
        self._reader.join(5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


# ---------------------------------------------------------------------------
# The client side, and the verdict on one session.

@dataclass
class Played:
    session: Session
    address: tuple[str, int]
    received: bytes = b""  # what the client received
    child_got: bytes | None = None  # what the child recorded (None: no record)
    logged: Logged | None = None
    error: str | None = None
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)


def _sources(count: int = 250) -> Iterator[str]:
    """Client source addresses taken in turn: ports in TIME_WAIT on one address
    do not run out the ephemeral range for the next sessions."""
    while True:
        for i in range(1, count + 1):
            yield f"127.0.0.{i}"


SOURCES = _sources()


async def play(server: Server, s: Session, timeout: float = SESSION_TIMEOUT_S) -> Played:
    """Play ``s`` once through ``server``: client side here, server side in the child."""
    started = time.monotonic()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.bind((next(SOURCES), 0))
    ip, port = sock.getsockname()
    played = Played(s, (ip, port))
    script = server.child_dir / f"{ip}_{port}.script"
    record = server.child_dir / f"{ip}_{port}.got"
    script.write_bytes(child_script(s))
    received = bytearray()
    try:
        await asyncio.wait_for(_client(sock, server.port, s, received), timeout)
    except (OSError, TimeoutError) as err:
        played.error = f"client: {type(err).__name__}: {err}"
    finally:
        if sock.fileno() >= 0:  # not handed to a transport (which closes it)
            sock.close()
    played.received = bytes(received)
    # The summary comes after the child's exit, so after its record was written.
    played.logged = await server.logged(ip, port, timeout)
    deadline = time.monotonic() + (1.0 if played.logged.summary else timeout)
    while not record.exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    if record.exists():
        played.child_got = record.read_bytes()
        record.unlink()
    script.unlink()
    played.seconds = time.monotonic() - started
    played.problems = problems(played)
    return played


async def _client(sock: socket.socket, port: int, s: Session, received: bytearray) -> None:
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
    more = asyncio.Event()

    async def read_all() -> None:
        try:
            while data := await reader.read(1 << 16):
                received.extend(data)
                more.set()
        finally:
            more.set()

    reading = asyncio.ensure_future(read_all())
    heard = 0
    try:
        for step in s.steps:
            if step.side == "S":
                heard += len(step.data)
                continue
            while step.sync and len(received) < heard and not reading.done():
                more.clear()  # no await since the test: no wake-up can be lost
                await more.wait()
            for pause, chunk in step.chunks:
                if pause:
                    await asyncio.sleep(pause / 1e6)
                writer.write(chunk)
                await writer.drain()
        writer.write_eof()
        await reading
    finally:
        reading.cancel()
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


def problems(p: Played) -> list[str]:
    """What is wrong with one played session; empty when both ways were exact."""
    s, out = p.session, []
    want_down, want_up = s.sent("S"), s.sent("C")
    if p.error:
        out.append(p.error)
    if p.received != want_down:
        out.append(f"client got {len(p.received)} bytes, child sent {len(want_down)}; "
                   f"first difference at {_first_diff(p.received, want_down)}")
    if p.child_got is None:
        out.append("no record from the child")
    elif p.child_got != want_up:
        out.append(f"child got {len(p.child_got)} bytes, client sent {len(want_up)}; "
                   f"first difference at {_first_diff(p.child_got, want_up)}")
    summary = p.logged.summary if p.logged else None
    if summary is None:
        out.append("no summary line for this connection")
    else:
        for key, want in (("bytes_in", len(want_up)), ("bytes_out", len(want_down)),
                          ("exit", s.exit_code)):
            if str(summary.get(key)) != str(want):
                out.append(f"summary {key}={summary.get(key)!r}, want {want}")
    return out


def _first_diff(a: bytes, b: bytes) -> int:
    diffs = (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
    return next(diffs, min(len(a), len(b)))


def describe(p: Played, width: int = 300) -> str:
    """A failed session, in enough detail to replay it (long reprs cut at ``width``)."""
    def cut(value: object) -> str:
        text = repr(value)
        return text if len(text) <= width else f"{text[:width]}...({len(text)} chars)"

    steps = "\n".join(f"  {st.side} sync={st.sync} {cut(st.chunks)}" for st in p.session.steps)
    return (f"session from {p.address}: {'; '.join(p.problems)}\n"
            f"half_close={p.session.child_half_close} exit={p.session.exit_code}\n{steps}\n"
            f"client received {cut(p.received)}\nchild recorded {cut(p.child_got)}\n"
            f"logged {cut(p.logged)}")


async def play_all(server: Server, sessions: Sequence[Session]) -> list[Played]:
    """Play sessions at the same time through one server."""
    return list(await asyncio.gather(*(play(server, s) for s in sessions)))


KEEP_FAILURES = 10


async def play_many(server: Server, count: int, seed: str, concurrency: int = 8,
                    max_pause_us: int = 2000, minutes: float = 0.0, every: float = 60.0,
                    only: int | None = None, progress: Callable[[str], None] | None = None
                    ) -> dict[str, object]:
    """The deep run: ``count`` seeded sessions, ``concurrency`` at a time.

    Session ``i`` is drawn from ``random.Random(f"{seed}-{i}")`` (``only=i``
    plays that one again).  Stops after ``minutes`` when given; ``progress``
    gets a line every ``every`` seconds.  Returns the counts, the time, and
    the first failures described.
    """
    import random

    indexes = iter([only] if only is not None else range(count))
    stop_at = time.monotonic() + minutes * 60 if minutes else None
    counts = {"played": 0, "exact": 0, "failed": 0, "up_bytes": 0, "down_bytes": 0}
    failures: list[str] = []
    started = last = time.monotonic()

    async def worker() -> None:
        nonlocal last
        for i in indexes:
            if stop_at is not None and time.monotonic() > stop_at:
                return
            s = session(RandomDraw(random.Random(f"{seed}-{i}")), max_pause_us=max_pause_us)
            played = await play(server, s)
            counts["played"] += 1
            counts["up_bytes"] += len(s.sent("C"))
            counts["down_bytes"] += len(s.sent("S"))
            if played.problems:
                counts["failed"] += 1
                if len(failures) < KEEP_FAILURES:
                    failures.append(f"session {i} of seed {seed}: {describe(played)}")
                    if progress is not None:
                        progress(failures[-1])
            else:
                counts["exact"] += 1
            now = time.monotonic()
            if progress is not None and now - last >= every:
                last = now
                progress(f"{counts['played']} played, {counts['failed']} failed, "
                         f"{counts['played'] / (now - started):.1f}/s, {now - started:.0f} s, "
                         f"{server.lines} log lines, {len(server.bad_lines)} bad")

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.monotonic() - started
    return {**counts, "seconds": round(seconds, 1),
            "sessions_per_s": round(counts["played"] / seconds, 1) if seconds else 0,
            "log_lines": server.lines, "bad_lines": server.bad_lines[:KEEP_FAILURES],
            "failures": failures}
