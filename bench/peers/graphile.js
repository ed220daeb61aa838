// graphile.js: graphile-worker, the Postgres peer of bench/queue.
//
//   node graphile.js migrate --pg URL
//   node graphile.js work --pg URL --concurrency C [--local-queue L]
//                         [--batch-delay D] [--poll-ms P]
//                         [--plans custom|default|unprepared]
//
// `migrate` installs (or upgrades) the graphile_worker schema.  `work` runs
// ONE worker process with a task "noop" that does nothing, set up the way
// graphile-worker's performance page recommends for many small jobs:
// concurrentJobs = C, a pool of C + 1 connections, a local queue of L jobs
// fetched (and locked) in one query (default max(500, C + 1); 0 turns it
// off), job completions batched (completeJobBatchDelay = failJobBatchDelay
// = D ms, default 0; -1 turns batching off), NO_LOG_SUCCESS set by
// bench/queue and a logger that drops everything below "warning".
//
// --plans: graphile-worker runs its queries as prepared statements.  A
// worker that waits on an empty table runs its "get jobs" query a few times
// (start-up, polls), after which Postgres caches a generic plan costed for
// an empty table; when 100,000 jobs then arrive that plan takes hundreds of
// ms per call (about 1,000 jobs/s instead of tens of thousands).  So by
// default ("custom") the worker's connections set plan_cache_mode =
// force_custom_plan, which plans every execution for the table as it is
// now; "default" leaves Postgres' default, "unprepared" turns prepared
// statements off (graphile-worker's preparedStatements: false).  It
// prints "ready" once its pool LISTENs for new jobs, and on SIGTERM stops
// gracefully (every completion written) and exits 0.
//
// Jobs are added by bench/queue with graphile_worker.add_jobs() in one SQL
// statement (bench/sql/queue_graphile_enqueue.sql), the bulk form the
// graphile-worker documentation recommends.
"use strict";

const { run, runMigrations, Logger } = require("graphile-worker");
const { parseArgs, need, positiveInt } = require("./common");

const quietLogger = new Logger(() => (level, message) => {
  if (level === "error" || level === "warning") console.error(`graphile-worker ${level}: ${message}`);
});

async function migrate(args) {
  await runMigrations({ connectionString: need(args, "pg"), logger: quietLogger });
}

async function work(args) {
  const concurrency = positiveInt(args, "concurrency", 24);
  const localQueue = positiveInt(args, "local-queue", Math.max(500, concurrency + 1));
  const batchDelay = args["batch-delay"] === undefined ? 0 : Number(args["batch-delay"]);
  const pollInterval = positiveInt(args, "poll-ms", 100);
  const plans = args.plans === undefined ? "custom" : args.plans;
  if (!["custom", "default", "unprepared"].includes(plans)) {
    console.error("--plans is custom, default or unprepared");
    process.exit(2);
  }
  if (plans === "custom") {
    // node-postgres sends PGOPTIONS as the connection's startup options.
    process.env.PGOPTIONS = `${process.env.PGOPTIONS || ""} -c plan_cache_mode=force_custom_plan`.trim();
  }
  const workerPreset = {
    concurrentJobs: concurrency,
    maxPoolSize: concurrency + 1,
    pollInterval,
    completeJobBatchDelay: batchDelay,
    failJobBatchDelay: batchDelay,
    preparedStatements: plans !== "unprepared",
  };
  if (localQueue > 0) workerPreset.localQueue = { size: localQueue };

  const { EventEmitter } = require("events");
  const events = new EventEmitter();
  let readySaid = false;
  events.on("pool:listen:success", () => {
    if (!readySaid) {
      readySaid = true;
      process.stdout.write("ready\n");
    }
  });
  const runner = await run({
    connectionString: need(args, "pg"),
    concurrency,
    maxPoolSize: concurrency + 1,
    pollInterval,
    noHandleSignals: true,
    logger: quietLogger,
    events,
    taskList: { noop: async () => {} },
    preset: { worker: workerPreset },
  });
  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    try {
      await runner.stop();
      process.exit(0);
    } catch (e) {
      console.error(`graphile-worker stop: ${e.message}`);
      process.exit(1);
    }
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
  await runner.promise;
}

const args = parseArgs(process.argv.slice(3));
const cmd = process.argv[2];
const fn = { migrate, work }[cmd];
if (!fn) {
  console.error("usage: node graphile.js migrate|work --pg URL [--concurrency C] [--local-queue L] [--batch-delay D]");
  process.exit(2);
}
fn(args).catch((e) => {
  console.error(`graphile.js ${cmd}: ${e.stack || e}`);
  process.exit(1);
});
