"""The report as text: report.py's tables, pflogsumm-style, at most 100 columns.

Only renders: every figure comes from ``Tally.tables()``, the object
``--json`` prints, so the two can never disagree.  Values shown from the log
are its escaped text (printable ASCII); a line longer than WIDTH is cut and
ends with ``...``.
"""

from __future__ import annotations

from supervise_smtp.logs.stamps import KIND_TAI64N

__all__ = ["WIDTH", "render"]

WIDTH = 100
_REMOTE_WIDTH = 39  # a full IPv6 address


def _fit(line: str) -> str:
    line = line.rstrip()
    return line if len(line) <= WIDTH else line[:WIDTH - 3] + "..."


def _n(count: object, noun: str) -> str:
    """``1 connection``, ``2 connections``."""
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _when(iso: object) -> str:
    """``2026-11-29T17:26:08Z`` as ``2026-11-29 17:26:08``; ``-`` for none."""
    return str(iso).replace("T", " ").rstrip("Z") if iso else "-"


def _heading(out: list[str], title: str) -> None:
    out += ["", title, "-" * min(len(title), WIDTH)]


def _counts(out: list[str], title: str, counts: dict[str, int], what: str,
            total: int | None = None) -> None:
    """A count / percent / name table, largest first."""
    if not counts:
        return
    _heading(out, title)
    total = total if total is not None else sum(counts.values())
    out.append(f"{'count':>9} {'%':>6}  {what}")
    for name, n in counts.items():
        share = f"{100.0 * n / total:5.1f}%" if total else "     -"
        out.append(f"{n:>9} {share:>6}  {name}")


def _inline(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in counts.items()) or "none"


_REMOTES_WHY = {
    "bare_lf": " -- the broken mailers to contact",
    "bare_lf_fixed": " -- delivered only because --bare-lf fix rewrote them: contact them too",
}


def _remotes(out: list[str], top: dict[str, dict[str, object]]) -> None:
    if not top:
        return
    _heading(out, "Remotes per abnormal verdict (~: an upper bound, the sketch dropped some)")
    for verdict, table in top.items():
        out.append("")
        rows = table["top"]
        assert isinstance(rows, list)
        note = "" if table["exact"] else ", counts approximate"
        out.append(f"{verdict}: {_n(table['connections'], 'connection')}{note}"
                   + _REMOTES_WHY.get(verdict, ""))
        out.append(f"{'count':>9}  {'remote':<{_REMOTE_WIDTH}}  {'first seen (UTC)':<19}  "
                   "last seen (UTC)")
        for row in rows:
            count = f"~{row['count']}" if row["error"] else str(row["count"])
            remote = str(row["remote"])
            if len(remote) > _REMOTE_WIDTH:
                remote = remote[:_REMOTE_WIDTH - 3] + "..."
            out.append(f"{count:>9}  {remote:<{_REMOTE_WIDTH}}  {_when(row['first_seen']):<19}  "
                       f"{_when(row['last_seen'])}")
            said = []
            if row["helo_name"]:
                said.append(f"helo {row['helo_name']}")
            if row["mail_from_domain"]:
                said.append(f"mail from @{row['mail_from_domain']}")
            if said:
                out.append(" " * 11 + ", ".join(said))


def _queue(out: list[str], hours: list[dict[str, object]], meanings: dict[str, int]) -> None:
    if not hours:
        return
    _heading(out, "Queue failures per hour (UTC)")
    out.append(f"{'hour':<16}  {'temp':>7}  {'perm':>7}")
    shown = hours if len(hours) <= 48 else hours[:24] + [{}] + hours[-24:]
    for row in shown:
        if not row:
            out.append(f"... {len(hours) - 48} more hours ...")
            continue
        hour = _when(row["hour"])[:16] if row["hour"] else "(no timestamp)"
        out.append(f"{hour:<16}  {row['queue_temp_fail']:>7}  {row['queue_perm_fail']:>7}")
    out.append(f"why (queue=): {_inline(meanings)}")


