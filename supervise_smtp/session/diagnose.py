"""One verdict per connection, and the summary line's fields (pure).

Everything the session saw is gathered in ``Facts``; ``diagnose(facts)``
decides.  The verdict names are an API (docs/verdicts.md): never rename one.
Precedence, first that applies (docs/design.md, "Verdicts"):

  wrapper_error, stopped, server_crashed, bare_lf, timeout, tls_failed,
  queue_perm_fail, queue_temp_fail, client_lost_after_<stage>, rejected, ok

and ``unknown`` only where nothing fits.  Whatever else happened stays on the
summary as fields (queued, reply_delivered, last_reply, notes...).
"""

from __future__ import annotations

from supervise_smtp.observer.commands import NOT_SMTP_LINES
from supervise_smtp.observer.state import STAGE_QUIT
from supervise_smtp.observer.state import STAGES as OBSERVER_STAGES
from supervise_smtp.session.qmail import is_smtplf, is_timeout, qq_meaning, queue_pid

TYPE_CHECKING = False  # typing is a costly import per connection; mypy knows this name
if TYPE_CHECKING:
    from typing import Any

__all__ = ["VERDICTS", "STAGES", "HOST_CAP", "Facts", "diagnose", "client_lost", "sender_domain"]

STAGES = tuple(s for s in OBSERVER_STAGES if s != STAGE_QUIT)  # after QUIT, not lost


def client_lost(stage: str) -> str:
    """The verdict of a client gone before QUIT in ``stage``."""
    return "client_lost_after_" + (stage if stage in STAGES else "connect")


VERDICTS = ("ok", "bare_lf", "timeout", "queue_temp_fail", "queue_perm_fail", "rejected",
            "tls_failed", "server_crashed", "wrapper_error", "unknown", "stopped",
            *(client_lost(s) for s in STAGES))

# helo_name= and mail_from_domain= are cut here: a DNS name is at most 253
# octets, and an address literal ([IPv6:...]) fits too.
HOST_CAP = 255

# Counted verbs, in summary order; "data" is messages accepted / DATA sent.
_VERBS = ("ehlo", "helo", "starttls", "auth", "mail", "rcpt", "data", "bdat", "rset",
          "noop", "vrfy", "quit", "unknown")


