/*
 * export.c: the "export_training" job kind -- conversations rated 1 become
 * fine-tuning data.
 *
 * The job's payload is {"export_id": N}; the parameters (date range, model,
 * name, bucket) live in ragpool.training_exports, made with the job by
 * ragpool.enqueue_training_export.  One attempt:
 *
 *   BEGIN    ragpool.training_export_begin: forget an earlier attempt's rows,
 *            count the rows to export (rows_total), status 'running'
 *   PAGES    ragpool.training_export_page, RAGPOOL_EXPORT_PAGE rows at a time
 *            in conversation id order: each page is stored in training_data
 *            and advances rows_done (the progress figure) in the same
 *            statement; its rows are appended as JSONL in two formats:
 *              reference  {"instruction": message, "input": "", "output": response}
 *              openai     {"messages": [{"role": "user", "content": message},
 *                                       {"role": "assistant", "content": response}]}
 *   OUTPUTS  <RAGPOOL_EXPORT_DIR>/<name>.jsonl and <name>.openai.jsonl (written
 *            to a temporary name with uv_fs, then renamed), and/or, when the
 *            export has a bucket, POST <SUPABASE_URL>/storage/v1/object/
 *            <bucket>/<name>.jsonl (and .openai.jsonl) with x-upsert
 *   FINISH   ragpool.training_export_finish: status 'done' with the outputs
 *
 * then the job is acknowledged (no conversations row).  A failure records
 * status 'failed' with the error and goes through the queue like any job:
 * transient ones (database, 5xx from Storage) are retried from BEGIN.  The
 * two documents are built in memory (about 2 x the exported text); exports
 * of millions of rows should be split by date range.
 *
 * Every asynchronous step holds a job reference and checks, when it
 * returns, that the job is still running (the drain may have released it).
 */
#include "export.h"

#include <fcntl.h>
#include <stdarg.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "log.h"

enum { FMT_REFERENCE = 0, FMT_OPENAI, FMT_N };
static const char *const fmt_names[FMT_N] = {"reference", "openai"};
static const char *const fmt_suffix[FMT_N] = {".jsonl", ".openai.jsonl"};

typedef struct export_job export_job_t;

/* One upload to Storage (inside the export: no allocation). */
typedef struct upload_ctx {
    export_job_t *e;
    int fmt;
    rp_http_req_t *req; /* in flight, or NULL */
    char path[512];
} upload_ctx_t;

struct export_job {
    rp__job_t *j;
    long long export_id;
    char name[256];
    char bucket[128];
    int has_bucket;
    long long total, done, after_id;
    rp_buf_t doc[FMT_N];
    int outstanding; /* outputs being written */
    int failed;
    rp__fail_kind_t fail_kind;
    char error[400];
    json_t *outputs;
    upload_ctx_t up[FMT_N];
    char *auth, *apikey; /* Storage headers */
};

/* One file being written: open, write, close, rename. */
typedef struct file_op {
    uv_fs_t req;
    export_job_t *e;
    int fmt;
    uv_file fd;
    char path[1024], tmp[1040];
} file_op_t;

static void page_send(export_job_t *e);
static void outputs_done(export_job_t *e);

static int still_running(const rp__job_t *j)
{
    return j->state == RP__JOB_RUNNING;
}

/* Record the failure on the export row (not waiting for it) and fail the
 * job through the queue. */
