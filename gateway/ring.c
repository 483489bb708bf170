/*
 * ring.c - a worker's io_uring for batched sends (see ring.h).
 */
#include <errno.h>
#include <linux/io_uring.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "gateway/ring.h"

static int sys_setup(unsigned entries, struct io_uring_params *p) {
  return (int)syscall(__NR_io_uring_setup, entries, p);
}

static int sys_enter(int fd, unsigned submit, unsigned wait, unsigned flags) {
  return (int)syscall(__NR_io_uring_enter, fd, submit, wait, flags, NULL, 0);
}

/* The kernel and we share the rings' head and tail words: the side that
 * publishes an index stores it with release, the side that reads one
 * written by the other loads it with acquire. */
static unsigned load_acquire(const unsigned *p) {
  return atomic_load_explicit((const _Atomic unsigned *)p, memory_order_acquire);
}

static void store_release(unsigned *p, unsigned v) {
  atomic_store_explicit((_Atomic unsigned *)p, v, memory_order_release);
}

void gw_ring_free(gw_ring_t *r) {
  if (r->sqes)
    munmap(r->sqes, r->sqes_len);
  if (r->cq_map && r->cq_map != r->sq_map)
    munmap(r->cq_map, r->cq_len);
  if (r->sq_map)
    munmap(r->sq_map, r->sq_len);
  if (r->fd >= 0)
    close(r->fd);
  memset(r, 0, sizeof(*r));
  r->fd = -1;
}

int gw_ring_init(gw_ring_t *r, unsigned entries) {
  memset(r, 0, sizeof(*r));
  r->fd = -1;
  struct io_uring_params p;
  /* one thread submits; completions need no interrupt of it (they are
   * all in by the time io_uring_enter returns); a failed entry must not
   * stop the others. Older kernels refuse those flags: then none. */
  memset(&p, 0, sizeof(p));
  p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SUBMIT_ALL;
  int fd = sys_setup(entries, &p);
  if (fd < 0 && errno == EINVAL) {
    memset(&p, 0, sizeof(p));
    fd = sys_setup(entries, &p);
  }
  if (fd < 0)
    return -errno;
  r->fd = fd;
  r->entries = p.sq_entries;
  r->sq_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
  r->cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
  if ((p.features & IORING_FEAT_SINGLE_MMAP) && r->cq_len > r->sq_len)
    r->sq_len = r->cq_len;
  r->sq_map = mmap(NULL, r->sq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                   IORING_OFF_SQ_RING);
  if (r->sq_map == MAP_FAILED) {
    r->sq_map = NULL;
    goto fail;
  }
  if (p.features & IORING_FEAT_SINGLE_MMAP) {
    r->cq_map = r->sq_map;
  } else {
    r->cq_map = mmap(NULL, r->cq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                     IORING_OFF_CQ_RING);
    if (r->cq_map == MAP_FAILED) {
      r->cq_map = NULL;
      goto fail;
    }
  }
  r->sqes_len = p.sq_entries * sizeof(struct io_uring_sqe);
  r->sqes = mmap(NULL, r->sqes_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                 IORING_OFF_SQES);
  if (r->sqes == MAP_FAILED) {
    r->sqes = NULL;
    goto fail;
  }
  char *sq = r->sq_map, *cq = r->cq_map;
  r->sq_head = (unsigned *)(sq + p.sq_off.head);
  r->sq_tail = (unsigned *)(sq + p.sq_off.tail);
  r->sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
  r->sq_array = (unsigned *)(sq + p.sq_off.array);
  r->cq_head = (unsigned *)(cq + p.cq_off.head);
  r->cq_tail = (unsigned *)(cq + p.cq_off.tail);
  r->cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
  r->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
  /* slot i of the submission ring always names entry i */
  for (unsigned i = 0; i < p.sq_entries; i++)
    r->sq_array[i] = i;
  return 0;
fail:;
  int err = errno;
  gw_ring_free(r);
  return -err;
}

void gw_ring_send(gw_ring_t *r, int fd, const void *buf, size_t len, uint64_t tag) {
  unsigned tail = *r->sq_tail + r->queued; /* only we move the tail */
  struct io_uring_sqe *e = &r->sqes[tail & *r->sq_mask];
  memset(e, 0, sizeof(*e));
  e->opcode = IORING_OP_SEND;
  e->fd = fd;
  e->addr = (uint64_t)(uintptr_t)buf;
  e->len = len > 1u << 30 ? 1u << 30 : (unsigned)len;
  e->msg_flags = MSG_DONTWAIT | MSG_NOSIGNAL;
  e->user_data = tag;
  r->queued++;
}

/* Report the completions that are in; returns how many. */
static unsigned reap(gw_ring_t *r, void (*done)(void *, uint64_t, int), void *arg) {
  unsigned head = *r->cq_head, tail = load_acquire(r->cq_tail), n = 0;
  for (; head != tail; head++, n++) {
    const struct io_uring_cqe *c = &r->cqes[head & *r->cq_mask];
    done(arg, c->user_data, c->res);
  }
  store_release(r->cq_head, head);
  return n;
}

int gw_ring_submit(gw_ring_t *r, void (*done)(void *arg, uint64_t tag, int res), void *arg) {
  unsigned want = r->queued;
  if (want == 0)
    return 0;
  store_release(r->sq_tail, *r->sq_tail + want);
  r->queued = 0;
  unsigned submitted = 0, reported = 0;
  while (reported < want) {
    /* MSG_DONTWAIT: each send completes during its submission, and its
     * result is in the completion ring when the call returns; the wait
     * (for results not in yet) is for a kernel that posts them later */
    int n = submitted < want ? sys_enter(r->fd, want - submitted, 0, 0)
                             : sys_enter(r->fd, 0, submitted - reported, IORING_ENTER_GETEVENTS);
    if (n < 0 && errno != EINTR) {
      int err = errno;
      reap(r, done, arg);
      return -err;
    }
    if (n > 0 && submitted < want)
      submitted += (unsigned)n;
    else if (n == 0 && submitted < want)
      return -EIO; /* the kernel took none of them and said nothing */
    reported += reap(r, done, arg);
  }
  return 0;
}