class Facts:
    """What the session knows at the end of one connection."""

    __slots__ = (
        "state", "wrapper_error", "exit_code", "signal", "signal_name", "core", "first_close",
        "client_gone", "client_stage", "end_replies", "exit_lost", "tls_version",
        "tls_cipher", "tls_alert", "tls_started", "tls_hello_done",
        "refusals", "scanner_died_pid", "queue_notes", "timeout_fired", "bytes_in",
        "bytes_out", "notes", "queue_watch_pid", "queue_outlived", "queue_reaped",
        "stopped_by", "reply_acked", "quit_heard", "helo_name", "mail_from_domain",
        "stderr_unlogged", "last_stderr",
    )

    state: Any  # the observer's SessionState; None when not observed
    wrapper_error: str | None
    exit_code: int | None
    signal: int | None
    signal_name: str | None
    core: bool
    first_close: str | None  # "client" or "server"
    client_gone: bool  # a write to the client failed
    client_stage: str | None  # observer stage when the client closed
    end_replies: list[tuple[int, bytes]]  # replies to end of data / BDAT LAST
    exit_lost: bool  # the child's exit status could not be read (someone else reaped it)
    tls_version: str | None
    tls_cipher: str | None
    tls_alert: tuple[str, str, str] | None  # level, description, direction
    tls_started: bool
    tls_hello_done: bool
    refusals: list[tuple[int, bytes]]  # last 4xx/5xx replies to commands
    scanner_died_pid: int | None
    queue_notes: list[str]
    timeout_fired: str | None
    bytes_in: int
    bytes_out: int
    notes: list[str]
    queue_watch_pid: int | None  # the queue program seen under the child at DATA
    queue_outlived: bool  # ... and still alive after the child was gone
    queue_reaped: dict[str, object] | None  # --subreaper: its own exit/signal
    reply_acked: bool | None  # the client's TCP acknowledged the reply to '.'; False:
    # the connection ended first; None: not TCP, no answer in time, or no such reply
    quit_heard: bool | None  # ... every byte before the reply to QUIT: the client was
    # there for its session's end (False: gone before its pipelined QUIT was answered)
    stopped_by: list[str] | None  # TERM/HUP/INT we received and passed on (SIGTERM...)
    helo_name: bytes | None  # the argument of the last EHLO/HELO
    mail_from_domain: bytes | None  # the domain of the last MAIL FROM (never its local part)
    stderr_unlogged: int  # child stderr lines past the first STDERR_EVENTS: counted only
    last_stderr: bytes | None  # the last line on the child's stderr, cut (session/stderr.py)

    def __init__(self, **fields: Any) -> None:
        for key in self.__slots__:
            setattr(self, key, fields.pop(key, None))
        if fields:
            raise TypeError(f"unknown facts {sorted(fields)}")
        for key in ("end_replies", "refusals", "queue_notes", "notes"):
            if getattr(self, key) is None:
                setattr(self, key, [])
        for key in ("core", "client_gone", "exit_lost", "tls_started",
                    "tls_hello_done", "queue_outlived"):
            if getattr(self, key) is None:
                setattr(self, key, False)
        for key in ("bytes_in", "bytes_out", "stderr_unlogged"):
            if getattr(self, key) is None:
                setattr(self, key, 0)

    def take_end(self, state: Any, status: Any, signal_name: str | None, link: Any) -> None:
        """The connection's end in one step: the observer's state (None: not observed),
        the child's status (process.ExitStatus) and what the relay saw (relay.Relay).

        The events were taken as they came (``note``), the queue program's and the
        stderr's facts by their watchers; this is the rest, read once.
        """
        self.state = state
        self.exit_code, self.signal, self.core = status.code, status.signal, status.core
        self.exit_lost = status.lost
        self.signal_name = signal_name
        self.first_close, self.client_gone = link.first_close, link.client_gone
        self.bytes_in, self.bytes_out = link.bytes_in, link.bytes_out
        self.timeout_fired = link.timeout_fired
        if link.tap_error is not None:
            self.wrapper_error = f"observer failed: {link.tap_error!r}"[:200]

    def note(self, ev: Any) -> None:
        """Keep, from one observer event, what the verdict needs beyond the observer's state.

        Fed every event as it happens (the session's tap), so that the facts
        hold the replies to the end of data and the first fatal TLS alert even
        when the observer is later dropped.
        """
        name = ev.NAME
        if name == "command":
            if ev.verb == "EHLO" or ev.verb == "HELO":
                self.helo_name = ev.args
            elif ev.verb == "MAIL" and ev.address is not None:
                self.mail_from_domain = sender_domain(ev.address)
        elif name == "reply":
            if ev.command in ("DATA_END", "BDAT_LAST"):
                self.end_replies.append((ev.code, ev.text or b""))
            elif ev.code >= 400 and ev.command is not None:
                self.refusals.append((ev.code, ev.text or b""))
                del self.refusals[:-5]
        elif name == "peer_closed":
            if ev.peer == "client" and self.client_stage is None:
                self.client_stage = ev.stage
        elif name == "starttls":
            self.tls_started = True
        elif name == "tls_server_hello":
            self.tls_version, self.tls_cipher, self.tls_hello_done = ev.version, ev.cipher, True
        elif name == "tls_alert":
            if self.tls_alert is None and ev.level == "fatal":
                self.tls_alert = (ev.level, ev.description, ev.direction)


