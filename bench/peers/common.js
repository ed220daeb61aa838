// common.js: helpers the peer scripts of bench/queue share: argument
// parsing, Redis URL parsing and the wall clock.
"use strict";

// Parse "--name value" pairs (and bare "--flag") after the subcommand into
// an object; numbers stay strings, callers convert.
function parseArgs(argv) {
  const out = { _: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a.startsWith("--")) {
      const key = a.slice(2);
      if (i + 1 < argv.length && !argv[i + 1].startsWith("--")) out[key] = argv[++i];
      else out[key] = true;
    } else {
      out._.push(a);
    }
  }
  return out;
}

// redis://[[user]:password@]host[:port][/db] -> ioredis options.
function redisOptions(url) {
  const u = new URL(url);
  if (u.protocol !== "redis:") throw new Error(`not a redis:// URL: ${url}`);
  const o = {
    host: u.hostname || "127.0.0.1",
    port: u.port ? Number(u.port) : 6379,
    db: u.pathname && u.pathname.length > 1 ? Number(u.pathname.slice(1)) : 0,
    // BullMQ requires this for the connections its workers block on.
    maxRetriesPerRequest: null,
  };
  if (u.password) o.password = decodeURIComponent(u.password);
  if (u.username) o.username = decodeURIComponent(u.username);
  return o;
}

function need(args, name) {
  const v = args[name];
  if (v === undefined || v === true) {
    console.error(`missing --${name}`);
    process.exit(2);
  }
  return v;
}

function positiveInt(args, name, dflt) {
  const v = args[name] === undefined ? dflt : Number(args[name]);
  if (!Number.isInteger(v) || v < 0) {
    console.error(`--${name} needs a whole number`);
    process.exit(2);
  }
  return v;
}

// Wall clock in Unix seconds with sub-millisecond digits (comparable with
// `date +%s.%N` in bench/queue).
const { performance } = require("perf_hooks");
function nowS() {
  return ((performance.timeOrigin + performance.now()) / 1000).toFixed(4);
}

module.exports = { parseArgs, redisOptions, need, positiveInt, nowS };
