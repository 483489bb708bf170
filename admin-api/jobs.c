/*
 * jobs.c - periodic background jobs of tollgate-server (jobs.h).
 */
#include "admin-api/jobs.h"

#include <time.h>

#include "core/log.h"

bool adm_job_stopping(adm_job_t *job) {
  pthread_mutex_lock(&job->lock);
  bool stop = job->stop;
  pthread_mutex_unlock(&job->lock);
  return stop;
}

static void *job_main(void *arg) {
  adm_job_t *job = arg;
  tg_problem_t p = {0};
  tg_store_t *s = adm_open_store(job->srv, &p);
  if (!s) {
    tg_log(TG_LOG_ERROR, "background job disabled: cannot open the store", "job", job->name,
           "error", p.detail, NULL);
    return NULL;
  }
  pthread_mutex_lock(&job->lock);
  while (!job->stop) {
    pthread_mutex_unlock(&job->lock);
    job->run(job, job->srv, s);
    pthread_mutex_lock(&job->lock);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += job->interval_ms / 1000;
    ts.tv_nsec += (job->interval_ms % 1000) * 1000000;
    if (ts.tv_nsec >= 1000000000) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000;
    }
    while (!job->stop && pthread_cond_timedwait(&job->cond, &job->lock, &ts) == 0)
      ;
  }
  pthread_mutex_unlock(&job->lock);
  tg_store_close(s);
  return NULL;
}

void adm_job_start(adm_job_t *job, adm_server_t *srv) {
  pthread_mutex_init(&job->lock, NULL);
  pthread_cond_init(&job->cond, NULL);
  job->srv = srv;
  job->stop = false;
  job->running = pthread_create(&job->thread, NULL, job_main, job) == 0;
  if (!job->running)
    tg_log(TG_LOG_ERROR, "background job disabled: cannot start its thread", "job", job->name,
           NULL);
}

void adm_job_stop(adm_job_t *job) {
  if (!job->running)
    return;
  pthread_mutex_lock(&job->lock);
  job->stop = true;
  pthread_cond_signal(&job->cond);
  pthread_mutex_unlock(&job->lock);
  pthread_join(job->thread, NULL);
  job->running = false;
}
