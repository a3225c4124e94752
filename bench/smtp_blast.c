/* A fast connection-rate client for benchmarks.
 *
 *   smtp_blast PORT CLIENTS SECONDS
 *
 * CLIENTS threads each loop until SECONDS have passed: connect to
 * 127.0.0.1:PORT, read the banner line, send QUIT, read to EOF, close.
 * Prints "sessions=N failures=F seconds=S" on stdout.  A Python client would
 * spend more CPU than the chain it measures; this one stays out of the way.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int port;
static double deadline;
static long sessions[256], failures[256];

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int session(void) {
  struct sockaddr_in sa;
  char buf[4096];
  int ok = 0, seen_lf = 0;
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_port = htons((unsigned short)port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) {
    while (!seen_lf) {
      ssize_t r = read(fd, buf, sizeof buf);
      if (r <= 0) break;
      if (memchr(buf, '\n', (size_t)r)) seen_lf = 1;
    }
    if (seen_lf && write(fd, "QUIT\r\n", 6) == 6) {
      while (read(fd, buf, sizeof buf) > 0) {}
      ok = 1;
    }
  }
  close(fd);
  return ok;
}

static void *worker(void *arg) {
  long i = (long)arg;
  while (now() < deadline) {
    if (session()) sessions[i]++;
    else failures[i]++;
  }
  return NULL;
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: smtp_blast PORT CLIENTS SECONDS\n");
    return 100;
  }
  port = atoi(argv[1]);
  long clients = atol(argv[2]);
  double seconds = atof(argv[3]);
  if (clients < 1 || clients > 256 || seconds <= 0) {
    fprintf(stderr, "smtp_blast: CLIENTS must be 1..256, SECONDS > 0\n");
    return 100;
  }
  pthread_t th[256];
  double start = now();
  deadline = start + seconds;
  for (long i = 0; i < clients; i++) pthread_create(&th[i], NULL, worker, (void *)i);
  long total = 0, failed = 0;
  for (long i = 0; i < clients; i++) {
    pthread_join(th[i], NULL);
    total += sessions[i];
    failed += failures[i];
  }
  printf("sessions=%ld failures=%ld seconds=%.6f\n", total, failed, now() - start);
  return 0;
}
