/*
 * test_meter.c - the usage tables of gateway/meter.c: every request is
 * counted in its own cell through growth of the cells and the index,
 * merges add up, clearing empties a table that is then reused, and a
 * table agrees with a plain list of the same requests (a model check).
 */
#include "gateway/meter.h"
#include "tg_test.h"

/* meter.c's metering thread wakes the workers; no workers here */
struct gw_server;
void gw_workers_wake(struct gw_server *srv);
void gw_workers_wake(struct gw_server *srv) {
  (void)srv;
}

/* Distinct keys, subscriptions and plans: the table keys on addresses. */
static gw_key_t keys[4000];
static gw_sub_t subs[4];
static gw_plan_t plans[2];

static gw_meter_key_t mk(int key, uint32_t minute, uint32_t api, int status) {
  return (gw_meter_key_t){.key = &keys[key],
                          .sub = &subs[key % 4],
                          .plan = &plans[key % 2],
                          .minute = minute,
                          .api_no = api,
                          .status_class = (uint8_t)status};
}

static bool same(const gw_meter_key_t *a, const gw_meter_key_t *b) {
  return a->key == b->key && a->sub == b->sub && a->plan == b->plan && a->minute == b->minute &&
         a->api_no == b->api_no && a->status_class == b->status_class && a->reason == b->reason;
}

static const gw_meter_cell_t *find(const gw_meter_tab_t *t, const gw_meter_key_t *k) {
  for (size_t i = 0; i < t->n; i++)
    if (same(&t->cells[i].k, k))
      return &t->cells[i];
  return NULL;
}

TG_TEST(cells_count_what_they_were_given) {
  gw_meter_tab_t *t = gw_meter_tab_new();
  ASSERT(t);
  gw_meter_key_t a = mk(1, 29000000, 3, 2), b = mk(1, 29000000, 3, 5), c = mk(1, 29000001, 3, 2);
  ASSERT(gw_meter_add(t, &a, 100, 1000, 1200));  /* bucket 0 (<= 5 ms) */
  ASSERT(gw_meter_add(t, &a, 50, 500, 7000));    /* bucket 1 (<= 10 ms) */
  ASSERT(gw_meter_add(t, &a, 1, 2, -5));         /* a clock step back: 0 us */
  ASSERT(gw_meter_add(t, &b, 10, 20, 20000000)); /* above 10 s: the last bucket */
  ASSERT(gw_meter_add(t, &c, 7, 8, 5000));       /* the next minute: its own cell */
  ASSERT_INT_EQ(t->n, 3);
  const gw_meter_cell_t *ca = find(t, &a);
  ASSERT(ca);
  ASSERT_INT_EQ(ca->calls, 3);
  ASSERT_INT_EQ(ca->bytes_in, 151);
  ASSERT_INT_EQ(ca->bytes_out, 1502);
  ASSERT_INT_EQ(ca->latency_us, 8200);
  ASSERT_INT_EQ(ca->h[0], 2);
  ASSERT_INT_EQ(ca->h[1], 1);
  ASSERT_INT_EQ(find(t, &b)->h[TG_USAGE_BUCKETS - 1], 1);
  ASSERT_INT_EQ(find(t, &c)->calls, 1);
  ASSERT_INT_EQ(find(t, &c)->h[0], 1); /* 5,000 us: the 5 ms bound is inclusive */
  gw_meter_tab_free(t);
}

TG_TEST(growth_keeps_every_cell_findable) {
  /* 3,000 keys x 2 minutes: the cells' array and the index both double
   * several times; every request lands in its own cell */
  gw_meter_tab_t *t = gw_meter_tab_new();
  ASSERT(t);
  for (int round = 0; round < 3; round++)
    for (int k = 0; k < 3000; k++)
      for (uint32_t m = 0; m < 2; m++) {
        gw_meter_key_t key = mk(k, 29000000 + m, (uint32_t)(k % 7), 2);
        ASSERT(gw_meter_add(t, &key, k, 2 * k, 100));
      }
  ASSERT_INT_EQ(t->n, 6000);
  ASSERT(t->cap >= 2 * t->n);
  ASSERT(t->ncells >= t->n);
  for (int k = 0; k < 3000; k++)
    for (uint32_t m = 0; m < 2; m++) {
      gw_meter_key_t key = mk(k, 29000000 + m, (uint32_t)(k % 7), 2);
      const gw_meter_cell_t *c = find(t, &key);
      ASSERT(c);
      ASSERT_INT_EQ(c->calls, 3);
      ASSERT_INT_EQ(c->bytes_in, 3 * k);
      ASSERT_INT_EQ(c->bytes_out, 6 * k);
    }
  gw_meter_tab_free(t);
}

