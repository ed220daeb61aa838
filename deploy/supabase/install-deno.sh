#!/usr/bin/env bash
# install-deno.sh: Deno from the npm registry, and the Edge Functions' npm
# modules cached, in a directory outside the source tree.
#
#   deploy/supabase/install-deno.sh DIR
#
# Installs the npm package `deno` pinned by deploy/supabase/package.json
# (and package-lock.json) into DIR/npm with `npm install` -- skipped when that
# version is already there -- then fetches the npm modules of
# functions/ai-enqueue (postgres, ioredis, @msgpack/msgpack, as deno.lock
# pins them) into DIR/cache, the DENO_DIR to run the function with.  Prints
# the absolute path of the deno executable as its last line.  Used by
# tests/integration/test_edge_function.c and bench/dispatcher; by hand:
#
#   deno=$(deploy/supabase/install-deno.sh build/deno | tail -n 1)
#   DENO_DIR=build/deno/cache $deno run --allow-net --allow-env --allow-write \
#       deploy/supabase/functions/ai-enqueue/index.ts
#
# Exits 1 with the failing command's output on stderr when npm or Deno
# cannot do their part (no npm, the registry unreachable, ...).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[ $# -eq 1 ] || {
    echo "usage: install-deno.sh DIR" >&2
    exit 2
}
mkdir -p "$1"
DIR=$(cd "$1" && pwd)
NPM_DIR=$DIR/npm
export DENO_DIR=$DIR/cache

die() {
    echo "install-deno.sh: $*" >&2
    exit 1
}

want=$(sed -n 's/^ *"deno": *"\([^"]*\)".*/\1/p' "$HERE/package.json" | head -n 1)
[ -n "$want" ] || die "no deno version in $HERE/package.json"
have=$(sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' "$NPM_DIR/node_modules/deno/package.json" 2>/dev/null | head -n 1 || true)

if [ "$have" != "$want" ]; then
    command -v npm >/dev/null || die "npm is not installed (Debian package npm)"
    mkdir -p "$NPM_DIR"
    cp "$HERE/package.json" "$HERE/package-lock.json" "$NPM_DIR/"
    echo "install-deno.sh: npm install (deno $want) in $NPM_DIR" >&2
    # Not `npm ci`: the lock file holds only the platform packages of the
    # machine that wrote it, which `npm ci` takes for a mismatch elsewhere.
    if ! out=$(cd "$NPM_DIR" && npm install --no-audit --no-fund 2>&1); then
        printf '%s\n' "$out" >&2
        die "npm install failed"
    fi
fi

# The package's postinstall puts the real executable in place of its
# JavaScript launcher.  Where install scripts did not run, the platform's
# package (@deno/linux-x64-glibc, ...) holds it; the launcher (run by node,
# which does not pass signals on) is the last resort.
deno=$NPM_DIR/node_modules/deno/deno
if [ ! -x "$deno" ]; then
    for d in "$NPM_DIR"/node_modules/@deno/*/deno; do
        if [ -x "$d" ] && "$d" --version >/dev/null 2>&1; then
            deno=$d
            break
        fi
    done
fi
[ -x "$deno" ] || deno=$NPM_DIR/node_modules/.bin/deno
[ -x "$deno" ] || die "the npm package deno installed no executable in $NPM_DIR"
if ! ver=$("$deno" --version 2>&1); then
    printf '%s\n' "$ver" >&2
    die "$deno does not run"
fi

# Fetch the function's npm modules once (deno.lock checks their integrity);
# later runs find them in DENO_DIR and need no network.
if ! out=$(cd "$HERE/functions/ai-enqueue" && "$deno" install --frozen --entrypoint index.ts 2>&1); then
    printf '%s\n' "$out" >&2
    die "deno could not fetch the function's npm modules"
fi

echo "$deno"
