/*
 * jobs.h - tollgate-server's periodic background jobs (usage compaction,
 * mail delivery): a thread with its own store connection that runs a
 * function every interval until asked to stop.
 */
#ifndef ADM_JOBS_H
#define ADM_JOBS_H

#include <pthread.h>
#include <stdbool.h>

#include "admin-api/adm.h"

typedef struct adm_job adm_job_t;

/* One run: do the work with `s`; long work checks adm_job_stopping. */
typedef void (*adm_job_fn)(adm_job_t *job, adm_server_t *srv, tg_store_t *s);

struct adm_job {
  const char *name; /* "usage compaction", for logs */
  adm_job_fn run;
  int64_t interval_ms;
  /* private */
  pthread_t thread;
  pthread_mutex_t lock;
  pthread_cond_t cond;
  bool stop, running;
  adm_server_t *srv;
};

/* Run job->run now and then every job->interval_ms, on a thread of its
 * own with a store connection of its own. Failing to start is logged. */
void adm_job_start(adm_job_t *job, adm_server_t *srv);
/* Ask it to stop, wake it, wait for the run in progress to end. */
void adm_job_stop(adm_job_t *job);
/* True once adm_job_stop was called: a long run returns early. */
bool adm_job_stopping(adm_job_t *job);

#endif
