/*
 * test_limits.c - the gateway's rate limits (GCRA) and quotas
 * (gateway/policy.c): exact counts, recovery, UTC periods, refusals that
 * consume nothing, and exactness with threads racing on one subscription.
 */
#include <pthread.h>

#include "core/util.h"
#include "gateway/policy.h"
#include "tg_test.h"

#define SEC INT64_C(1000000000)

static gw_sub_t *new_sub(void) {
  static gw_app_t app = {.id = "app_00000000000000000000000001", .no = 1};
  gw_sub_t *s = calloc(1, sizeof(*s));
  s->app = &app;
  s->api_no = 1;
  return s;
}

static gw_plan_t plan_of(int64_t sec, int64_t min, int64_t hour, int64_t day, int64_t month) {
  gw_plan_t p = {.id = "pln_00000000000000000000000001", .slug = "test"};
  p.limit[GW_LIM_SECOND] = sec;
  p.limit[GW_LIM_MINUTE] = min;
  p.limit[GW_LIM_HOUR] = hour;
  p.limit[GW_LIM_DAY] = day;
  p.limit[GW_LIM_MONTH] = month;
  return p;
}

/* 2026-11-26 12:00:00 UTC */
#define NOON INT64_C(1795694400)

static int take_n(gw_sub_t *s, const gw_plan_t *p, int n, int64_t mono, int64_t wall) {
  int ok = 0;
  gw_verdict_t v;
  for (int i = 0; i < n; i++) {
    gw_limits_take(s, p, mono, wall, &v);
    ok += v.admitted;
  }
  return ok;
}

TG_TEST(gcra_burst_then_one_per_interval) {
  gw_sub_t *s = new_sub();
  gw_plan_t p = plan_of(0, 60, 0, 0, 0); /* 60/min: one per second after the burst */
  int64_t t0 = 1000 * SEC;
  ASSERT_INT_EQ(take_n(s, &p, 100, t0, NOON), 60);
  ASSERT_INT_EQ(take_n(s, &p, 1, t0 + SEC - 1, NOON), 0); /* not a nanosecond early */
  ASSERT_INT_EQ(take_n(s, &p, 5, t0 + SEC, NOON), 1);
  ASSERT_INT_EQ(take_n(s, &p, 5, t0 + 3 * SEC, NOON), 2);
  /* a client that stops recovers fully after one window */
  ASSERT_INT_EQ(take_n(s, &p, 100, t0 + 3 * SEC + 60 * SEC, NOON), 60);
  free(s);
}

TG_TEST(gcra_headers_state) {
  gw_sub_t *s = new_sub();
  gw_plan_t p = plan_of(10, 0, 0, 0, 0);
  gw_verdict_t v;
  int64_t t0 = 5000 * SEC;
  gw_limits_take(s, &p, t0, NOON, &v);
  ASSERT(v.admitted);
  ASSERT_INT_EQ(v.nstates, 1);
  ASSERT_INT_EQ(v.states[0].policy, GW_LIM_SECOND);
  ASSERT_INT_EQ(v.states[0].limit, 10);
  ASSERT_INT_EQ(v.states[0].window_s, 1);
  ASSERT_INT_EQ(v.states[0].remaining, 9);
  ASSERT_INT_EQ(v.states[0].reset_s, 1);
  take_n(s, &p, 9, t0, NOON);
  gw_limits_take(s, &p, t0, NOON, &v);
  ASSERT(!v.admitted);
  ASSERT_INT_EQ(v.violated, GW_LIM_SECOND);
  ASSERT_INT_EQ(v.states[0].remaining, 0);
  ASSERT_INT_EQ(v.retry_after_ms, 100); /* one emission interval: 1 s / 10 */
  free(s);
}

TG_TEST(tightest_policy_first) {
  gw_sub_t *s = new_sub();
  gw_plan_t p = plan_of(100, 1000, 0, 5, 0);
  gw_verdict_t v;
  gw_limits_take(s, &p, 7000 * SEC, NOON, &v);
  ASSERT(v.admitted);
  ASSERT_INT_EQ(v.nstates, 3);
  ASSERT_INT_EQ(v.states[0].policy, GW_LIM_DAY);
  ASSERT_INT_EQ(v.states[0].remaining, 4);
  ASSERT_INT_EQ(v.states[0].reset_s, 12 * 3600);
  ASSERT_INT_EQ(v.states[0].window_s, 86400);
  free(s);
}

TG_TEST(quota_day_rolls_over_at_utc_midnight) {
  gw_sub_t *s = new_sub();
  gw_plan_t p = plan_of(0, 0, 0, 3, 0);
  int64_t before = NOON + 12 * 3600 - 1; /* 23:59:59 */
  ASSERT_INT_EQ(take_n(s, &p, 10, 1, before), 3);
  gw_verdict_t v;
  gw_limits_take(s, &p, 1, before, &v);
  ASSERT(!v.admitted);
  ASSERT_INT_EQ(v.violated, GW_LIM_DAY);
  ASSERT_INT_EQ(v.retry_after_ms, 1000);
  ASSERT_INT_EQ(take_n(s, &p, 10, 1, before + 1), 3); /* 00:00:00 the next day */
  free(s);
}

