#!/bin/sh
# The demo of the README: tcpserver on 127.0.0.1 with supervise-smtp in front
# of a stdio SMTP server (the qmail-smtpd test double, whose queue program is a
# qmail-scanner-like fake).  The same small message is sent twice with swaks,
# once with CRLF line endings and once with bare LF (a broken mailer); each
# session shows the server's replies, then the log shows what tcpserver and
# supervise-smtp wrote, each connection's verdict and reason in bold on a
# terminal.  Runs as root or not (bootstrap asks sudo for apt when needed).
set -eu
cd "$(dirname "$0")/.."
sh scripts/bootstrap.sh
ROOT=$(pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/supervise-smtp-demo.XXXXXX")
PORT=${DEMO_PORT:-$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}
mkdir -p "$WORK/control" "$WORK/queue"
echo demo.example > "$WORK/control/me"
echo localhost > "$WORK/control/rcpthosts"

cleanup() { [ -n "${TCPSERVER_PID:-}" ] && kill "$TCPSERVER_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# Bold where a person reads it; plain bytes in a pipe or a file.
BOLD= PLAIN=
if [ -t 1 ] && command -v tput >/dev/null 2>&1; then
  BOLD=$(tput bold 2>/dev/null) && PLAIN=$(tput sgr0 2>/dev/null) || BOLD= PLAIN=
fi

# wait_for PATTERN COUNT WHAT: poll the log until COUNT lines match (10 s at most).
wait_for() {
  tries=0
  while :; do
    found=$(grep -c -- "$1" "$WORK/log" 2>/dev/null) || true
    [ "${found:-0}" -ge "$2" ] && return 0
    tries=$((tries + 1))
    if [ "$tries" -gt 100 ]; then
      echo "demo: $3 not in the log after 10 s; the log so far:" >&2
      cat "$WORK/log" >&2
      exit 1
    fi
    sleep 0.1
  done
}

# The exec line of a qmail-smtpd run script, with the test double standing in
# for /var/qmail/bin/qmail-smtpd.
FAKE_QMAIL_CONTROL="$WORK/control" FAKE_QUEUE_DIR="$WORK/queue" \
QMAILQUEUE="$ROOT/tests/fakes/fake-qmail-scanner" \
  tcpserver -v -R -H -l 0 127.0.0.1 "$PORT" \
    "$ROOT/.venv/bin/supervise-smtp" -- "$ROOT/tests/fakes/fake-qmail-smtpd" \
    2> "$WORK/log" &
TCPSERVER_PID=$!
wait_for '^tcpserver: status: 0/' 1 "tcpserver's start"

# session N TITLE [SWAKS OPTIONS]: send the message and show the server's
# replies only (<- a reply, <** an error reply, *** swaks's own complaint).
session() {
  n=$1 title=$2
  shift 2
  echo "== $n. $title"
  swaks --server "127.0.0.1:$PORT" --from alice@example.org --to postmaster@localhost \
    --data "@$WORK/message" --timeout 10 "$@" \
    --hide-send --hide-informational --output-file-stderr '&STDOUT' | sed 's/^/   /'
  # tcpserver's "status: 0/N" follows the end of each connection: its lines are all in.
  wait_for '^tcpserver: status: 0/' $((n + 1)) "the end of connection $n"
}

# One message, written with LF line endings as files on Unix are.  swaks sends
# it first as a well-behaved mailer would (CRLF, then CRLF.CRLF), then byte for
# byte (--no-data-fixup): bare LF, as a broken mailer does.
printf 'From: alice@example.org\nTo: postmaster@localhost\nSubject: demo\n\nline one\nline two\n' \
  > "$WORK/message"
session 1 "a well-formed message (CRLF line endings)"
session 2 "the same message with bare LF line endings (a broken mailer)" --no-data-fixup

echo
echo "== the log (what the log service gets from tcpserver -v and supervise-smtp on fd 2)"
if [ -n "$BOLD" ]; then
  sed -E "/^event=summary /{
s/(verdict=[^ ]*)/$BOLD\\1$PLAIN/
s/(reason=(\"([^\"\\\\]|\\\\.)*\"|[^ ]*))/$BOLD\\1$PLAIN/
}" "$WORK/log"
else
  cat "$WORK/log"
fi
echo
echo "Each connection ends with event=summary: its verdict and the reason for it;"
echo "tcpserver -v alone says only \"end PID status S\"."
