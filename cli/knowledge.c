/*
 * knowledge.c: `ragpool load-knowledge`: embed a JSONL file of documents
 * into public.finance_knowledge.
 *
 * Each line is {"content", "category", "token_symbol"} (other keys, or a
 * "metadata" object, go to the metadata column).  Documents whose content is
 * already in the table are skipped before anything is embedded, so loading
 * the same file twice costs nothing and inserts nothing.  The rest are
 * embedded in batches through POST $OPENAI_BASE_URL/embeddings (retrying
 * 429 and 5xx answers, honouring Retry-After) and inserted one batch per
 * transaction, the vector written as the column's type wants it: `[a,b]`
 * for pgvector, `{a,b}` for the real[] fallback.
 */
#include <curl/curl.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"

#define KB_MAX_ATTEMPTS 5

typedef struct kb_doc {
    char *content;      /* owned */
    char *category;     /* owned, may be NULL */
    char *token_symbol; /* owned, may be NULL */
    char *metadata;     /* owned JSON text, may be NULL */
    char *embedding;    /* owned literal for the column, NULL until embedded */
} kb_doc_t;

typedef struct kb_buf {
    char *data;
    size_t len;
} kb_buf_t;

void rp_cli_load_knowledge_usage(FILE *f)
{
    fprintf(f,
            "ragpool load-knowledge --file PATH.jsonl [--batch N]\n"
            "    Embed documents ({\"content\",\"category\",\"token_symbol\"} per line) with\n"
            "    RAGPOOL_EMBED_MODEL at OPENAI_BASE_URL and insert them into finance_knowledge;\n"
            "    documents already present (same content) are skipped.  --batch: documents\n"
            "    per embeddings request (default 32).\n");
}

static void doc_free(kb_doc_t *d)
{
    free(d->content);
    free(d->category);
    free(d->token_symbol);
    free(d->metadata);
    free(d->embedding);
}

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

/* Parses one line into d.  Returns 0, 1 for a blank line, -1 (printed). */
static int parse_line(const char *path, long lineno, const char *line, kb_doc_t *d)
{
    const char *p = line;
    while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')
        p++;
    if (*p == '\0')
        return 1;
    json_error_t jerr;
    json_t *o = json_loads(line, 0, &jerr);
    if (!json_is_object(o)) {
        fprintf(stderr, "ragpool: %s:%ld: not a JSON object (%s)\n", path, lineno,
                o ? "another JSON value" : jerr.text);
        json_decref(o);
        return -1;
    }
    int rc = -1;
    json_t *meta = NULL;
    const char *content = json_string_value(json_object_get(o, "content"));
    if (content == NULL || content[0] == '\0') {
        fprintf(stderr, "ragpool: %s:%ld: \"content\" must be a non-empty string\n", path, lineno);
        goto out;
    }
    json_t *m = json_object_get(o, "metadata");
    meta = json_is_object(m) ? json_deep_copy(m) : json_object();
    if (meta == NULL)
        goto oom;
    const char *key;
    json_t *v;
    json_object_foreach(o, key, v)
    {
        if (strcmp(key, "content") != 0 && strcmp(key, "category") != 0 &&
            strcmp(key, "token_symbol") != 0 && strcmp(key, "metadata") != 0)
            json_object_set(meta, key, v);
    }
    d->content = strdup(content);
    d->category = dup_or_null(json_string_value(json_object_get(o, "category")));
    d->token_symbol = dup_or_null(json_string_value(json_object_get(o, "token_symbol")));
    d->metadata = json_object_size(meta) ? json_dumps(meta, JSON_COMPACT) : NULL;
    if (d->content == NULL)
        goto oom;
    rc = 0;
    goto out;
oom:
    fprintf(stderr, "ragpool: out of memory\n");
out:
    json_decref(meta);
    json_decref(o);
    return rc;
}

static size_t collect(char *ptr, size_t size, size_t nmemb, void *data)
{
    kb_buf_t *b = data;
    size_t n = size * nmemb;
    char *p = realloc(b->data, b->len + n + 1);
    if (p == NULL)
        return 0;
    memcpy(p + b->len, ptr, n);
    b->len += n;
    p[b->len] = '\0';
    b->data = p;
    return n;
}

