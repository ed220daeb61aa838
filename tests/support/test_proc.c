/*
 * test_proc.c: child processes for integration tests (see test_proc.h).
 *
 * Everything the child needs (argv, envp, the log descriptor) is prepared
 * before fork, because the test process may have threads (libcurl's
 * resolver) and only async-signal-safe calls are allowed between fork and
 * exec.  The registry of live children is a process-wide list: it exists so
 * that an atexit handler can kill whatever a failed test left behind, which
 * is the one place a global is the simplest correct tool.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "test_proc.h"

extern char **environ;

struct rp_test_proc {
    char *name;
    char *log_path;
    pid_t pid;
    int reaped;
    int status; /* exit code, or 128 + signal, once reaped */
    struct rp_test_proc *next;
};

/* Live children, for the atexit sweep (see the file comment). */
static rp_test_proc_t *g_procs;
static char g_tmpdir[256];
static int g_atexit_done;
static int g_seq;

long long rp_test_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void rp_test_sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

static void sweep_at_exit(void)
{
    rp_test_proc_t *p;
    for (p = g_procs; p != NULL; p = p->next) {
        if (!p->reaped) {
            kill(-p->pid, SIGKILL);
            kill(p->pid, SIGKILL);
            waitpid(p->pid, NULL, 0);
            p->reaped = 1;
        }
    }
    if (g_tmpdir[0] != '\0') {
        const char *keep = getenv("RP_TEST_KEEP");
        if (keep != NULL && strcmp(keep, "1") == 0) {
            fprintf(stderr, "test files kept in %s\n", g_tmpdir);
        } else {
            nftw(g_tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
        }
    }
}

static void ensure_atexit(void)
{
    if (!g_atexit_done) {
        atexit(sweep_at_exit);
        g_atexit_done = 1;
    }
}

const char *rp_test_tmpdir(void)
{
    if (g_tmpdir[0] == '\0') {
        const char *base = getenv("TMPDIR");
        snprintf(g_tmpdir, sizeof g_tmpdir, "%s/rptest.XXXXXX",
                 base != NULL && base[0] != '\0' ? base : "/tmp");
        if (mkdtemp(g_tmpdir) == NULL) {
            g_tmpdir[0] = '\0';
            fail_msg("cannot create a temporary directory: %s", strerror(errno));
        }
        ensure_atexit();
    }
    return g_tmpdir;
}

/* Build a new environment: a copy of environ with the overrides applied in
 * order.  Returns owned (free the array and each string). */
static char **build_env(const char *const *overrides)
{
    size_t n = 0, n_over = 0, i, j, cap;
    char **env;
    while (environ[n] != NULL) {
        n++;
    }
    while (overrides != NULL && overrides[n_over] != NULL) {
        n_over++;
    }
    cap = n + n_over + 1;
    env = calloc(cap, sizeof *env);
    assert_non_null(env);
    for (i = 0; i < n; i++) {
        env[i] = strdup(environ[i]);
    }
    for (j = 0; j < n_over; j++) {
        const char *o = overrides[j];
        const char *eq = strchr(o, '=');
        size_t keylen = eq != NULL ? (size_t)(eq - o) : strlen(o);
        size_t k, found = (size_t)-1;
        for (k = 0; k < n; k++) {
            if (strncmp(env[k], o, keylen) == 0 && env[k][keylen] == '=') {
                found = k;
                break;
            }
        }
        if (found != (size_t)-1) {
            free(env[found]);
            env[found] = env[n - 1];
            env[n - 1] = NULL;
            n--;
        }
        if (eq != NULL) {
            env[n++] = strdup(o);
            env[n] = NULL;
        }
    }
    return env;
}

static void free_strv(char **v)
{
    size_t i;
    if (v == NULL) {
        return;
    }
    for (i = 0; v[i] != NULL; i++) {
        free(v[i]);
    }
    free(v);
}

rp_test_proc_t *rp_test_proc_start(const char *name, const char *const *argv,
                                   const char *const *env)
{
    rp_test_proc_t *p;
    char **envp, **av;
    size_t argc = 0, i;
    int fd;
    pid_t parent = getpid();

    assert_non_null(argv);
    assert_non_null(argv[0]);
    while (argv[argc] != NULL) {
        argc++;
    }
    p = calloc(1, sizeof *p);
    assert_non_null(p);
    p->name = strdup(name);
    if (asprintf(&p->log_path, "%s/%s.%d.log", rp_test_tmpdir(), name, ++g_seq) < 0) {
        fail_msg("out of memory");
    }
    fd = open(p->log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        fail_msg("cannot open %s: %s", p->log_path, strerror(errno));
    }
    envp = build_env(env);
    av = calloc(argc + 1, sizeof *av);
    assert_non_null(av);
    for (i = 0; i < argc; i++) {
        av[i] = strdup(argv[i]);
    }
    fflush(NULL);

    p->pid = fork();
    if (p->pid < 0) {
        fail_msg("fork: %s", strerror(errno));
    }
    if (p->pid == 0) {
        /* Child: async-signal-safe calls only until exec. */
        setpgid(0, 0);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) {
            _exit(127);
        }
        signal(SIGPIPE, SIG_DFL);
        dup2(fd, STDOUT_FILENO);
        dup2(fd, STDERR_FILENO);
        {
            int devnull = open("/dev/null", O_RDONLY);
            if (devnull >= 0) {
                dup2(devnull, STDIN_FILENO);
            }
        }
        execvpe(av[0], av, envp);
        {
            static const char msg[] = "exec failed\n";
            ssize_t w = write(STDERR_FILENO, msg, sizeof msg - 1);
            (void)w;
        }
        _exit(127);
    }
    /* Parent: set the group here too, so a kill right after start reaches it. */
    setpgid(p->pid, p->pid);
    close(fd);
    free_strv(envp);
    free_strv(av);
    ensure_atexit();
    p->next = g_procs;
    g_procs = p;
    return p;
}

