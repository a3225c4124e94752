/* A minimal, fast SMTP responder on fds 0/1 for benchmarks.
 *
 * The child must be cheap and identical across the compared chains (direct,
 * recordio, supervise-smtp), so that the chain's cost is what is measured.
 * It answers the banner, EHLO/HELO, MAIL, RCPT, RSET, NOOP, DATA (354, then
 * swallows the body up to "\r\n.\r\n" in large reads) and QUIT (221, exit 0).
 * Client EOF: exit 1, as qmail-smtpd does.
 *
 * "smtp_sink raw" is the raw-stream sink instead: no banner, it reads to
 * EOF in large reads, answers "done N" with the byte count, and exits 0.
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static char buf[1 << 16];
static size_t len, pos;

static void out(const char *s) { size_t n = strlen(s); while (n) { ssize_t w = write(1, s, n); if (w <= 0) _exit(1); s += w; n -= (size_t)w; } }

static int fill(void) {
  if (pos < len) return 1;
  ssize_t r = read(0, buf, sizeof buf);
  if (r <= 0) return 0;
  len = (size_t)r; pos = 0; return 1;
}

static size_t getline_(char *line, size_t max) {
  size_t n = 0;
  for (;;) {
    if (!fill()) _exit(1);
    char *nl = memchr(buf + pos, '\n', len - pos);
    size_t take = nl ? (size_t)(nl - (buf + pos)) + 1 : len - pos;
    size_t copy = take < max - n ? take : max - n;
    memcpy(line + n, buf + pos, copy); n += copy; pos += take;
    if (nl) return n;
  }
}

static void body(void) {
  /* state: how much of "\r\n.\r\n" has been matched; DATA starts after a line end */
  static const char end[] = "\r\n.\r\n";
  size_t m = 2;
  for (;;) {
    if (!fill()) _exit(1);
    while (pos < len) {
      char c = buf[pos++];
      if (c == end[m]) { if (++m == 5) return; }
      else m = (c == '\r') ? 1 : 0;
      if (m == 0) { /* skip fast to the next CR */
        char *cr = memchr(buf + pos, '\r', len - pos);
        pos = cr ? (size_t)(cr - buf) : len;
      }
    }
  }
}

static int raw(void) {
  unsigned long long total = 0;
  char msg[64];
  for (;;) {
    ssize_t r = read(0, buf, sizeof buf);
    if (r < 0) return 1;
    if (r == 0) break;
    total += (unsigned long long)r;
  }
  snprintf(msg, sizeof msg, "done %llu\r\n", total);
  out(msg);
  return 0;
}

int main(int argc, char **argv) {
  char line[1024];
  if (argc > 1 && !strcmp(argv[1], "raw")) return raw();
  out("220 bench.example ESMTP\r\n");
  for (;;) {
    size_t n = getline_(line, sizeof line - 1);
    line[n] = 0;
    if (!strncasecmp(line, "QUIT", 4)) { out("221 bench.example\r\n"); return 0; }
    if (!strncasecmp(line, "EHLO", 4)) { out("250-bench.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n"); continue; }
    if (!strncasecmp(line, "DATA", 4)) { out("354 go ahead\r\n"); body(); out("250 ok\r\n"); continue; }
    out("250 ok\r\n");
  }
}
