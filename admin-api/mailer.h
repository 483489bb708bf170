/*
 * mailer.h - SMTP delivery of the mail outbox (mailer.c), a thread of
 * tollgate-server started when mail_smtp_host is set.
 */
#ifndef ADM_MAILER_H
#define ADM_MAILER_H

#include "admin-api/adm.h"

/* Start delivering (nothing when mail_smtp_host is empty). */
void adm_mailer_start(adm_server_t *srv);
/* Stop after the message in flight, if any. */
void adm_mailer_stop(void);

#endif
