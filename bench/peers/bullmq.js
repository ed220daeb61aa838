// bullmq.js: BullMQ, the Redis peer of bench/queue.
//
//   node bullmq.js add    --redis URL --queue Q --count N
//   node bullmq.js work   --redis URL --queue Q --concurrency C
//   node bullmq.js counts --redis URL --queue Q
//   node bullmq.js obliterate --redis URL --queue Q
//
// `add` adds N jobs named "noop" with empty data in one Queue.addBulk call
// (BullMQ sends it as one MULTI/EXEC, so the whole batch becomes visible to
// a waiting worker at once) with removeOnComplete, so a finished job leaves
// nothing behind -- as ragpool deletes what it acknowledges -- and prints
// "<count> <start> <end>", the wall clock (Unix seconds) around addBulk.  `work` runs
// ONE Worker with a processor that does nothing at concurrency C (and
// removeOnComplete {count: 0}); it prints "ready" once connected, and on
// SIGTERM closes gracefully and exits 0.  `counts` prints the queue's job
// counts as JSON; `obliterate` deletes the queue.
"use strict";

const { Queue, Worker } = require("bullmq");
const { parseArgs, redisOptions, need, positiveInt, nowS } = require("./common");

async function add(args) {
  const n = positiveInt(args, "count", 0);
  const queue = new Queue(need(args, "queue"), { connection: redisOptions(need(args, "redis")) });
  await queue.waitUntilReady();
  const start = nowS();
  const jobs = new Array(n);
  for (let i = 0; i < n; i++) {
    jobs[i] = { name: "noop", data: {}, opts: { removeOnComplete: true } };
  }
  const added = await queue.addBulk(jobs);
  const end = nowS();
  await queue.close();
  process.stdout.write(`${added.length} ${start} ${end}\n`);
}

async function work(args) {
  const concurrency = positiveInt(args, "concurrency", 1);
  const worker = new Worker(need(args, "queue"), async () => {}, {
    connection: redisOptions(need(args, "redis")),
    concurrency,
    removeOnComplete: { count: 0 },
  });
  worker.on("error", (e) => console.error(`bullmq worker error: ${e.message}`));
  worker.on("failed", (job, e) => console.error(`bullmq job ${job && job.id} failed: ${e.message}`));
  await worker.waitUntilReady();
  process.stdout.write("ready\n");
  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    try {
      await worker.close();
      process.exit(0);
    } catch (e) {
      console.error(`bullmq close: ${e.message}`);
      process.exit(1);
    }
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

async function counts(args) {
  const queue = new Queue(need(args, "queue"), { connection: redisOptions(need(args, "redis")) });
  const c = await queue.getJobCounts();
  await queue.close();
  process.stdout.write(`${JSON.stringify(c)}\n`);
}

async function obliterate(args) {
  const queue = new Queue(need(args, "queue"), { connection: redisOptions(need(args, "redis")) });
  await queue.obliterate({ force: true });
  await queue.close();
}

const args = parseArgs(process.argv.slice(3));
const cmd = process.argv[2];
const fn = { add, work, counts, obliterate }[cmd];
if (!fn) {
  console.error("usage: node bullmq.js add|work|counts|obliterate --redis URL --queue Q [--count N] [--concurrency C]");
  process.exit(2);
}
fn(args).catch((e) => {
  console.error(`bullmq.js ${cmd}: ${e.stack || e}`);
  process.exit(1);
});
