// watch.js: the drain clock of bench/queue.
//
//   node watch.js --pg URL --sql "select exists (select 1 from T)"
//   node watch.js --redis URL --xlen STREAM
//   node watch.js --redis URL --bullmq QUEUE
//   common options: [--interval-ms 20] [--timeout-s 600]
//
// Polls "is anything left?" every interval: a SQL query whose first column
// is true/non-zero while jobs remain, the length of a Redis stream (ragpool
// XDELs an entry once acknowledged), or a BullMQ queue's waiting, active,
// prioritized, delayed and paused counts.  It prints "ready" once connected
// and waits, without polling, for SIGUSR2: bench/queue sends it when the
// bulk enqueue has returned (a probe during the enqueue would scan the
// uncommitted rows over and over).  Then it prints "armed <unix seconds>",
// polls, and when nothing is left prints "drained <unix seconds>" (wall
// clock, sub-millisecond) and exits 0.  Exit 1 on a timeout or an error.
// One connection, one cheap query per interval, so the clock costs the
// servers little; every system is watched the same way.
"use strict";

const { parseArgs, redisOptions, positiveInt, nowS } = require("./common");

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function makeProbe(args) {
  if (args.pg) {
    const { Client } = require("pg");
    const client = new Client({ connectionString: args.pg, application_name: "bench-queue-watch" });
    await client.connect();
    const sql = args.sql;
    return {
      remaining: async () => {
        const r = await client.query({ text: sql, rowMode: "array" });
        const v = r.rows[0][0];
        return v === true ? 1 : v === false || v === null ? 0 : Number(v);
      },
      close: () => client.end(),
    };
  }
  if (args.redis && args.xlen) {
    const Redis = require("ioredis");
    const r = new Redis(redisOptions(args.redis));
    await r.ping();
    return { remaining: () => r.xlen(args.xlen), close: () => r.quit() };
  }
  if (args.redis && args.bullmq) {
    const { Queue } = require("bullmq");
    const q = new Queue(args.bullmq, { connection: redisOptions(args.redis) });
    await q.waitUntilReady();
    return {
      remaining: async () => {
        const c = await q.getJobCounts("wait", "active", "prioritized", "delayed", "paused");
        return c.wait + c.active + c.prioritized + c.delayed + c.paused;
      },
      close: () => q.close(),
    };
  }
  throw new Error("give --pg URL --sql Q, --redis URL --xlen STREAM or --redis URL --bullmq QUEUE");
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const interval = positiveInt(args, "interval-ms", 20);
  const deadline = Date.now() + 1000 * positiveInt(args, "timeout-s", 600);
  const probe = await makeProbe(args);
  // (SIGUSR1 would start Node's inspector.)
  const go = new Promise((resolve) => process.once("SIGUSR2", resolve));
  process.stdout.write("ready\n");
  await go;
  process.stdout.write(`armed ${nowS()}\n`);
  for (;;) {
    const n = await probe.remaining();
    if (n === 0) {
      process.stdout.write(`drained ${nowS()}\n`);
      break;
    }
    if (Date.now() > deadline) {
      process.stdout.write(`timeout ${nowS()} remaining ${n}\n`);
      await probe.close();
      process.exit(1);
    }
    await sleep(interval);
  }
  await probe.close();
  process.exit(0);
}

main().catch((e) => {
  console.error(`watch.js: ${e.stack || e}`);
  process.exit(1);
});
