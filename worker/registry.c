/*
 * registry.c: the model registry (see registry.h).
 *
 * One rp_pg connection LISTENs to ragpool_models; pg.c re-issues the LISTEN
 * on every reconnect and then calls on_connect, where the registry loads
 * again, so a change made while disconnected is never missed (NOTIFY is a
 * hint, the table is the truth).  At most one load is in flight; a
 * notification that arrives meanwhile asks for one more load after it.
 * A snapshot is one allocation (header, array, strings).
 */
#include "registry.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "pg.h"

struct rp_models {
    int refs;
    size_t n;
    rp_model_t m[];
};

struct rp_registry {
    rp_pg_t *pg;
    rp_models_t *current; /* holds one reference; NULL before the first load */
    rp_registry_cb on_change;
    void *data;
    int loading, reload, ready, closing, warned;
    void (*close_cb)(void *data);
    void *close_data;
};

void rp_models_unref(rp_models_t *m)
{
    if (m != NULL && --m->refs == 0)
        free(m);
}

const rp_model_t *rp_models_find(const rp_models_t *m, const char *provider)
{
    if (m == NULL)
        return NULL;
    /* Rows come ordered: provider-specific rows first, newest first. */
    for (size_t i = 0; i < m->n; i++)
        if (strcmp(m->m[i].provider, provider) == 0)
            return &m->m[i];
    for (size_t i = 0; i < m->n; i++)
        if (m->m[i].provider[0] == '\0')
            return &m->m[i];
    return NULL;
}

rp_models_t *rp_registry_acquire(rp_registry_t *r)
{
    if (r->current != NULL)
        r->current->refs++;
    return r->current;
}

int rp_registry_ready(const rp_registry_t *r)
{
    return r->ready;
}

static void publish(rp_registry_t *r, rp_models_t *m)
{
    rp_models_unref(r->current);
    r->current = m;
    r->ready = 1;
    json_t *list = json_array();
    for (size_t i = 0; i < m->n; i++)
        json_array_append_new(list, json_pack("{s:s,s:s,s:s,s:I}", "provider", m->m[i].provider,
                                              "model_name", m->m[i].model_name, "version",
                                              m->m[i].version, "id", (json_int_t)m->m[i].id));
    rp_log_fields(RP_LOG_INFO, "registry.loaded", NULL, json_pack("{s:o}", "active", list));
    if (r->on_change != NULL)
        r->on_change(r->data);
}

static rp_models_t *models_empty(void)
{
    rp_models_t *m = calloc(1, sizeof(*m));
    if (m != NULL)
        m->refs = 1;
    return m;
}

static void load(rp_registry_t *r);

static void load_done(void *data, const rp_pg_res_t *res)
{
    rp_registry_t *r = data;
    r->loading = 0;
    if (r->closing)
        return;
    int err = rp_pg_res_error(res);
    rp_models_t *m = NULL;
    if (err != 0) {
        const char *state = rp_pg_res_sqlstate(res);
        if (strcmp(state, "42883") == 0 || strcmp(state, "42P01") == 0 ||
            strcmp(state, "3F000") == 0) {
            if (!r->warned)
                rp_log_warn("registry.missing", NULL,
                            "no model registry in this database (run 'ragpool migrate'): "
                            "using the configured models");
            r->warned = 1;
            m = models_empty();
        } else if (err == RP_EIO || err == RP_ECANCELED || err == RP_ETIMEDOUT) {
            /* The connection comes back and on_connect loads again. */
            return;
        } else {
            rp_log_error("registry.load_failed", NULL, "%s %s", rp_strerror(err),
                         rp_pg_res_message(res));
            m = r->current == NULL ? models_empty() : NULL;
        }
    } else {
        int n = rp_pg_res_ntuples(res);
        size_t bytes = sizeof(rp_models_t) + (size_t)n * sizeof(rp_model_t);
        for (int i = 0; i < n; i++)
            for (int c = 0; c < 3; c++)
                bytes += (size_t)rp_pg_res_length(res, i, c) + 1;
        m = calloc(1, bytes);
        if (m == NULL) {
            rp_log_error("registry.load_failed", NULL, "out of memory");
        } else {
            m->refs = 1;
            m->n = (size_t)n;
            char *p = (char *)&m->m[n];
            for (int i = 0; i < n; i++) {
                const char *v[3];
                for (int c = 0; c < 3; c++) {
                    size_t len = (size_t)rp_pg_res_length(res, i, c);
                    memcpy(p, rp_pg_res_value(res, i, c), len);
                    p[len] = '\0';
                    v[c] = p;
                    p += len + 1;
                }
                m->m[i] = (rp_model_t){v[0], v[1], v[2], atoll(rp_pg_res_value(res, i, 3))};
            }
        }
    }
    if (m != NULL)
        publish(r, m);
    if (r->reload) {
        r->reload = 0;
        load(r);
    }
}

static void load(rp_registry_t *r)
{
    if (r->closing)
        return;
    if (r->loading) {
        r->reload = 1;
        return;
    }
    r->loading = 1;
    if (rp_pg_query(r->pg, "SELECT provider, model_name, version, id FROM ragpool.active_models()",
                    0, NULL, 0, load_done, r) != 0)
        r->loading = 0;
}

static void on_connect(void *data)
{
    load(data);
}

static void on_notify(void *data, const char *channel, const char *payload)
{
    (void)channel;
    (void)payload;
    load(data);
}

static void on_disconnect(void *data, const char *why)
{
    (void)data;
    rp_log_warn("registry.disconnected", NULL, "%s", why);
}

rp_registry_t *rp_registry_new(uv_loop_t *loop, const char *conninfo, rp_registry_cb on_change,
                               void *data, rp_err_t *err)
{
    rp_registry_t *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        rp_err_set(err, RP_ENOMEM, "out of memory");
        return NULL;
    }
    r->on_change = on_change;
    r->data = data;
    rp_pg_opts_t o = {
        .connect_timeout_ms = 10000,
        .query_timeout_ms = 10000,
        .reconnect_min_ms = 100,
        .reconnect_max_ms = 5000,
        .application_name = "ragpool-worker-registry",
        .on_connect = on_connect,
        .on_disconnect = on_disconnect,
        .on_notify = on_notify,
        .data = r,
    };
    r->pg = rp_pg_new(loop, conninfo, &o, err);
    if (r->pg == NULL) {
        free(r);
        return NULL;
    }
    return r;
}

int rp_registry_start(rp_registry_t *r)
{
    int rc = rp_pg_listen(r->pg, "ragpool_models");
    if (rc == 0)
        rc = rp_pg_start(r->pg);
    return rc;
}

static void pg_closed(void *data)
{
    rp_registry_t *r = data;
    void (*cb)(void *) = r->close_cb;
    void *cb_data = r->close_data;
    rp_models_unref(r->current);
    free(r);
    if (cb != NULL)
        cb(cb_data);
}

void rp_registry_close(rp_registry_t *r, void (*close_cb)(void *data), void *data)
{
    r->closing = 1;
    r->close_cb = close_cb;
    r->close_data = data;
    rp_pg_close(r->pg, pg_closed, r);
}