def _duplicates(out: list[str], dup: dict[str, object]) -> None:
    yes, unknown = dup["queued_yes_reply_not_delivered"], dup["queued_unknown"]
    if not yes and not unknown:
        return
    _heading(out, "Duplicate risk: queued, the client never got the reply, it will send again")
    out.append(f"queued=yes reply_delivered=no or unknown: {yes}; "
               f"queued=unknown (reply never seen): "
               f"{unknown}")
    rows = dup["recent"]
    assert isinstance(rows, list)
    out.append(f"the last {len(rows)}:")
    out.append(f"{'time (UTC)':<19}  {'remote':<{_REMOTE_WIDTH}}  {'pid':>7}  {'queued':<7}  "
               "queue_pid")
    for row in rows:
        remote = str(row["remote"])[:_REMOTE_WIDTH]
        out.append(f"{_when(row['time']):<19}  {remote:<{_REMOTE_WIDTH}}"
                   f"  {row['pid'] or '-':>7}  {row['queued']:<7}  {row['queue_pid'] or '-'}")
        said = [f"verdict {row['verdict']}"]
        if row["helo_name"]:
            said.append(f"helo {row['helo_name']}")
        if row["mail_from_domain"]:
            said.append(f"mail from @{row['mail_from_domain']}")
        out.append(" " * 4 + ", ".join(said))


def render(t: dict[str, object]) -> str:
    """The whole report, one string ending in a newline."""
    inp = t["input"]
    assert isinstance(inp, dict)
    out = ["supervise-smtp report", "=" * 21]
    out.append(f"period (UTC):  {_when(t['first_seen'])} .. {_when(t['last_seen'])}")
    out.append(f"connections:   {inp['summaries']}")
    out.append(f"input:         {_n(inp['files'], 'file')}, {_n(inp['lines'], 'line')}: "
               f"{inp['summaries']} summaries, {inp['events']} other events, "
               f"{inp['foreign']} foreign, {inp['malformed']} malformed")
    if inp["out_of_window"] or inp["filtered"]:
        out.append(f"               left out: {inp['out_of_window']} outside --since/--until, "
                   f"{inp['filtered']} by --remote/--verdict")
    stamps = inp["stamps"]
    assert isinstance(stamps, dict)
    tai = f" (tai64n read as {t['tai64n']})" if stamps.get(KIND_TAI64N) else ""
    out.append(f"timestamps:    {_inline(stamps)}{tai}")
    for error in inp["read_errors"]:
        out.append(f"read error:    {error}")
    for note in inp["notes"]:
        out.append(f"note:          {note}")
    if t["log_dropped"]:
        out.append(f"log_dropped:   {t['log_dropped']} event lines the wrappers could not log")
    total = int(inp["summaries"])
    _counts(out, "Verdicts", t["verdicts"], "verdict", total)  # type: ignore[arg-type]
    _counts(out, "Stages (where each connection ended)", t["stages"],  # type: ignore[arg-type]
            "stage", total)
    _counts(out, "Reply codes (each connection's last reply)",
            t["reply_codes"], "code", total)  # type: ignore[arg-type]
    _counts(out, "Refusals (event=reject lines, by code)",
            t["refusal_codes"], "code")  # type: ignore[arg-type]
    _remotes(out, t["top_remotes"])  # type: ignore[arg-type]
    _queue(out, t["queue_failures_per_hour"], t["queue_failure_meanings"])  # type: ignore[arg-type]
    tls = t["tls"]
    assert isinstance(tls, dict)
    if tls["connections"]:
        _heading(out, f"TLS: {tls['connections']} of {total} connections encrypted")
        out.append(f"versions: {_inline(tls['versions'])}")
        _counts(out, "TLS ciphers", tls["ciphers"], "cipher", tls["connections"])
    _duplicates(out, t["duplicate_risk"])  # type: ignore[arg-type]
    child = t["child"]
    assert isinstance(child, dict)
    if child["signals"] or child["exits"] or child["parent_died"] or child["queue_signals"]:
        _heading(out, "Children")
        out.append(f"qmail-smtpd killed by signals: {_inline(child['signals'])}"
                   f" ({child['cores']} dumped core)")
        exits = ", ".join(f"exit {code}: {_n(n, 'connection')}"
                          for code, n in child["exits"].items()) or "none"
        out.append(f"qmail-smtpd exit codes other than 0: {exits}")
        out.append(f"qmail-scanner parent deaths: {child['parent_died']}"
                   + (f" ({_inline(child['parent_died_by_verdict'])})"
                      if child["parent_died"] else ""))
        if child["queue_signals"]:
            out.append(f"queue program killed by signals: {_inline(child['queue_signals'])}")
    _counts(out, "Other event lines", t["events"], "event")  # type: ignore[arg-type]
    return "\n".join(_fit(line) for line in out) + "\n"