def sender_domain(address: bytes) -> bytes | None:
    """The domain of a MAIL FROM address, lower-cased: after its last ``@``.

    Never the local part: an address without ``@`` (``<>``, ``postmaster``)
    has no domain to log.
    """
    at = address.rfind(b"@")
    if at < 0:
        return None
    return address[at + 1:].strip().lower() or None


def _reply_text(code: int | None, text: bytes | None) -> bytes | None:
    if code is None:
        return None
    return str(code).encode() + (b" " + text if text else b"")


def _stopped(f: Facts) -> str | None:
    """The operator's signal that ended the child, if one did (verdict ``stopped``).

    We received TERM, HUP or INT (svc -d, a reload, a shutdown, where init
    signals us and the child alike) and passed it on; then the child died of
    one of them, or exited without the session ending as it should (QUIT
    sent and exit 0 or QUIT answered, or exit 0 where QUIT cannot be read:
    inside TLS, after the not-SMTP cut-over).  A child that survives HUP and
    finishes its session is judged on the session; one killed by another
    signal (SEGV) crashed.
    """
    st = f.state
    if not f.stopped_by or st is None:
        return None
    if f.signal is not None:
        return f.signal_name if f.signal_name in f.stopped_by else None
    if st.quit_sent and (st.quit_answered or f.exit_code == 0) and f.quit_heard is not False:
        return None
    if f.exit_code == 0 and (st.tls_active or st.not_smtp):
        return None
    return f.stopped_by[-1]


