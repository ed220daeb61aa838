# shellcheck shell=bash
# bench/lib.sh: helpers the benchmark scripts source (bash).
#
# Process accounting read straight from /proc, so a benchmark can say how
# much CPU each part of the pipeline (worker, Postgres, model server) used
# over an interval without running a profiler beside it:
#   rp_bench_cpu_ticks PID        utime+stime of one process (all threads)
#   rp_bench_pg_cpu_ticks PID     the same for a postmaster and everything
#                                 under it: live children plus the children
#                                 it has already reaped (cutime+cstime)
#   rp_bench_status_kib PID FIELD a /proc/PID/status field in KiB (VmHWM,
#                                 VmRSS)
# Ticks are clock ticks (getconf CLK_TCK, 100 on Linux); rp_bench_ticks_to_us
# converts.  Small formatting helpers (median, fixed decimals) are here too.
# Nothing here starts or stops processes.

RP_BENCH_CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)

# Print the fields of /proc/PID/stat after the command name, which may hold
# spaces and parentheses: field 3 of the man page becomes $1 here, so
# utime (14) is $12, stime (15) $13, cutime (16) $14, cstime (17) $15 and
# ppid (4) is $2.  Prints nothing when the process is gone.
rp__bench_stat_tail() {
    local s
    s=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    printf '%s\n' "${s##*) }"
}

# utime+stime of process PID in clock ticks (0 when it is gone).
rp_bench_cpu_ticks() {
    local t
    t=$(rp__bench_stat_tail "$1")
    if [ -z "$t" ]; then
        echo 0
        return 0
    fi
    awk '{ print $12 + $13 }' <<<"$t"
}

# CPU ticks of a postmaster and all its processes: its own utime+stime, the
# cutime+cstime of the backends it has reaped, and utime+stime of every live
# child.  A backend that exits during an interval is counted whole (its
# time before the interval too), which errs by a connection's start-up cost.
rp_bench_pg_cpu_ticks() {
    local pm=$1
    # One line per process; cat skips processes that exit meanwhile.
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v pm="$pm" '
        {
            pid = $1
            line = $0
            sub(/^.*\) /, "", line)
            split(line, f, " ")
            if (pid == pm)
                total += f[12] + f[13] + f[14] + f[15]
            else if (f[2] == pm)
                total += f[12] + f[13]
        }
        END { print total + 0 }
    '
}

# Print field FIELD (e.g. VmHWM, VmRSS) of /proc/PID/status in KiB, or 0.
rp_bench_status_kib() {
    awk -v k="$2:" '$1 == k { print $2; found = 1 } END { if (!found) print 0 }' \
        "/proc/$1/status" 2>/dev/null || echo 0
}

# Clock ticks to microseconds.
rp_bench_ticks_to_us() {
    echo $(($1 * 1000000 / RP_BENCH_CLK_TCK))
}

# Wall clock in seconds with nanoseconds, as a decimal string.
rp_bench_now() {
    date +%s.%N
}

# Median of the numbers given as arguments ("-" entries are skipped; prints
# "-" when none is left).  Even counts take the mean of the middle two.
rp_bench_median() {
    printf '%s\n' "$@" | awk '$1 != "-" && $1 != "" { print }' | sort -g |
        awk '{ v[NR] = $1 } END {
            if (NR == 0) { print "-"; exit }
            if (NR % 2) print v[(NR + 1) / 2]
            else print (v[NR / 2] + v[NR / 2 + 1]) / 2
        }'
}

# Evaluate an awk arithmetic expression and print it with DIGITS decimals:
#   rp_bench_calc 1 '20000 / 7.3'
rp_bench_calc() {
    awk "BEGIN { printf \"%.$1f\", ($2) }"
}
