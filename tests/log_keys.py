"""The fixed set of keys that supervise-smtp's event lines may carry.

Every line the suite reads from the wrapper or serve (``helpers.events``,
``byte_sessions.Server``) is checked against it: a key outside the set is a
key some input made up (a forged key: client or child bytes that escaped
their value) or a key renamed or added without anyone noticing.  Logs are an
API (STYLE.md): a new key is added here on purpose, in the same commit as
the code that writes it.

Written out by hand from the code that writes lines (session/run.py,
session/diagnose.py, session/stderr.py, cli.py, session/alert.py,
serve/server.py, serve/stats.py, serve/worker.py, the observer's and TLS
events' fields) and checked
against what the whole suite's lines carried.
"""

from __future__ import annotations

__all__ = ["LOG_KEYS", "check_keys"]

# Every line: event= first, then remote= and pid= (remote only under a tcpserver).
_BASE = "event remote pid"

# The observer's events (observer/events.py, observer/tls.py): their fields are keys.
_OBSERVER = """
    mechanism user user_truncated result code enhanced text truncated message line offset
    pipelining size starttls auth chunking eightbitmime smtputf8 keywords verb args address
    params pipelined method wire_bytes qmail_size lines dot_stuffed bare_lf_count
    bare_lf_first_line bare_cr_count bare_cr_first_line nul_count nul_first_line
    long_line_count long_line_first_line eight_bit_count eight_bit_first_line smuggling_count
    chunks in_stage body_bytes body_lines unknown_lines direction limit peer stage pending
    partial_bytes kind command arg variant implicit length level description encrypted sni
    versions alpn cipher_count records bytes mid_record first_bytes version cipher cipher_id
    hello_retry
"""

# One connection (session.py, scanner.py, cli.py, alert.py): connect, child_stderr,
# child_exit, disconnect, bare_lf_fixed, queue_parent_died, wrapper_error,
# observer_error, capture, capture_error, alert.
_SESSION = """
    remote_port remote_host remote_info local local_port child_pid prog source line_bytes
    exit signal core user_s sys_s maxrss_kb bytes_in bytes_out first_close client_error
    duration_ms sender count first_line dot_lines queue_pid where error errno file verdict
    action alert_pid suppressed suppressed_before log_dropped
"""

# The summary (diagnose.py): verdict, reason and facts; one count per SMTP verb.
_SUMMARY = """
    reason stopped_by ehlo helo starttls mail rcpt data bdat rset noop vrfy quit unknown
    commands helo_name mail_from_domain tls tls_version tls_cipher auth_user auth_failed
    queued reply_delivered bare_lf bare_lf_line smuggling queue_exit queue queue_outlived
    queue_signal queue_notes rejects rejects_unlogged stderr_unlogged notes last_reply
"""

# serve's parent (serve.py, serve_stats.py): listen, end, limit, stop, drop,
# worker_lost, serve_error, serve_stats.
_SERVE = """
    status active backlog served missing drain_s accepted denied rss_kb fds workers
    workers_uss_kb interval_s repeated
"""

LOG_KEYS = frozenset(" ".join((_BASE, _OBSERVER, _SESSION, _SUMMARY, _SERVE)).split())


def check_keys(event: dict[str, object]) -> None:
    """AssertionError when a parsed line carries a key outside LOG_KEYS."""
    unknown = [key for key in event if key not in LOG_KEYS]
    assert not unknown, (
        f"keys {unknown} of event={event.get('event')} are not in tests/log_keys.py "
        f"(a forged key, or a new one to add there on purpose): {event!r}")