def _decide(f: Facts) -> tuple[str, str]:
    st = f.state
    if f.wrapper_error:
        return "wrapper_error", str(f.wrapper_error)
    if f.exit_lost:
        return "wrapper_error", ("the child's exit status was lost (reaped by someone else, "
                                 "or SIGCHLD ignored)")
    if st is None:
        return "wrapper_error", "the SMTP conversation was not observed"
    stopped = _stopped(f)
    if stopped is not None:
        return "stopped", (f"supervise-smtp received {stopped} and passed it on: child "
                           + (f"killed by {f.signal_name}" if f.signal is not None
                              else f"exited {f.exit_code}") + f" in stage {st.stage}")
    rej = st.data_rejected
    last_code, last_text = st.last_reply_code, st.last_reply_text or b""
    smtplf = rej is not None and is_smtplf(rej.code, rej.text or b"")
    smtplf = smtplf or (last_code is not None and is_smtplf(last_code, last_text))
    timed_out = bool(f.timeout_fired) or (
        last_code is not None and is_timeout(last_code, last_text))
    client_left = f.first_close == "client" or bool(f.client_gone)
    if f.signal is not None and not f.timeout_fired:  # after a wrapper timeout, we killed it
        return "server_crashed", f"child killed by {f.signal_name}" + (
            " (core dumped)" if f.core else "")
    explained = (smtplf or timed_out or last_code == 421 or client_left or st.quit_sent
                 or bool(f.end_replies))
    if f.exit_code not in (0, None) and not explained:
        reason = f"exit {f.exit_code} with no reply explaining it"
        if f.last_stderr:  # softlimit's or the exec's own words: "unable to run ..."
            said = f.last_stderr.decode("utf-8", "surrogateescape")
            reason += f"; its stderr said: {said}"
        return "server_crashed", reason[:240]
    if smtplf:
        msg = st.message
        count = rej.bare_lf_count if rej is not None else (msg.bare_lf_count if msg else 0)
        line = rej.bare_lf_first_line if rej is not None else (
            msg.bare_lf_first_line if msg else None)
        where = f", first at body line {line}" if line else ""
        return "bare_lf", f"451 smtplf after {count} bare LF{where}"
    if timed_out:
        if f.timeout_fired:
            option = "--" + f.timeout_fired.replace("_", "-")
            return "timeout", f"wrapper {option} fired in stage {st.stage}"
        return "timeout", f"{last_code} timeout from the server in stage {st.stage}"
    if f.tls_alert is not None and f.tls_alert[0] == "fatal":
        level, description, direction = f.tls_alert
        return "tls_failed", f"fatal TLS alert {description} from the {direction}"
    if f.tls_started and not f.tls_hello_done:
        return "tls_failed", "TLS handshake cut before the ServerHello"
    if st.tls_unanswered:
        return "tls_failed", "the server closed without answering the client's TLS hello"
    perm = [r for r in f.end_replies if 500 <= r[0] < 600]
    temp = [r for r in f.end_replies if 400 <= r[0] < 500]
    if perm:
        code, text = perm[-1]
        return "queue_perm_fail", f"{code} {qq_meaning(code, text)[0] or 'rejected'} after DATA"
    if temp:
        code, text = temp[-1]
        meaning = qq_meaning(code, text)[0] or "temporary failure"
        return "queue_temp_fail", f"{code} {meaning} after DATA"
    if st.tls_active and f.exit_code == 0:
        # QUIT went inside TLS where we cannot read; qmail-smtpd exits 0 only on QUIT
        return "ok", "exit 0 after an encrypted session"
    if st.not_smtp and (f.exit_code == 0 or not client_left):
        # Every SMTP server refuses what it cannot parse (qmail-smtpd: 502).  The
        # replies and a QUIT went by unparsed, so decide on facts that do not
        # depend on timing: the exit code (0 only after QUIT) and who closed.
        return "rejected", f"client not speaking SMTP ({NOT_SMTP_LINES} unknown commands in a row)"
    # A QUIT is a clean end only for a client still there for the replies before its
    # answer: one that pipelined '.' and QUIT and left has not seen its 250.
    quit_lost = st.quit_sent and f.quit_heard is False
    if quit_lost or (not st.quit_sent and client_left):
        stage = f.client_stage or st.stage
        if stage == STAGE_QUIT:
            stage = st.quit_from or stage
        if quit_lost:
            return client_lost(stage), (f"client gone in stage {stage} before the replies "
                                        "to its pipelined commands, QUIT's included")
        how = "write to client failed" if f.client_gone and f.first_close != "client" else (
            "client closed")
        return client_lost(stage), f"{how} in stage {stage} before QUIT"
    if f.refusals and not st.messages_queued:
        code, text = f.refusals[-1]
        # The reply's own bytes, escaped once by output.py (not a Python b'...' repr,
        # which the log would escape a second time): surrogateescape keeps them all.
        reply = (_reply_text(code, text) or b"").decode("utf-8", "surrogateescape")
        return "rejected", f"session ended after refusal: {reply}"[:200]
    if st.quit_sent and (st.quit_answered or f.exit_code == 0):
        return "ok", "QUIT answered" if st.quit_answered else "QUIT sent"
    if last_code == 421:
        return "rejected", "server closed the session with 421"
    return "unknown", f"server closed first in stage {st.stage}, exit {f.exit_code}"


def _counts(st: Any) -> dict[str, object]:
    sent: dict[str, int] = {k.lower(): v for k, v in st.sent.items()}
    ok: dict[str, int] = {k.lower(): v for k, v in st.accepted.items()}
    ok["data"] = ok.get("data_end", 0)
    ok["bdat"] = ok.get("bdat_last", 0) + ok.get("bdat", 0)
    fields: dict[str, object] = {}
    total_sent = total_ok = 0
    for verb in _VERBS:
        n = sent.get(verb, 0)
        if not n:
            continue
        a = min(ok.get(verb, 0), n)
        total_sent += n
        total_ok += a
        fields[verb] = str(n) if a == n else f"{a}/{n}"
    fields["commands"] = str(total_sent) if total_ok == total_sent else f"{total_ok}/{total_sent}"
    return fields