/* Formats an embedding array as the column wants it.  Returns owned text
 * or NULL (wrong size, not numbers, out of memory; printed). */
static char *format_vector(json_t *emb, long dims, int bracket)
{
    if (!json_is_array(emb) || (long)json_array_size(emb) != dims) {
        fprintf(stderr,
                "ragpool: the embeddings API returned a vector of %zu numbers, expected %ld "
                "(RAGPOOL_EMBED_DIMENSIONS)\n",
                json_is_array(emb) ? json_array_size(emb) : 0, dims);
        return NULL;
    }
    size_t cap = (size_t)dims * 18 + 4, len = 0;
    char *s = malloc(cap);
    if (s == NULL)
        return NULL;
    s[len++] = bracket ? '[' : '{';
    for (size_t i = 0; i < (size_t)dims; i++) {
        json_t *x = json_array_get(emb, i);
        if (!json_is_number(x)) {
            fprintf(stderr, "ragpool: the embeddings API returned a non-number in a vector\n");
            free(s);
            return NULL;
        }
        len += (size_t)snprintf(s + len, cap - len, "%s%.9g", i ? "," : "", json_number_value(x));
    }
    s[len++] = bracket ? ']' : '}';
    s[len] = '\0';
    return s;
}

/* Embeds docs[0..n) with one request (retrying).  Returns 0 or -1 (printed). */
static int embed_batch(const rp_cli_cfg_t *cfg, CURL *curl, kb_doc_t *docs, size_t n, int bracket)
{
    int rc = -1;
    char *url = NULL, *body = NULL, *auth = NULL;
    struct curl_slist *hdrs = NULL;
    json_t *resp = NULL;
    kb_buf_t buf = {NULL, 0};

    size_t blen = strlen(cfg->openai_base_url);
    while (blen > 0 && cfg->openai_base_url[blen - 1] == '/')
        blen--;
    if (asprintf(&url, "%.*s/embeddings", (int)blen, cfg->openai_base_url) < 0) {
        url = NULL;
        goto oom;
    }
    json_t *input = json_array();
    for (size_t i = 0; i < n && input != NULL; i++)
        json_array_append_new(input, json_string(docs[i].content));
    json_t *req = json_pack("{s:s, s:o, s:I}", "model", cfg->embed_model, "input", input,
                            "dimensions", (json_int_t)cfg->embed_dimensions);
    if (req == NULL)
        goto oom;
    body = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    if (body == NULL)
        goto oom;
    hdrs = curl_slist_append(hdrs, "Content-Type: application/json");
    if (cfg->openai_api_key != NULL && cfg->openai_api_key[0] != '\0') {
        if (asprintf(&auth, "Authorization: Bearer %s", cfg->openai_api_key) < 0) {
            auth = NULL;
            goto oom;
        }
        hdrs = curl_slist_append(hdrs, auth);
    }

    long status = 0;
    for (int attempt = 1;; attempt++) {
        free(buf.data);
        buf.data = NULL;
        buf.len = 0;
        curl_easy_reset(curl);
        curl_easy_setopt(curl, CURLOPT_URL, url);
        curl_easy_setopt(curl, CURLOPT_HTTPHEADER, hdrs);
        curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, collect);
        curl_easy_setopt(curl, CURLOPT_WRITEDATA, &buf);
        curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
        curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, 120000L);
        CURLcode cc = curl_easy_perform(curl);
        curl_off_t retry_after = -1;
        status = 0;
        if (cc == CURLE_OK) {
            curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
            curl_easy_getinfo(curl, CURLINFO_RETRY_AFTER, &retry_after);
            if (status >= 200 && status < 300)
                break;
        }
        int transient = cc != CURLE_OK || status == 429 || status >= 500;
        if (!transient || attempt >= KB_MAX_ATTEMPTS) {
            if (cc != CURLE_OK)
                fprintf(stderr, "ragpool: embeddings request failed: %s\n", curl_easy_strerror(cc));
            else
                fprintf(stderr, "ragpool: embeddings request answered HTTP %ld: %.300s\n", status,
                        buf.data ? buf.data : "");
            goto out;
        }
        long delay_s = 1L << (attempt - 1);
        if (retry_after > 0 && retry_after <= 60 && retry_after > delay_s)
            delay_s = (long)retry_after;
        fprintf(stderr, "ragpool: embeddings request %s; retrying in %ld s\n",
                cc != CURLE_OK ? curl_easy_strerror(cc) : "answered with a retryable status",
                delay_s);
        struct timespec ts = {delay_s, 0};
        nanosleep(&ts, NULL);
    }

    json_error_t jerr;
    resp = json_loads(buf.data ? buf.data : "", 0, &jerr);
    json_t *data = json_object_get(resp, "data");
    if (!json_is_array(data) || json_array_size(data) != n) {
        fprintf(stderr, "ragpool: the embeddings API answered without %zu vectors in \"data\"\n",
                n);
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *item = json_array_get(data, i);
        json_t *idx = json_object_get(item, "index");
        size_t at = json_is_integer(idx) ? (size_t)json_integer_value(idx) : i;
        if (at >= n || docs[at].embedding != NULL) {
            fprintf(stderr, "ragpool: the embeddings API answered a bad index\n");
            goto out;
        }
        docs[at].embedding =
            format_vector(json_object_get(item, "embedding"), cfg->embed_dimensions, bracket);
        if (docs[at].embedding == NULL)
            goto out;
    }
    rc = 0;
    goto out;