TG_TEST(merge_adds_and_clear_empties) {
  gw_meter_tab_t *w1 = gw_meter_tab_new(), *w2 = gw_meter_tab_new(), *all = gw_meter_tab_new();
  ASSERT(w1 && w2 && all);
  for (int k = 0; k < 500; k++) {
    gw_meter_key_t key = mk(k, 29000000, 1, 2);
    ASSERT(gw_meter_add(w1, &key, 1, 10, 1000));
    if (k % 2 == 0) /* half the keys also on the second worker */
      ASSERT(gw_meter_add(w2, &key, 2, 20, 30000));
  }
  gw_meter_key_t only2 = mk(3999, 29000000, 1, 4);
  ASSERT(gw_meter_add(w2, &only2, 5, 5, 5));
  ASSERT(gw_meter_merge(all, w1));
  ASSERT(gw_meter_merge(all, w2));
  ASSERT_INT_EQ(all->n, 501);
  for (int k = 0; k < 500; k++) {
    gw_meter_key_t key = mk(k, 29000000, 1, 2);
    const gw_meter_cell_t *c = find(all, &key);
    ASSERT(c);
    ASSERT_INT_EQ(c->calls, k % 2 ? 1 : 2);
    ASSERT_INT_EQ(c->bytes_in, k % 2 ? 1 : 3);
    ASSERT_INT_EQ(c->latency_us, k % 2 ? 1000 : 31000);
    ASSERT_INT_EQ(c->h[0], 1);
    ASSERT_INT_EQ(c->h[3], k % 2 ? 0 : 1); /* 30 ms: <= 50 ms */
  }
  ASSERT_INT_EQ(find(all, &only2)->calls, 1);
  /* cleared, a table is empty and counts afresh (the worker's spare) */
  size_t cap = w1->cap;
  gw_meter_tab_clear(w1);
  ASSERT_INT_EQ(w1->n, 0);
  ASSERT_INT_EQ(w1->cap, cap);
  gw_meter_key_t key = mk(7, 29000000, 1, 2);
  ASSERT(find(w1, &key) == NULL);
  ASSERT(gw_meter_add(w1, &key, 4, 4, 4));
  ASSERT_INT_EQ(w1->n, 1);
  ASSERT_INT_EQ(find(w1, &key)->calls, 1);
  ASSERT_INT_EQ(find(w1, &key)->bytes_in, 4);
  gw_meter_tab_free(w1);
  gw_meter_tab_free(w2);
  gw_meter_tab_free(all);
}

TG_TEST(agrees_with_a_plain_list) {
  /* random requests over a few keys, minutes, APIs and classes, counted
   * by the table and by brute force over a list of distinct keys */
  enum { N = 20000, MAXK = 2000 };
  static gw_meter_key_t seen[MAXK];
  static int64_t calls[MAXK], bytes[MAXK];
  int nseen = 0;
  gw_meter_tab_t *t = gw_meter_tab_new();
  ASSERT(t);
  uint64_t x = 88172645463325252ull;
  for (int i = 0; i < N; i++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    /* 40 keys x 2 minutes x 3 APIs x (5 classes + 3 reasons): <= 1,920 */
    gw_meter_key_t k = mk((int)(x % 40), 29000000 + (uint32_t)(x >> 20) % 2,
                          (uint32_t)(x >> 30) % 3, (int)((x >> 40) % 6));
    k.reason = k.status_class == 0 ? (uint8_t)(1 + (x >> 50) % 3) : 0;
    ASSERT(gw_meter_add(t, &k, (int64_t)(x >> 54), 0, 10));
    int j = 0;
    while (j < nseen && !same(&seen[j], &k))
      j++;
    if (j == nseen) {
      ASSERT(nseen < MAXK);
      seen[nseen++] = k;
    }
    calls[j]++;
    bytes[j] += (int64_t)(x >> 54);
  }
  ASSERT(nseen > 1000); /* enough distinct cells to grow the table several times */
  ASSERT_INT_EQ(t->n, nseen);
  for (int j = 0; j < nseen; j++) {
    const gw_meter_cell_t *c = find(t, &seen[j]);
    ASSERT(c);
    ASSERT_INT_EQ(c->calls, calls[j]);
    ASSERT_INT_EQ(c->bytes_in, bytes[j]);
  }
  gw_meter_tab_free(t);
}

TG_TEST_MAIN()
