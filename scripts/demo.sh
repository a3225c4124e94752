#!/bin/sh
# The demo of the README: tcpserver on 127.0.0.1 with supervise-smtp in front
# of a stdio SMTP server (the qmail-smtpd test double, whose queue program is a
# qmail-scanner-like fake), one good message and one with bare LF sent with
# swaks, then the wrapper's log lines.
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
trap cleanup EXIT INT TERM

# The exec line of a qmail-smtpd run script, with the test double standing in
# for /var/qmail/bin/qmail-smtpd.
FAKE_QMAIL_CONTROL="$WORK/control" FAKE_QUEUE_DIR="$WORK/queue" \
QMAILQUEUE="$ROOT/tests/fakes/fake-qmail-scanner" \
  tcpserver -v -R -H -l 0 127.0.0.1 "$PORT" \
    "$ROOT/.venv/bin/supervise-smtp" -- "$ROOT/tests/fakes/fake-qmail-smtpd" \
    2> "$WORK/log" &
TCPSERVER_PID=$!
for _ in 1 2 3 4 5 6 7 8 9 10; do
  grep -q 'status: 0/' "$WORK/log" 2>/dev/null && break; sleep 0.2
done

echo "== a well-formed message"
swaks --server "127.0.0.1:$PORT" --from alice@example.org --to postmaster@localhost \
  --header 'Subject: demo' --body 'hello' --hide-all || true
echo "== a message with bare LF line endings (a broken mailer)"
printf 'Subject: bare LF\nTo: postmaster@localhost\n\nline one\nline two\n' > "$WORK/bare.eml"
swaks --server "127.0.0.1:$PORT" --from broken@example.org --to postmaster@localhost \
  --data "$WORK/bare.eml" --no-data-fixup || true
sleep 1.5
echo
echo "== what the log service would get (tcpserver -v and supervise-smtp on fd 2)"
cat "$WORK/log"
