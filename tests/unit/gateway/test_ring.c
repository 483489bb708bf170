/*
 * test_ring.c - the worker's io_uring for batched sends (gateway/ring.h):
 * results come back by tag, a full socket answers -EAGAIN at once instead
 * of blocking the worker, a closed peer is an error (not a SIGPIPE), and
 * more sends than the ring holds go out in several submits.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include "gateway/ring.h"
#include "tg_test.h"

#define NRES 512

static struct {
  int res[NRES];
  int seen[NRES];
  int n;
} got;

static void record(void *arg, uint64_t tag, int res) {
  (void)arg;
  if (tag < NRES) {
    got.res[tag] = res;
    got.seen[tag]++;
  }
  got.n++;
}

static void reset(void) {
  memset(&got, 0, sizeof(got));
}

static void pair(int sv[2]) {
  ASSERT_INT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  for (int i = 0; i < 2; i++)
    ASSERT_INT_EQ(fcntl(sv[i], F_SETFL, fcntl(sv[i], F_GETFL) | O_NONBLOCK), 0);
}

/* One send through the ring on its own: its result. */
static int send_one(gw_ring_t *r, int fd, const void *buf, size_t len) {
  reset();
  gw_ring_send(r, fd, buf, len, 0);
  ASSERT_INT_EQ(gw_ring_submit(r, record, NULL), 0);
  ASSERT_INT_EQ(got.n, 1);
  ASSERT_INT_EQ(got.seen[0], 1);
  return got.res[0];
}

static void unpair(int sv[2]) {
  close(sv[0]);
  close(sv[1]);
}

static void ring_up(gw_ring_t *r, unsigned entries) {
  int rc = gw_ring_init(r, entries);
  if (rc != 0)
    fprintf(stderr, "  io_uring_setup: %s\n", strerror(-rc));
  ASSERT_INT_EQ(rc, 0);
  ASSERT(r->fd >= 0);
  ASSERT_INT_EQ(gw_ring_room(r), entries);
}

TG_TEST(sends_arrive_with_their_tags) {
  gw_ring_t r;
  ring_up(&r, 8);
  int a[2], b[2], c[2];
  pair(a);
  pair(b);
  pair(c);
  reset();
  gw_ring_send(&r, a[0], "GET /a HTTP/1.1\r\n\r\n", 19, 7);
  gw_ring_send(&r, b[0], "GET /bb HTTP/1.1\r\n\r\n", 20, 3);
  gw_ring_send(&r, c[0], "x", 1, 5);
  ASSERT_INT_EQ(gw_ring_room(&r), 5);
  ASSERT_INT_EQ(gw_ring_submit(&r, record, NULL), 0);
  ASSERT_INT_EQ(got.n, 3);
  ASSERT_INT_EQ(got.res[7], 19);
  ASSERT_INT_EQ(got.res[3], 20);
  ASSERT_INT_EQ(got.res[5], 1);
  ASSERT_INT_EQ(gw_ring_room(&r), 8);
  char buf[64];
  ASSERT_INT_EQ(read(a[1], buf, sizeof(buf)), 19);
  ASSERT(memcmp(buf, "GET /a HTTP/1.1\r\n\r\n", 19) == 0);
  ASSERT_INT_EQ(read(b[1], buf, sizeof(buf)), 20);
  ASSERT(memcmp(buf, "GET /bb HTTP/1.1\r\n\r\n", 20) == 0);
  ASSERT_INT_EQ(read(c[1], buf, sizeof(buf)), 1);
  /* nothing queued: nothing to do */
  ASSERT_INT_EQ(gw_ring_submit(&r, record, NULL), 0);
  ASSERT_INT_EQ(got.n, 3);
  unpair(a);
  unpair(b);
  unpair(c);
  gw_ring_free(&r);
  ASSERT_INT_EQ(r.fd, -1);
}

TG_TEST(full_socket_answers_eagain_without_waiting) {
  gw_ring_t r;
  ring_up(&r, 4);
  int s[2];
  pair(s);
  static char block[65536];
  memset(block, 'z', sizeof(block));
  size_t queued = 0;
  for (int i = 0; i < 10000; i++) { /* fill it: the peer never reads */
    ssize_t n = send(s[0], block, sizeof(block), MSG_DONTWAIT);
    if (n < 0) {
      ASSERT_INT_EQ(errno, EAGAIN);
      break;
    }
    queued += (size_t)n;
  }
  ASSERT(queued > 0);
  alarm(10); /* a send that waited for room would hang here: fail instead */
  int res = send_one(&r, s[0], block, sizeof(block));
  alarm(0);
  ASSERT_INT_EQ(res, -EAGAIN);
  /* room again once the peer reads */
  while (read(s[1], block, sizeof(block)) > 0)
    ;
  ASSERT_INT_EQ(send_one(&r, s[0], "after", 5), 5);
  unpair(s);
  gw_ring_free(&r);
}

