/*
 * ring.h - a worker's io_uring, for one job: sending an event batch's
 * requests to their upstreams in one system call.
 *
 * Why: when the upstream runs on the gateway's core (a sidecar, or the
 * bench's layout), each send() to it wakes it, and the scheduler hands
 * it the core when that send returns: the worker is preempted once per
 * request (0.6-0.7 times, perf sched) and the upstream answers one
 * request per wake-up. Sends queued through the ring during a batch and
 * submitted together (gw_ring_submit) all happen before the worker
 * returns to user space, where the preemption takes effect: the upstream
 * wakes once with the whole batch to answer.
 *
 * Only what send() would do: every entry is IORING_OP_SEND with
 * MSG_DONTWAIT | MSG_NOSIGNAL, so it completes at once (bytes sent,
 * -EAGAIN when the socket is full, or the error); nothing stays in
 * flight past gw_ring_submit, so the buffers and sockets it names need
 * not outlive the call. The raw system calls, no liburing: this is all
 * we use of it.
 */
#ifndef GW_RING_H
#define GW_RING_H

#include <stddef.h>
#include <stdint.h>

struct io_uring_sqe;
struct io_uring_cqe;

typedef struct gw_ring {
  int fd; /* -1: none */
  unsigned entries;
  unsigned *sq_head, *sq_tail, *sq_mask, *sq_array;
  unsigned *cq_head, *cq_tail, *cq_mask;
  struct io_uring_sqe *sqes;
  struct io_uring_cqe *cqes;
  void *sq_map, *cq_map;
  size_t sq_len, cq_len, sqes_len;
  unsigned queued; /* entries filled since the last submit */
} gw_ring_t;

/* Set up a ring of `entries` (a power of two) submission entries.
 * 0, or -errno (ENOSYS, EPERM under a seccomp policy, ENOMEM...): the
 * caller then sends the plain way. r->fd is -1 unless it succeeded. */
int gw_ring_init(gw_ring_t *r, unsigned entries);
void gw_ring_free(gw_ring_t *r);

/* Room for more sends before gw_ring_submit. */
static inline unsigned gw_ring_room(const gw_ring_t *r) {
  return r->entries - r->queued;
}

/* Queue a send of buf[0..len) on fd; `tag` comes back with its result.
 * The caller checks gw_ring_room first. */
void gw_ring_send(gw_ring_t *r, int fd, const void *buf, size_t len, uint64_t tag);

/* Submit what is queued, wait for every result and call done(arg, tag,
 * res) for each (res: bytes sent or -errno), in no set order. 0, or
 * -errno when the ring itself failed: then the sends whose results were
 * not reported may or may not have happened, and the ring must not be
 * used again (gw_ring_free). */
int gw_ring_submit(gw_ring_t *r, void (*done)(void *arg, uint64_t tag, int res), void *arg);

#endif
