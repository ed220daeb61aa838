/*
 * test_proc.h: child processes for integration tests (workers, model
 * servers, the CLI, psql).
 *
 * A child runs argv[0] with the test's environment changed by a list of
 * overrides, writes stdout and stderr to one log file in the test process's
 * temporary directory, leads its own process group (so a kill reaches
 * everything it started) and is killed by the kernel if the test process
 * dies (PR_SET_PDEATHSIG), so an aborted or timed-out test leaves nothing
 * running.  Every child is also on a registry that an atexit handler
 * sweeps: whatever a test forgot is killed when the test program ends.
 *
 * Helpers that cannot go on (fork fails, a file cannot be opened) fail the
 * current cmocka test with a message; functions that report an outcome
 * (exit status, timeout) return it for the test to assert on.
 */
#ifndef RP_TEST_PROC_H
#define RP_TEST_PROC_H

#include <stdio.h>
#include <sys/types.h>

typedef struct rp_test_proc rp_test_proc_t;

/* The test program's private temporary directory (created on first use,
 * removed at exit unless RP_TEST_KEEP=1).  Returns a borrowed string valid
 * until exit. */
const char *rp_test_tmpdir(void);

/* Start argv[0] (a path, or a name looked up in PATH) with argv.  env is a
 * NULL-terminated list of overrides applied in order to a copy of the
 * current environment: "NAME=value" sets, "NAME" unsets; env may be NULL.
 * name labels the log file and dumps.  argv and env are borrowed (copied).
 * Returns owned (rp_test_proc_free); fails the test when it cannot fork. */
rp_test_proc_t *rp_test_proc_start(const char *name, const char *const *argv,
                                   const char *const *env);

/* The child's pid (also its process group id). */
pid_t rp_test_proc_pid(const rp_test_proc_t *p);

/* The label given at start (borrowed). */
const char *rp_test_proc_name(const rp_test_proc_t *p);

/* Send sig to the child (not its group).  Returns 0, or -1 when it has
 * already been reaped. */
int rp_test_proc_signal(rp_test_proc_t *p, int sig);

/* Wait up to timeout_ms for the child to exit.  Returns its exit code
 * (0..255), 128 + the signal number when a signal ended it, or -1 when it
 * is still running at the deadline.  Once reaped, returns the same status
 * again at once. */
int rp_test_proc_wait(rp_test_proc_t *p, long timeout_ms);

/* True while the child has not exited. */
int rp_test_proc_running(rp_test_proc_t *p);

/* SIGKILL the child's whole process group and reap it.  Safe to repeat. */
void rp_test_proc_kill(rp_test_proc_t *p);

/* Kill (if still running) and free; p may be NULL. */
void rp_test_proc_free(rp_test_proc_t *p);

/* Path of the child's log file (borrowed, valid until rp_test_proc_free). */
const char *rp_test_proc_log_path(const rp_test_proc_t *p);

/* The whole log so far as a new string (free with free()); "" when empty. */
char *rp_test_proc_log(const rp_test_proc_t *p);

/* Wait up to timeout_ms until the log contains needle.  Returns 0 when it
 * does, -1 on timeout or when the child exited without writing it. */
int rp_test_proc_wait_log(rp_test_proc_t *p, const char *needle, long timeout_ms);

/* Count the occurrences of needle in the log so far. */
int rp_test_proc_log_count(const rp_test_proc_t *p, const char *needle);

/* Print the last max_bytes of the log to f under a header naming the
 * process (for failure reports). */
void rp_test_proc_dump_log(const rp_test_proc_t *p, FILE *f, size_t max_bytes);

/* Run a program to completion: start, wait up to timeout_ms (killing it at
 * the deadline), and return its status as rp_test_proc_wait does (-1 on
 * timeout).  When out is not NULL, *out receives its combined output
 * (owned, free with free()). */
int rp_test_run(const char *name, const char *const *argv, const char *const *env, long timeout_ms,
                char **out);

/* Milliseconds on a monotonic clock, for deadlines. */
long long rp_test_now_ms(void);

/* Sleep for ms milliseconds. */
void rp_test_sleep_ms(long ms);

#endif