TG_TEST(closed_peer_is_an_error_not_a_signal) {
  gw_ring_t r;
  ring_up(&r, 4);
  int s[2];
  pair(s);
  close(s[1]);
  ASSERT_INT_EQ(send_one(&r, s[0], "late", 4), -EPIPE); /* MSG_NOSIGNAL: we are still here */
  /* a descriptor that is not a socket fails alone; the ring goes on */
  int fds[2];
  ASSERT_INT_EQ(pipe(fds), 0);
  int ok[2];
  pair(ok);
  reset();
  gw_ring_send(&r, fds[1], "p", 1, 0);
  gw_ring_send(&r, ok[0], "fine", 4, 1);
  ASSERT_INT_EQ(gw_ring_submit(&r, record, NULL), 0);
  ASSERT_INT_EQ(got.n, 2);
  ASSERT_INT_EQ(got.res[0], -ENOTSOCK);
  ASSERT_INT_EQ(got.res[1], 4);
  unpair(fds);
  unpair(ok);
  close(s[0]);
  gw_ring_free(&r);
}

TG_TEST(many_rounds_reuse_the_ring) {
  /* the rings wrap around many times; every send reported exactly once */
  gw_ring_t r;
  ring_up(&r, 16);
  int s[2];
  pair(s);
  char buf[4096];
  long total = 0;
  for (int round = 0; round < 200; round++) {
    reset();
    unsigned k = 1 + (unsigned)round % 16;
    for (unsigned i = 0; i < k; i++)
      gw_ring_send(&r, s[0], "0123456789", 10, i);
    ASSERT_INT_EQ(gw_ring_room(&r), 16 - k);
    ASSERT_INT_EQ(gw_ring_submit(&r, record, NULL), 0);
    ASSERT_INT_EQ(got.n, (int)k);
    for (unsigned i = 0; i < k; i++) {
      ASSERT_INT_EQ(got.seen[i], 1);
      ASSERT_INT_EQ(got.res[i], 10);
    }
    ssize_t n;
    while ((n = read(s[1], buf, sizeof(buf))) > 0)
      total += n;
  }
  long want = 0;
  for (int round = 0; round < 200; round++)
    want += 10 * (1 + round % 16);
  ASSERT_INT_EQ(total, want);
  unpair(s);
  gw_ring_free(&r);
}

TG_TEST(sizes_and_failed_setup) {
  gw_ring_t r;
  ring_up(&r, 4);
  gw_ring_free(&r);
  ASSERT_INT_EQ(gw_ring_init(&r, 3), 0); /* the kernel rounds up to a power of two */
  ASSERT_INT_EQ(r.entries, 4);
  gw_ring_free(&r);
  gw_ring_free(&r); /* twice: harmless */
  ASSERT_INT_EQ(r.fd, -1);
  ASSERT_INT_EQ(gw_ring_init(&r, 0), -EINVAL); /* refused: left as "no ring" */
  ASSERT_INT_EQ(r.fd, -1);
  gw_ring_free(&r);
}

TG_TEST(a_broken_ring_says_so) {
  /* the descriptor gone behind its back: submit reports the error (the
   * worker then fails those sends and goes on without the ring) */
  gw_ring_t r;
  ring_up(&r, 4);
  int s[2];
  pair(s);
  close(r.fd);
  reset();
  gw_ring_send(&r, s[0], "lost", 4, 0);
  ASSERT_INT_EQ(gw_ring_submit(&r, record, NULL), -EBADF);
  ASSERT_INT_EQ(got.n, 0);
  r.fd = -1; /* already closed */
  gw_ring_free(&r);
  char buf[8];
  ASSERT_INT_EQ(read(s[1], buf, sizeof(buf)), -1); /* nothing was sent */
  ASSERT_INT_EQ(errno, EAGAIN);
  unpair(s);
}

int main(int argc, char **argv) {
  signal(SIGPIPE, SIG_DFL); /* a send without MSG_NOSIGNAL would kill the test */
  return tg_test_main(argc, argv);
}