static void export_fail(export_job_t *e, rp__fail_kind_t kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void ignore_result(void *data, const rp_pg_res_t *res)
{
    (void)data;
    (void)res;
}

static void export_fail(export_job_t *e, rp__fail_kind_t kind, const char *fmt, ...)
{
    rp__job_t *j = e->j;
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (e->export_id > 0) {
        char id[32];
        snprintf(id, sizeof(id), "%lld", e->export_id);
        const char *params[2] = {id, msg};
        rp_pg_query(rp__db_pick(j->w),
                    "SELECT ragpool.training_export_finish($1::bigint, NULL, $2)", 2, params, 0,
                    ignore_result, NULL);
    }
    rp__job_fail(j, kind, -1, "export_training: %s", msg);
}

/* ------------------------------------------------------------------ */
/* FINISH                                                               */
/* ------------------------------------------------------------------ */

static void finish_done(void *data, const rp_pg_res_t *res)
{
    rp__job_t *j = data;
    export_job_t *e = j->ext;
    if (!still_running(j))
        goto out;
    int err = rp_pg_res_error(res);
    if (err != 0) {
        export_fail(e, RP__FAIL_TRANSIENT, "recording the end failed: %s %s", rp_strerror(err),
                    rp_pg_res_message(res));
        goto out;
    }
    json_t *f = json_pack("{s:I,s:I,s:O}", "export_id", (json_int_t)e->export_id, "rows",
                          (json_int_t)e->done, "outputs", e->outputs);
    rp_log_fields(RP_LOG_INFO, "export.done", j->id, f);
    rp__job_persist(j);
out:
    rp__job_unref(j);
}

static void outputs_done(export_job_t *e)
{
    rp__job_t *j = e->j;
    if (e->outstanding > 0 || !still_running(j))
        return;
    if (e->failed) {
        export_fail(e, e->fail_kind, "%s", e->error);
        return;
    }
    char id[32];
    snprintf(id, sizeof(id), "%lld", e->export_id);
    char *outputs = json_dumps(e->outputs, JSON_COMPACT);
    const char *params[2] = {id, outputs};
    rp__job_ref(j);
    int rc = outputs == NULL ? RP_ENOMEM
                             : rp_pg_query(rp__db_pick(j->w),
                                           "SELECT ragpool.training_export_finish($1::bigint, "
                                           "$2::jsonb)",
                                           2, params, 0, finish_done, j);
    free(outputs);
    if (rc != 0) {
        rp__job_unref(j);
        export_fail(e, RP__FAIL_TRANSIENT, "cannot record the end: %s", rp_strerror(rc));
    }
}

static void output_failed(export_job_t *e, rp__fail_kind_t kind, const char *msg)
{
    if (!e->failed || kind == RP__FAIL_PERMANENT)
        e->fail_kind = kind;
    if (!e->failed)
        snprintf(e->error, sizeof(e->error), "%s", msg);
    e->failed = 1;
}

static void output_ok(export_job_t *e, int fmt, const char *kind, const char *path)
{
    json_array_append_new(e->outputs,
                          json_pack("{s:s,s:s,s:s,s:I,s:I}", "format", fmt_names[fmt], "kind", kind,
                                    "path", path, "bytes", (json_int_t)e->doc[fmt].len, "rows",
                                    (json_int_t)e->done));
}

/* ------------------------------------------------------------------ */
/* OUTPUTS: files                                                       */
/* ------------------------------------------------------------------ */

static void file_step(uv_fs_t *req);

static void file_end(file_op_t *op, const char *error)
{
    export_job_t *e = op->e;
    rp__job_t *j = e->j;
    uv_fs_req_cleanup(&op->req);
    if (error != NULL) {
        char msg[300];
        snprintf(msg, sizeof(msg), "writing %.200s: %.80s", op->path, error);
        output_failed(e, RP__FAIL_PERMANENT, msg);
    } else {
        output_ok(e, op->fmt, "file", op->path);
    }
    free(op);
    e->outstanding--;
    outputs_done(e);
    rp__job_unref(j);
}

/* open -> write -> close -> rename, one callback. */
static void file_step(uv_fs_t *req)
{
    file_op_t *op = req->data;
    export_job_t *e = op->e;
    uv_loop_t *loop = e->j->w->loop;
    ssize_t r = req->result;
    uv_fs_type type = req->fs_type;
    uv_fs_req_cleanup(req);
    if (r < 0) {
        if (type == UV_FS_WRITE)
            uv_fs_close(loop, &op->req, op->fd, NULL); /* synchronous close of our fd */
        file_end(op, uv_strerror((int)r));
        return;
    }
    int rc = 0;
    switch (type) {
    case UV_FS_OPEN: {
        op->fd = (uv_file)r;
        uv_buf_t buf = uv_buf_init(e->doc[op->fmt].data != NULL ? e->doc[op->fmt].data : "",
                                   (unsigned)e->doc[op->fmt].len);
        rc = uv_fs_write(loop, &op->req, op->fd, &buf, 1, 0, file_step);
        break;
    }
    case UV_FS_WRITE:
        if ((size_t)r != e->doc[op->fmt].len) {
            uv_fs_close(loop, &op->req, op->fd, NULL);
            file_end(op, "short write");
            return;
        }
        rc = uv_fs_close(loop, &op->req, op->fd, file_step);
        break;
    case UV_FS_CLOSE:
        rc = uv_fs_rename(loop, &op->req, op->tmp, op->path, file_step);
        break;
    case UV_FS_RENAME:
        file_end(op, NULL);
        return;
    default:
        file_end(op, "unexpected file operation");
        return;
    }
    if (rc < 0)
        file_end(op, uv_strerror(rc));
}

static void file_write(export_job_t *e, int fmt)
{
    rp__job_t *j = e->j;
    file_op_t *op = calloc(1, sizeof(*op));
    if (op == NULL) {
        output_failed(e, RP__FAIL_TRANSIENT, "out of memory");
        return;
    }
    op->e = e;
    op->fmt = fmt;
    op->req.data = op;
    /* The name may hold '/' (a Storage folder); a file keeps one directory. */
    char flat[256];
    snprintf(flat, sizeof(flat), "%s", e->name);
    for (char *p = flat; *p != '\0'; p++)
        if (*p == '/')
            *p = '_';
    snprintf(op->path, sizeof(op->path), "%s/%s%s", j->w->cfg->export_dir, flat, fmt_suffix[fmt]);
    snprintf(op->tmp, sizeof(op->tmp), "%.990s.tmp-%.40s", op->path, j->id);
    rp__job_ref(j);
    e->outstanding++;
    int rc =
        uv_fs_open(j->w->loop, &op->req, op->tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644, file_step);
    if (rc < 0)
        file_end(op, uv_strerror(rc));
}

/* ------------------------------------------------------------------ */
/* OUTPUTS: Supabase Storage                                            */
/* ------------------------------------------------------------------ */

static void upload_done(void *data, const rp_http_resp_t *resp)
{
    upload_ctx_t *u = data;
    export_job_t *e = u->e;
    rp__job_t *j = e->j;
    u->req = NULL;
    if (resp->error != 0 || resp->status < 200 || resp->status >= 300) {
        char desc[300], msg[400];
        if (resp->error != 0)
            snprintf(desc, sizeof(desc), "%s: %s", rp_strerror(resp->error), resp->error_msg);
        else
            rp_openai_describe_error(resp->status, resp->body, resp->body_len, desc, sizeof(desc));
        snprintf(msg, sizeof(msg), "uploading %.150s: %.200s", u->path, desc);
        output_failed(e,
                      resp->error != 0 || rp_openai_status_retryable(resp->status)
                          ? RP__FAIL_TRANSIENT
                          : RP__FAIL_PERMANENT,
                      msg);
    } else {
        output_ok(e, u->fmt, "storage", u->path);
    }
    e->outstanding--;
    outputs_done(e);
    rp__job_unref(j);
}

static void upload(export_job_t *e, int fmt)
{
    rp__job_t *j = e->j;
    const rp_worker_cfg_t *cfg = j->w->cfg;
    upload_ctx_t *u = &e->up[fmt];
    u->e = e;
    u->fmt = fmt;
    snprintf(u->path, sizeof(u->path), "%s/%s%s", e->bucket, e->name, fmt_suffix[fmt]);
    size_t ul = strlen(cfg->supabase_url);
    while (ul > 0 && cfg->supabase_url[ul - 1] == '/')
        ul--;
    char url[1024];
    snprintf(url, sizeof(url), "%.*s/storage/v1/object/%s", (int)ul, cfg->supabase_url, u->path);
    const char *headers[6] = {
        "Content-Type: application/x-ndjson", "x-upsert: true", NULL, NULL, NULL, NULL};
    size_t nh = 2;
    if (e->auth != NULL) {
        headers[nh++] = e->auth;
        headers[nh++] = e->apikey;
    }
    rp_http_request_t req = {
        .method = "POST",
        .url = url,
        .headers = headers,
        .body = e->doc[fmt].data != NULL ? e->doc[fmt].data : "",
        .body_len = e->doc[fmt].len,
        .timeout_ms = j->w->cfg->model_timeout_ms,
    };
    rp__job_ref(j);
    e->outstanding++;
    int rc = rp_http_send(j->w->http, &req, upload_done, u, &u->req);
    if (rc != 0) {
        u->req = NULL;
        e->outstanding--;
        output_failed(e, RP__FAIL_TRANSIENT, "cannot send the upload");
        rp__job_unref(j);
    }
}

static void outputs_start(export_job_t *e)
{
    rp__job_t *j = e->j;
    const rp_worker_cfg_t *cfg = j->w->cfg;
    e->outputs = json_array();
    rp__job_ref(j); /* held while starting, so an early answer cannot finish e */
    e->outstanding++;
    for (int f = 0; f < FMT_N; f++) {
        if (rp_buf_failed(&e->doc[f])) {
            output_failed(e, RP__FAIL_TRANSIENT, "out of memory building the export");
            continue;
        }
        if (cfg->export_dir != NULL && cfg->export_dir[0] != '\0')
            file_write(e, f);
        if (e->has_bucket)
            upload(e, f);
    }
    e->outstanding--;
    outputs_done(e);
    rp__job_unref(j);
}

/* ------------------------------------------------------------------ */
/* BEGIN and PAGES                                                      */
/* ------------------------------------------------------------------ */

static void put_line(rp_buf_t *b, const char *pre, const char *a, size_t al, const char *mid,
                     const char *c, size_t cl, const char *post)
{
    rp_buf_puts(b, pre);
    rp_buf_json_escape(b, a, al);
    rp_buf_puts(b, mid);
    rp_buf_json_escape(b, c, cl);
    rp_buf_puts(b, post);
}

static void page_done(void *data, const rp_pg_res_t *res)
{
    rp__job_t *j = data;
    export_job_t *e = j->ext;
    if (!still_running(j))
        goto out;
    int err = rp_pg_res_error(res);
    if (err != 0) {
        export_fail(e, RP__FAIL_TRANSIENT, "reading a page failed: %s %s", rp_strerror(err),
                    rp_pg_res_message(res));
        goto out;
    }
    int n = rp_pg_res_ntuples(res);
    for (int r = 0; r < n; r++) {
        const char *msg = rp_pg_res_value(res, r, 1);
        size_t ml = (size_t)rp_pg_res_length(res, r, 1);
        const char *ans = rp_pg_res_value(res, r, 2);
        size_t al = (size_t)rp_pg_res_length(res, r, 2);
        put_line(&e->doc[FMT_REFERENCE], "{\"instruction\":\"", msg, ml,
                 "\",\"input\":\"\",\"output\":\"", ans, al, "\"}\n");
        put_line(&e->doc[FMT_OPENAI], "{\"messages\":[{\"role\":\"user\",\"content\":\"", msg, ml,
                 "\"},{\"role\":\"assistant\",\"content\":\"", ans, al, "\"}]}\n");
        e->after_id = atoll(rp_pg_res_value(res, r, 0));
    }
    e->done += n;
    if (rp_log_enabled(RP_LOG_INFO))
        rp_log_fields(RP_LOG_INFO, "export.progress", j->id,
                      json_pack("{s:I,s:I,s:I}", "export_id", (json_int_t)e->export_id, "rows_done",
                                (json_int_t)e->done, "rows_total", (json_int_t)e->total));
    if (n == j->w->cfg->export_page)
        page_send(e);
    else
        outputs_start(e);
out:
    rp__job_unref(j);
}

static void page_send(export_job_t *e)
{
    rp__job_t *j = e->j;
    char id[32], after[32], n[32];
    snprintf(id, sizeof(id), "%lld", e->export_id);
    snprintf(after, sizeof(after), "%lld", e->after_id);
    snprintf(n, sizeof(n), "%ld", j->w->cfg->export_page);
    const char *params[3] = {id, after, n};
    rp__job_ref(j);
    int rc = rp_pg_query(rp__db_pick(j->w),
                         "SELECT conversation_id, message, response FROM "
                         "ragpool.training_export_page($1::bigint, $2::bigint, $3::int)",
                         3, params, 0, page_done, j);
    if (rc != 0) {
        rp__job_unref(j);
        export_fail(e, RP__FAIL_TRANSIENT, "cannot send a page query: %s", rp_strerror(rc));
    }
}

static void begin_done(void *data, const rp_pg_res_t *res)
{
    rp__job_t *j = data;
    export_job_t *e = j->ext;
    const rp_worker_cfg_t *cfg = j->w->cfg;
    if (!still_running(j))
        goto out;
    int err = rp_pg_res_error(res);
    if (err != 0) {
        int bad = strcmp(rp_pg_res_sqlstate(res), "22023") == 0;
        export_fail(e, bad ? RP__FAIL_PERMANENT : RP__FAIL_TRANSIENT, "begin failed: %s %s",
                    rp_strerror(err), rp_pg_res_message(res));
        goto out;
    }
    snprintf(e->name, sizeof(e->name), "%s", rp_pg_res_value(res, 0, 0));
    e->has_bucket = !rp_pg_res_isnull(res, 0, 1);
    snprintf(e->bucket, sizeof(e->bucket), "%s", rp_pg_res_value(res, 0, 1));
    e->total = atoll(rp_pg_res_value(res, 0, 2));
    int to_dir = cfg->export_dir != NULL && cfg->export_dir[0] != '\0';
    if (e->has_bucket && (cfg->supabase_url == NULL || cfg->supabase_url[0] == '\0')) {
        export_fail(e, RP__FAIL_PERMANENT,
                    "the export names bucket '%s' but SUPABASE_URL is not set", e->bucket);
        goto out;
    }
    if (!e->has_bucket && !to_dir) {
        export_fail(e, RP__FAIL_PERMANENT,
                    "nowhere to write: give the export a bucket or set RAGPOOL_EXPORT_DIR");
        goto out;
    }
    if (e->has_bucket && cfg->supabase_service_key != NULL && cfg->supabase_service_key[0]) {
        size_t kl = strlen(cfg->supabase_service_key);
        e->auth = malloc(kl + 32);
        e->apikey = malloc(kl + 16);
        if (e->auth == NULL || e->apikey == NULL) {
            export_fail(e, RP__FAIL_TRANSIENT, "out of memory");
            goto out;
        }
        snprintf(e->auth, kl + 32, "Authorization: Bearer %s", cfg->supabase_service_key);
        snprintf(e->apikey, kl + 16, "apikey: %s", cfg->supabase_service_key);
    }
    rp_log_info("export.started", j->id, "export %lld: %lld conversations to export as '%s'",
                e->export_id, e->total, e->name);
    page_send(e);
out:
    rp__job_unref(j);
}

static void export_start(rp__job_t *j)
{
    export_job_t *e = calloc(1, sizeof(*e));
    if (e == NULL) {
        rp__job_fail(j, RP__FAIL_TRANSIENT, -1, "out of memory");
        return;
    }
    e->j = j;
    j->ext = e;
    json_t *root =
        j->format == RP_PAYLOAD_JSON ? json_loadb(j->payload, j->payload_len, 0, NULL) : NULL;
    json_t *id = json_object_get(root, "export_id");
    if (!json_is_integer(id) || json_integer_value(id) <= 0) {
        json_decref(root);
        rp__job_fail(j, RP__FAIL_INVALID, -1,
                     "invalid_payload: an export_training payload is {\"export_id\": N}");
        return;
    }
    e->export_id = (long long)json_integer_value(id);
    json_decref(root);
    rp__job_set_state(j, RP__JOB_RUNNING);
    char num[32];
    snprintf(num, sizeof(num), "%lld", e->export_id);
    const char *params[1] = {num};
    rp__job_ref(j);
    int rc = rp_pg_query(rp__db_pick(j->w),
                         "SELECT name, bucket, rows_total FROM "
                         "ragpool.training_export_begin($1::bigint)",
                         1, params, 0, begin_done, j);
    if (rc != 0) {
        rp__job_unref(j);
        export_fail(e, RP__FAIL_TRANSIENT, "cannot send the begin query: %s", rp_strerror(rc));
    }
}

static void export_abandon(rp__job_t *j)
{
    export_job_t *e = j->ext;
    if (e == NULL)
        return;
    for (int f = 0; f < FMT_N; f++) {
        if (e->up[f].req != NULL) {
            /* Its callback never runs now: drop what it would have. */
            rp_http_cancel(e->up[f].req);
            e->up[f].req = NULL;
            e->outstanding--;
            rp__job_unref(j);
        }
    }
}

static void export_cleanup(rp__job_t *j)
{
    export_job_t *e = j->ext;
    if (e == NULL)
        return;
    for (int f = 0; f < FMT_N; f++)
        rp_buf_free(&e->doc[f]);
    json_decref(e->outputs);
    free(e->auth);
    free(e->apikey);
    free(e);
    j->ext = NULL;
}

const rp__kind_t rp__kind_export = {
    .name = "export_training",
    .start = export_start,
    .cleanup = export_cleanup,
    .abandon = export_abandon,
};