oom:
    fprintf(stderr, "ragpool: out of memory\n");
out:
    json_decref(resp);
    free(buf.data);
    curl_slist_free_all(hdrs);
    free(auth);
    free(body);
    free(url);
    return rc;
}

/* Inserts docs[0..n) in one transaction.  Returns inserted count or -1. */
static long insert_batch(PGconn *conn, kb_doc_t *docs, size_t n)
{
    PGresult *res = rp_cli_exec(conn, "begin", "BEGIN", 0, NULL);
    if (res == NULL)
        return -1;
    PQclear(res);
    long inserted = 0;
    for (size_t i = 0; i < n; i++) {
        const char *params[] = {docs[i].content, docs[i].embedding, docs[i].category,
                                docs[i].token_symbol, docs[i].metadata};
        /* VALUES lets the server type $2 from the column (vector or real[]). */
        res = rp_cli_exec(conn, "insert a document",
                          "INSERT INTO public.finance_knowledge "
                          "(content, embedding, category, token_symbol, metadata) "
                          "VALUES ($1, $2, $3, $4, $5::jsonb)",
                          5, params);
        if (res == NULL) {
            PQclear(PQexec(conn, "ROLLBACK"));
            return -1;
        }
        inserted += strtol(PQcmdTuples(res), NULL, 10);
        PQclear(res);
    }
    res = rp_cli_exec(conn, "commit", "COMMIT", 0, NULL);
    if (res == NULL)
        return -1;
    PQclear(res);
    return inserted;
}

/* Reads the embedding column's type: sets *bracket (pgvector) and checks
 * its size against RAGPOOL_EMBED_DIMENSIONS.  Returns 0 or -1 (printed). */
static int column_format(PGconn *conn, long dims, int *bracket)
{
    PGresult *res = rp_cli_exec(
        conn, "read finance_knowledge.embedding",
        "SELECT t.typname, a.atttypmod, "
        "  (SELECT value FROM ragpool.settings WHERE key = 'embedding_dimensions') "
        "FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
        "WHERE a.attrelid = 'public.finance_knowledge'::regclass AND a.attname = 'embedding'",
        0, NULL);
    if (res == NULL)
        return -1;
    int rc = -1;
    if (PQntuples(res) != 1) {
        fprintf(stderr,
                "ragpool: finance_knowledge has no embedding column (run ragpool migrate)\n");
        goto out;
    }
    *bracket = strcmp(PQgetvalue(res, 0, 0), "vector") == 0;
    long have = *bracket
                    ? strtol(PQgetvalue(res, 0, 1), NULL, 10)
                    : (PQgetisnull(res, 0, 2) ? dims : strtol(PQgetvalue(res, 0, 2), NULL, 10));
    if (have > 0 && have != dims) {
        fprintf(stderr,
                "ragpool: RAGPOOL_EMBED_DIMENSIONS=%ld but finance_knowledge holds %ld-dimension "
                "embeddings\n",
                dims, have);
        goto out;
    }
    rc = 0;
out:
    PQclear(res);
    return rc;
}