def _stage(verdict: str, f: Facts) -> str | None:
    """The stage the verdict is about, not one the observer reached afterwards."""
    st = f.state
    if st is None:
        return "connect"
    if verdict.startswith("client_lost_after_"):
        return verdict.removeprefix("client_lost_after_")
    if verdict == "bare_lf":  # in the body, not a QUIT qmail-smtpd never read
        msg = st.message
        return "data_end" if msg is not None and msg.complete else "data_body"
    return str(st.stage)  # where the session ended (e.g. quit after a 451 qq)


def diagnose(f: Facts) -> tuple[str, dict[str, object]]:
    """The verdict and the summary fields after it, in order."""
    verdict, reason = _decide(f)
    st = f.state
    fields: dict[str, object] = {"stage": _stage(verdict, f), "reason": reason}
    if verdict == "stopped":
        fields["stopped_by"] = _stopped(f)
    if st is not None:
        fields.update(_counts(st))
    for key in ("helo_name", "mail_from_domain"):  # whom to tell about a broken mailer
        value = getattr(f, key)
        if value:
            fields[key] = value[:HOST_CAP]
            if len(value) > HOST_CAP:
                fields["truncated"] = True
    fields["bytes_in"] = f.bytes_in
    fields["bytes_out"] = f.bytes_out
    if st is not None:
        fields["tls"] = bool(st.tls_active)
        if st.tls_active:
            fields["tls_version"] = f.tls_version
            fields["tls_cipher"] = f.tls_cipher
        if st.auth_result == "ok":
            fields["auth"] = st.auth_mechanism
            fields["auth_user"] = st.auth_user
        elif st.auth_result is not None:
            fields["auth_failed"] = st.auth_mechanism
        msg = st.message
        if msg is not None:
            if f.end_replies:
                fields["queued"] = "yes" if 200 <= f.end_replies[-1][0] < 300 else "no"
            elif st.stage == "data_end":
                fields["queued"] = "unknown"  # '.' sent, no reply seen
            else:
                fields["queued"] = "no"
            if f.end_replies and st.end_reply_offset is not None:
                # yes only once the client's TCP acknowledged every byte of it;
                # no when it is known to have missed it; never yes by default
                if f.bytes_out < st.end_reply_offset or f.reply_acked is False:
                    fields["reply_delivered"] = "no"
                else:
                    fields["reply_delivered"] = "yes" if f.reply_acked else "unknown"
            if msg.bare_lf_count:
                fields["bare_lf"] = msg.bare_lf_count
                fields["bare_lf_line"] = msg.bare_lf_first_line
            if msg.smuggling_count:
                fields["smuggling"] = msg.smuggling_count
        if f.end_replies:
            code, text = f.end_replies[-1]
            meaning, qq_exit = qq_meaning(code, text)
            fields["queue_pid"] = queue_pid(text) if code < 300 else None
            fields["queue_exit"] = qq_exit
            if meaning and meaning != "accepted":
                fields["queue"] = meaning
    if f.queue_watch_pid is not None and fields.get("queue_pid") is None:
        fields["queue_pid"] = f.queue_watch_pid
    if f.queue_watch_pid is not None:
        fields["queue_outlived"] = f.queue_outlived
    if f.scanner_died_pid is not None:
        fields["queue"] = "parent_died"
        fields["queue_pid"] = f.scanner_died_pid or fields.get("queue_pid")
    if f.queue_reaped:
        fields["queue_exit"] = f.queue_reaped.get("exit")
        fields["queue_signal"] = f.queue_reaped.get("signal")
    if f.queue_notes:
        fields["queue_notes"] = tuple(f.queue_notes)
    if f.stderr_unlogged:
        fields["stderr_unlogged"] = f.stderr_unlogged
    if st is not None and st.rejects:
        fields["rejects"] = st.rejects
        fields["rejects_unlogged"] = st.rejects_unlogged or None
    if f.notes:
        fields["notes"] = tuple(f.notes)
    if st is not None:
        fields["last_reply"] = _reply_text(st.last_reply_code, st.last_reply_text)
    return verdict, fields