pid_t rp_test_proc_pid(const rp_test_proc_t *p)
{
    return p->pid;
}

const char *rp_test_proc_name(const rp_test_proc_t *p)
{
    return p->name;
}

int rp_test_proc_signal(rp_test_proc_t *p, int sig)
{
    if (p->reaped) {
        return -1;
    }
    return kill(p->pid, sig) == 0 ? 0 : -1;
}

static int try_reap(rp_test_proc_t *p, int options)
{
    int st;
    pid_t r;
    if (p->reaped) {
        return 1;
    }
    do {
        r = waitpid(p->pid, &st, options);
    } while (r < 0 && errno == EINTR);
    if (r == p->pid) {
        p->reaped = 1;
        if (WIFEXITED(st)) {
            p->status = WEXITSTATUS(st);
        } else if (WIFSIGNALED(st)) {
            p->status = 128 + WTERMSIG(st);
        } else {
            p->status = 255;
        }
        /* Anything the child started in its group goes with it. */
        kill(-p->pid, SIGKILL);
        return 1;
    }
    if (r < 0) {
        /* Not our child any more (reaped elsewhere): treat as gone. */
        p->reaped = 1;
        p->status = 255;
        return 1;
    }
    return 0;
}

int rp_test_proc_wait(rp_test_proc_t *p, long timeout_ms)
{
    long long deadline = rp_test_now_ms() + timeout_ms;
    for (;;) {
        if (try_reap(p, WNOHANG)) {
            return p->status;
        }
        if (rp_test_now_ms() >= deadline) {
            return -1;
        }
        rp_test_sleep_ms(10);
    }
}

int rp_test_proc_running(rp_test_proc_t *p)
{
    return !try_reap(p, WNOHANG);
}

void rp_test_proc_kill(rp_test_proc_t *p)
{
    if (p == NULL || p->reaped) {
        return;
    }
    kill(-p->pid, SIGKILL);
    kill(p->pid, SIGKILL);
    try_reap(p, 0);
}

void rp_test_proc_free(rp_test_proc_t *p)
{
    rp_test_proc_t **pp;
    if (p == NULL) {
        return;
    }
    rp_test_proc_kill(p);
    for (pp = &g_procs; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == p) {
            *pp = p->next;
            break;
        }
    }
    free(p->name);
    free(p->log_path);
    free(p);
}

const char *rp_test_proc_log_path(const rp_test_proc_t *p)
{
    return p->log_path;
}

static char *read_file(const char *path, size_t *len_out)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t len = 0, cap = 0;
    if (f != NULL) {
        for (;;) {
            size_t r;
            if (cap - len < 4096) {
                char *nb;
                cap = cap == 0 ? 8192 : cap * 2;
                nb = realloc(buf, cap + 1);
                assert_non_null(nb);
                buf = nb;
            }
            r = fread(buf + len, 1, cap - len, f);
            len += r;
            if (r == 0) {
                break;
            }
        }
        fclose(f);
    }
    if (buf == NULL) {
        buf = malloc(1);
        assert_non_null(buf);
    }
    buf[len] = '\0';
    if (len_out != NULL) {
        *len_out = len;
    }
    return buf;
}

char *rp_test_proc_log(const rp_test_proc_t *p)
{
    return read_file(p->log_path, NULL);
}

int rp_test_proc_log_count(const rp_test_proc_t *p, const char *needle)
{
    char *log = rp_test_proc_log(p);
    const char *s = log;
    int n = 0;
    size_t nl = strlen(needle);
    while (nl > 0 && (s = strstr(s, needle)) != NULL) {
        n++;
        s += nl;
    }
    free(log);
    return n;
}

int rp_test_proc_wait_log(rp_test_proc_t *p, const char *needle, long timeout_ms)
{
    long long deadline = rp_test_now_ms() + timeout_ms;
    for (;;) {
        char *log = rp_test_proc_log(p);
        int found = strstr(log, needle) != NULL;
        free(log);
        if (found) {
            return 0;
        }
        if (!rp_test_proc_running(p)) {
            /* It may have written the line just before exiting. */
            log = rp_test_proc_log(p);
            found = strstr(log, needle) != NULL;
            free(log);
            return found ? 0 : -1;
        }
        if (rp_test_now_ms() >= deadline) {
            return -1;
        }
        rp_test_sleep_ms(20);
    }
}

void rp_test_proc_dump_log(const rp_test_proc_t *p, FILE *f, size_t max_bytes)
{
    size_t len;
    char *log = read_file(p->log_path, &len);
    const char *start = log;
    if (max_bytes > 0 && len > max_bytes) {
        start = log + (len - max_bytes);
        fprintf(f, "----- %s (pid %d, last %zu of %zu bytes of %s) -----\n", p->name, (int)p->pid,
                max_bytes, len, p->log_path);
    } else {
        fprintf(f, "----- %s (pid %d, %s) -----\n", p->name, (int)p->pid, p->log_path);
    }
    fputs(start, f);
    if (len > 0 && log[len - 1] != '\n') {
        fputc('\n', f);
    }
    fprintf(f, "----- end of %s -----\n", p->name);
    free(log);
}

int rp_test_run(const char *name, const char *const *argv, const char *const *env, long timeout_ms,
                char **out)
{
    rp_test_proc_t *p = rp_test_proc_start(name, argv, env);
    int st = rp_test_proc_wait(p, timeout_ms);
    if (st < 0) {
        rp_test_proc_kill(p);
    }
    if (out != NULL) {
        *out = rp_test_proc_log(p);
    }
    rp_test_proc_free(p);
    return st;
}