int rp_cli_load_knowledge(const rp_cli_cfg_t *cfg, int argc, char **argv)
{
    static const struct option opts[] = {
        {"file", required_argument, NULL, 'f'},
        {"batch", required_argument, NULL, 'b'},
        {NULL, 0, NULL, 0},
    };
    const char *path = NULL;
    long batch = 32;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'f':
            path = optarg;
            break;
        case 'b': {
            char *end = NULL;
            batch = strtol(optarg, &end, 10);
            if (end == optarg || *end != '\0' || batch < 1 || batch > 2048) {
                fprintf(stderr, "ragpool load-knowledge: --batch must be 1 to 2048\n");
                return RP_CLI_USAGE;
            }
            break;
        }
        default:
            rp_cli_load_knowledge_usage(stderr);
            return RP_CLI_USAGE;
        }
    }
    if (path == NULL || optind != argc) {
        rp_cli_load_knowledge_usage(stderr);
        return RP_CLI_USAGE;
    }

    int rc = RP_CLI_FAIL;
    FILE *f = NULL;
    PGconn *conn = NULL;
    CURL *curl = NULL;
    kb_doc_t *docs = NULL;
    size_t ndocs = 0, cap = 0, skipped = 0;
    long inserted = 0;
    char *line = NULL;
    size_t linecap = 0;
    int bracket = 0;
    int curl_inited = 0;

    f = fopen(path, "r");
    if (f == NULL) {
        fprintf(stderr, "ragpool: cannot open %s: %m\n", path);
        return RP_CLI_FAIL;
    }
    conn = rp_cli_connect(cfg);
    if (conn == NULL)
        goto out;
    if (column_format(conn, cfg->embed_dimensions, &bracket) != 0)
        goto out;

    long lineno = 0;
    while (getline(&line, &linecap, f) != -1) {
        lineno++;
        kb_doc_t d;
        memset(&d, 0, sizeof(d));
        int pr = parse_line(path, lineno, line, &d);
        if (pr < 0)
            goto out;
        if (pr > 0)
            continue;
        const char *params[] = {d.content};
        PGresult *res = rp_cli_exec(conn, "look for the document",
                                    "SELECT 1 FROM public.finance_knowledge "
                                    "WHERE md5(content) = md5($1) AND content = $1 LIMIT 1",
                                    1, params);
        if (res == NULL) {
            doc_free(&d);
            goto out;
        }
        int present = PQntuples(res) > 0;
        PQclear(res);
        for (size_t i = 0; i < ndocs && !present; i++)
            present = strcmp(docs[i].content, d.content) == 0;
        if (present) {
            skipped++;
            doc_free(&d);
            continue;
        }
        if (ndocs == cap) {
            size_t ncap = cap ? cap * 2 : 64;
            kb_doc_t *nd = realloc(docs, ncap * sizeof(*nd));
            if (nd == NULL) {
                doc_free(&d);
                fprintf(stderr, "ragpool: out of memory\n");
                goto out;
            }
            docs = nd;
            cap = ncap;
        }
        docs[ndocs++] = d;
    }

    if (ndocs > 0) {
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
            fprintf(stderr, "ragpool: cannot initialise libcurl\n");
            goto out;
        }
        curl_inited = 1;
        curl = curl_easy_init();
        if (curl == NULL) {
            fprintf(stderr, "ragpool: cannot initialise libcurl\n");
            goto out;
        }
    }
    for (size_t at = 0; at < ndocs; at += (size_t)batch) {
        size_t n = ndocs - at < (size_t)batch ? ndocs - at : (size_t)batch;
        if (embed_batch(cfg, curl, docs + at, n, bracket) != 0)
            goto out;
        long k = insert_batch(conn, docs + at, n);
        if (k < 0)
            goto out;
        inserted += k;
        fprintf(stderr, "ragpool: embedded %zu of %zu new documents\n", at + n, ndocs);
    }
    printf("loaded %s: %ld inserted, %zu already present\n", path, inserted, skipped);
    rc = RP_CLI_OK;
out:
    for (size_t i = 0; i < ndocs; i++)
        doc_free(&docs[i]);
    free(docs);
    free(line);
    if (curl != NULL)
        curl_easy_cleanup(curl);
    if (curl_inited)
        curl_global_cleanup();
    if (conn != NULL)
        PQfinish(conn);
    fclose(f);
    return rc;
}
