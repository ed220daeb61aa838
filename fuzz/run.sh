#!/usr/bin/env bash
# fuzz/run.sh [SECONDS] [extra libFuzzer flags...]: build the dispatcher's
# libFuzzer target (clang, -fsanitize=fuzzer,address,undefined) and run it
# for a bounded time (default 60 s) on the committed seed corpus.
#
# New inputs go to a working corpus under the build directory, never into
# fuzz/corpus; a crash leaves its input in $OUT/artifacts/ and the script
# exits non-zero.  Not part of ./dev test.  Environment: RP_FUZZ_DIR (build
# directory, default build-fuzz), RP_FUZZ_JOBS (parallel workers, default 1).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SECONDS_TO_RUN=${1:-60}
shift || true
OUT=${RP_FUZZ_DIR:-$ROOT/build-fuzz}
JOBS=${RP_FUZZ_JOBS:-1}

if ! command -v clang >/dev/null || ! dpkg-query -W -f='${Status}' libclang-rt-14-dev 2>/dev/null | grep -q 'ok installed'; then
    echo "fuzz/run.sh: installing clang and libclang-rt-14-dev" >&2
    sudo=()
    [ "$(id -u)" = 0 ] || sudo=(sudo)
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        clang libclang-rt-14-dev libssl-dev libjansson-dev libhttp-parser-dev libmsgpack-dev >/dev/null
fi

mkdir -p "$OUT/corpus" "$OUT/artifacts"
clang -g -O1 -std=c11 -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined \
    -fno-sanitize-recover=undefined -fno-omit-frame-pointer \
    -I"$ROOT/common" -I"$ROOT/dispatcher" \
    "$ROOT/fuzz/fuzz_dispatcher.c" "$ROOT/dispatcher/request.c" "$ROOT/common/jwt.c" \
    "$ROOT/common/buf.c" "$ROOT/common/err.c" "$ROOT/common/job.c" \
    $(pkg-config --cflags --libs libcrypto jansson msgpack) -lhttp_parser -lm \
    -o "$OUT/fuzz_dispatcher"

echo "fuzz/run.sh: running $OUT/fuzz_dispatcher for ${SECONDS_TO_RUN}s" >&2
parallel=()
[ "$JOBS" -gt 1 ] && parallel=(-jobs="$JOBS" -workers="$JOBS")
exec "$OUT/fuzz_dispatcher" "$OUT/corpus" "$ROOT/fuzz/corpus" \
    -max_total_time="$SECONDS_TO_RUN" -max_len=70000 -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="$OUT/artifacts/" -print_final_stats=1 "${parallel[@]}" "$@"