TG_TEST(quota_month_rolls_over_at_month_end) {
  gw_sub_t *s = new_sub();
  gw_plan_t p = plan_of(0, 0, 0, 0, 2);
  int64_t dec31 = INT64_C(1798761599); /* 2026-12-31 23:59:59 UTC */
  ASSERT_INT_EQ(gw_quota_period_end(1, dec31), dec31 + 1);
  ASSERT_INT_EQ(gw_quota_period_start(1, dec31), INT64_C(1796083200)); /* 2026-12-01 */
  ASSERT_INT_EQ(take_n(s, &p, 5, 1, dec31), 2);
  ASSERT_INT_EQ(take_n(s, &p, 5, 1, dec31 + 1), 2); /* 2027-01-01 */
  /* February in a leap year ends on the 29th */
  int64_t feb28_2028 = INT64_C(1835308800);                               /* 2028-02-28 00:00:00 */
  ASSERT_INT_EQ(gw_quota_period_end(1, feb28_2028), INT64_C(1835481600)); /* 2028-03-01 */
  ASSERT_INT_EQ(gw_quota_period_end(0, feb28_2028), INT64_C(1835395200)); /* the 29th */
  free(s);
}

/* The month arithmetic agrees with the C library's calendar on every day
 * from 1900 to 2400 (centuries, leap years, 2100 not a leap year), at the
 * first and last second of the day and at noon. */
TG_TEST(quota_month_matches_gmtime_for_five_centuries) {
  const int64_t first = INT64_C(-2208988800), last = INT64_C(13569465600); /* 1900, 2400 */
  for (int64_t day = first; day < last; day += 86400) {
    const int64_t ts[3] = {day, day + 43200, day + 86399};
    for (int i = 0; i < 3; i++) {
      time_t tt = (time_t)ts[i];
      struct tm tm;
      gmtime_r(&tt, &tm);
      int64_t want = (int64_t)(tm.tm_year + 1900 - 1970) * 12 + tm.tm_mon, start, end;
      tg_utc_month(ts[i], &start, &end);
      if (gw_quota_period(1, ts[i]) != want || gw_quota_period_start(1, ts[i]) != start ||
          gw_quota_period_end(1, ts[i]) != end)
        fprintf(stderr, "  at %lld: period %lld/%lld start %lld/%lld end %lld/%lld\n",
                (long long)ts[i], (long long)gw_quota_period(1, ts[i]), (long long)want,
                (long long)gw_quota_period_start(1, ts[i]), (long long)start,
                (long long)gw_quota_period_end(1, ts[i]), (long long)end);
      ASSERT_INT_EQ(gw_quota_period(1, ts[i]), want);
      ASSERT_INT_EQ(gw_quota_period_start(1, ts[i]), start);
      ASSERT_INT_EQ(gw_quota_period_end(1, ts[i]), end);
    }
  }
}

TG_TEST(quota_seeded_counts_already_made_calls) {
  gw_sub_t *s = new_sub();
  gw_plan_t p = plan_of(0, 0, 0, 0, 100);
  gw_quota_seed(s, 1, NOON, 98);
  ASSERT_INT_EQ(take_n(s, &p, 10, 1, NOON), 2);
  /* a seed from another month does not count */
  gw_sub_t *t = new_sub();
  gw_quota_seed(t, 1, NOON - 40 * 86400, 100);
  ASSERT_INT_EQ(take_n(t, &p, 200, 1, NOON), 100);
  free(s);
  free(t);
}

TG_TEST(refusal_consumes_nothing) {
  gw_sub_t *s = new_sub();
  gw_plan_t p = plan_of(0, 10, 0, 3, 0); /* the day quota refuses first */
  int64_t t0 = 100 * SEC;
  ASSERT_INT_EQ(take_n(s, &p, 20, t0, NOON), 3);
  /* the 17 refusals gave their minute tokens back: 7 remain */
  gw_plan_t only_min = plan_of(0, 10, 0, 0, 0);
  ASSERT_INT_EQ(take_n(s, &only_min, 20, t0, NOON), 7);
  /* and a rate refusal gives its quota back */
  gw_sub_t *u = new_sub();
  gw_plan_t q = plan_of(2, 0, 0, 100, 0);
  ASSERT_INT_EQ(take_n(u, &q, 50, t0, NOON), 2);
  gw_plan_t only_day = plan_of(0, 0, 0, 100, 0);
  ASSERT_INT_EQ(take_n(u, &only_day, 200, t0, NOON), 98);
  free(s);
  free(u);
}

/* Threads racing on one subscription never admit more than the limit. */
typedef struct race {
  gw_sub_t *sub;
  const gw_plan_t *plan;
  int64_t mono;
  int tries;
  int admitted;
} race_t;

static void *racer(void *arg) {
  race_t *r = arg;
  gw_verdict_t v;
  for (int i = 0; i < r->tries; i++) {
    gw_limits_take(r->sub, r->plan, r->mono, NOON, &v);
    r->admitted += v.admitted;
  }
  return NULL;
}

TG_TEST(exact_under_concurrency) {
  for (int round = 0; round < 20; round++) {
    gw_sub_t *s = new_sub();
    gw_plan_t p = plan_of(0, 0, 1000, 1500, 0);
    race_t r[8];
    pthread_t th[8];
    for (int i = 0; i < 8; i++) {
      r[i] = (race_t){s, &p, 42 * SEC, 500, 0};
      pthread_create(&th[i], NULL, racer, &r[i]);
    }
    int total = 0;
    for (int i = 0; i < 8; i++) {
      pthread_join(th[i], NULL);
      total += r[i].admitted;
    }
    ASSERT_INT_EQ(total, 1000); /* 4000 tries, an hourly limit of 1000 */
    gw_plan_t day = plan_of(0, 0, 0, 1500, 0);
    ASSERT_INT_EQ(take_n(s, &day, 1000, 42 * SEC, NOON), 500); /* the quota counted 1000 */
    free(s);
  }
}

TG_TEST_MAIN()
