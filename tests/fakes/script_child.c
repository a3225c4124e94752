/* script_child: a stdio child that plays a script and records what it reads.
 *
 * The child behind the wrapper in the byte-exactness tests
 * (tests/e2e/test_byte_exact.py, bench/byte_exact.py).  It is written in C so
 * that it starts in about a millisecond: the deep runs play 10^6 sessions.
 *
 * Its script is the file $SCRIPT_CHILD_DIR/<TCPREMOTEIP>_<TCPREMOTEPORT>.script
 * (the client binds its address before connecting and writes the script
 * under that name, so many sessions can run at once through one tcpserver
 * or serve).  Everything read on fd 0, up to EOF, is written to
 * $SCRIPT_CHILD_DIR/<ip>_<port>.got (a
 * temporary name, then rename(2), so the file is whole once it exists), and
 * the child exits with the script's exit code.
 *
 * Script: a sequence of operations, numbers as 4-byte little-endian:
 *   'W' n       read fd 0 until n bytes in all were read (or EOF)
 *   'S' n bytes write the n bytes to fd 1 (one write call when it can)
 *   'E' n bytes write the n bytes to fd 2 (stderr, for the log tests)
 *   'P' n       sleep n microseconds
 *   'H'         shutdown(SHUT_WR) on fd 1 (a socket): EOF toward the client
 *   'X' n       exit code (the last one given wins; 0 by default)
 * After the script: read fd 0 to EOF, write the record, exit.
 *
 * Exit 111 (and a line on stderr) when the script cannot be read or the
 * record cannot be written: a test reading no record fails on it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static unsigned char *got;
static size_t got_len, got_cap;
static int got_eof;

static void die(const char *what)
{
    dprintf(2, "script_child: fatal: %s: %s\n", what, strerror(errno));
    _exit(111);
}

/* One read of fd 0 into the record; returns 0 at EOF. */
static int read_some(void)
{
    if (got_eof)
        return 0;
    if (got_cap - got_len < 65536) {
        got_cap = got_cap * 2 + 65536;
        got = realloc(got, got_cap);
        if (!got)
            die("realloc");
    }
    for (;;) {
        ssize_t n = read(0, got + got_len, got_cap - got_len);
        if (n > 0) {
            got_len += (size_t)n;
            return 1;
        }
        if (n == 0 || errno == ECONNRESET) {
            got_eof = 1;
            return 0;
        }
        if (errno != EINTR)
            die("read fd 0");
    }
}

static void write_all(int fd, const unsigned char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EPIPE)
                return; /* the client went away: nothing more to say */
            die("write");
        }
        p += w;
        n -= (size_t)w;
    }
}

static unsigned char *slurp(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0)
        die(path);
    unsigned char *buf = malloc((size_t)st.st_size + 1);
    if (!buf)
        die("malloc");
    size_t have = 0;
    while (have < (size_t)st.st_size) {
        ssize_t n = read(fd, buf + have, (size_t)st.st_size - have);
        if (n <= 0)
            die(path);
        have += (size_t)n;
    }
    close(fd);
    *len = have;
    return buf;
}

static uint32_t u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

int main(void)
{
    const char *dir = getenv("SCRIPT_CHILD_DIR");
    const char *ip = getenv("TCPREMOTEIP");
    const char *port = getenv("TCPREMOTEPORT");
    char path[4096], tmp[4096];
    size_t len, i = 0;
    int code = 0;

    signal(SIGPIPE, SIG_IGN);
    if (!dir || !ip || !port) {
        errno = EINVAL;
        die("SCRIPT_CHILD_DIR, TCPREMOTEIP and TCPREMOTEPORT must be set");
    }
    snprintf(path, sizeof path, "%s/%s_%s.script", dir, ip, port);
    unsigned char *script = slurp(path, &len);

    while (i < len) {
        unsigned char op = script[i++];
        uint32_t n = 0;
        if (op != 'H') {
            if (len - i < 4) {
                errno = EINVAL;
                die("truncated script");
            }
            n = u32(script + i);
            i += 4;
        }
        switch (op) {
        case 'W':
            while (got_len < n && read_some())
                ;
            break;
        case 'S':
        case 'E':
            if (len - i < n) {
                errno = EINVAL;
                die("truncated script");
            }
            write_all(op == 'S' ? 1 : 2, script + i, n);
            i += n;
            break;
        case 'P': {
            struct timespec ts = {n / 1000000, (long)(n % 1000000) * 1000};
            while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
            break;
        }
        case 'H':
            if (shutdown(1, SHUT_WR) < 0 && errno != ENOTCONN)
                die("shutdown fd 1");
            break;
        case 'X':
            code = (int)(n & 0xff);
            break;
        default:
            errno = EINVAL;
            die("bad script operation");
        }
    }
    while (read_some())
        ;

    snprintf(path, sizeof path, "%s/%s_%s.got", dir, ip, port);
    snprintf(tmp, sizeof tmp, "%s/%s_%s.got.tmp", dir, ip, port);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        die(tmp);
    write_all(fd, got, got_len);
    if (close(fd) < 0 || rename(tmp, path) < 0)
        die(path);
    return code;
}
