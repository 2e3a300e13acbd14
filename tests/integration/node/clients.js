// Real Node.js Redis clients against the proxy, driven by tests/integration/test_clients.py:
// node-redis (v5) speaking RESP3 and ioredis speaking RESP2.
//
//   node clients.js <scenario> '<json args>'
//
// Prints one JSON object (the results) on stdout and exits 0; any error prints its message
// on stderr and exits 1; a scenario still running after args.deadline_ms exits 2. The
// Python side checks the results and where the commands ran.
//
// With args.gate, a read scenario first settles: it repeats one read until a replica served
// it (asking the servers' INFO commandstats on direct connections to args.replicas): the
// connection's handshake is over, including the read-your-writes window that commands the
// client libraries send on connect can open. Then it prints {"ready": true} and waits for a
// line on stdin before the reads the Python side counts.
'use strict';

const { createClient } = require('redis');
const Redis = require('ioredis');

const [, , scenario, rawArgs] = process.argv;
const args = JSON.parse(rawArgs || '{}');
const HOST = '127.0.0.1';

const deadline = setTimeout(() => {
  process.stderr.write(`scenario ${scenario}: still running after ${args.deadline_ms} ms\n`);
  process.exit(2);
}, args.deadline_ms || 30000);

function url(port, db) {
  return `redis://${HOST}:${port}` + (db ? `/${db}` : '');
}

async function nodeRedis(port, db, resp) {
  const c = createClient({
    url: url(port, db),
    RESP: resp,
    // Fail instead of retrying for ever: a broken proxy must show as an error.
    socket: { reconnectStrategy: false, connectTimeout: 10000 },
  });
  c.on('error', (err) => { process.stderr.write(`node-redis error: ${err}\n`); });
  await c.connect();
  return c;
}

async function ioredis(port, db) {
  const c = new Redis({
    host: HOST, port, db, lazyConnect: true, maxRetriesPerRequest: 0,
    retryStrategy: () => null, connectTimeout: 10000,
  });
  c.on('error', (err) => { process.stderr.write(`ioredis error: ${err}\n`); });
  await c.connect();
  return c;
}

function waitFor(pred, ms, what) {
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const tick = () => {
      if (pred()) return resolve();
      if (Date.now() - t0 > ms) return reject(new Error(`timed out waiting for ${what}`));
      setTimeout(tick, 5);
    };
    tick();
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function getCalls(clients) {
  const out = [];
  for (const c of clients) {
    const m = /cmdstat_get:calls=(\d+)/.exec(await c.info('commandstats'));
    out.push(m ? Number(m[1]) : 0);
  }
  return out;
}

// Settles (see the top), says ready, and waits for the go-ahead.
async function gate(read) {
  if (!args.gate) return;
  const replicas = [];
  for (const port of args.replicas) replicas.push(await nodeRedis(port, 0, 2));
  const t0 = Date.now();
  for (;;) {
    const before = await getCalls(replicas);
    await read();
    const after = await getCalls(replicas);
    if (after.some((x, i) => x > before[i])) break;
    if (Date.now() - t0 > args.settle_ms) throw new Error('no read reached a replica');
    await sleep(20);
  }
  for (const r of replicas) await r.quit();
  const go = new Promise((resolve) => {
    let buf = '';
    process.stdin.on('data', (d) => {
      buf += d;
      if (buf.includes('\n')) resolve();
    });
  });
  process.stdout.write(JSON.stringify({ ready: true }) + '\n');
  await go;
}

// Raw RESP3 replies as node-redis decodes them without command transforms: a map comes
// back as an object, a double as a number, a null as null (RESP2: array, string, null).
function describe(v) {
  if (v === null) return { type: 'null' };
  if (Array.isArray(v)) return { type: 'array', value: v.map(String) };
  if (typeof v === 'object') {
    const o = {};
    for (const [k, x] of Object.entries(v)) o[k] = String(x);
    return { type: 'object', value: o };
  }
  return { type: typeof v, value: String(v) };
}

const scenarios = {
  // Reads only (the client never writes): they may all go to replicas.
  async 'node-redis-read'() {
    const c = await nodeRedis(args.proxy, args.db, 3);
    await gate(() => c.get(args.str));
    const out = { get: [], hGetAll: [], raw: {} };
    for (let i = 0; i < args.n; i++) {
      out.get.push(await c.get(args.str));
      out.hGetAll.push({ ...(await c.hGetAll(args.hash)) });
    }
    out.raw.hgetall = describe(await c.sendCommand(['HGETALL', args.hash]));
    out.raw.zscore = describe(await c.sendCommand(['ZSCORE', args.zset, args.member]));
    out.raw.missing = describe(await c.sendCommand(['GET', args.missing]));
    out.raw.smembers = describe(await c.sendCommand(['SMEMBERS', args.set]));
    await c.quit();
    return out;
  },

  async 'ioredis-read'() {
    const c = await ioredis(args.proxy, args.db);
    await gate(() => c.get(args.str));
    const out = { get: [], hgetall: [] };
    for (let i = 0; i < args.n; i++) {
      out.get.push(await c.get(args.str));
      out.hgetall.push(await c.hgetall(args.hash));
    }
    out.zscore = await c.zscore(args.zset, args.member);
    out.missing = await c.get(args.missing);
    await c.quit();
    return out;
  },

  // Writes, reads of them, a pipeline and many concurrent (auto-pipelined) commands.
  async 'node-redis-write'() {
    const c = await nodeRedis(args.proxy, args.db, 3);
    const p = args.prefix;
    const out = {};
    out.set = await c.set(`${p}:s`, 'v-node');
    out.get = await c.get(`${p}:s`);
    out.hSet = await c.hSet(`${p}:h`, { a: '1', b: '2', c: '3' });
    out.hGetAll = { ...(await c.hGetAll(`${p}:h`)) };
    out.pipeline = await c.multi()
      .set(`${p}:p1`, 'x')
      .incr(`${p}:n`)
      .incr(`${p}:n`)
      .get(`${p}:p1`)
      .hGetAll(`${p}:h`)
      .execAsPipeline();
    out.pipeline = out.pipeline.map((x) => (x && typeof x === 'object' ? { ...x } : x));
    const many = [];
    for (let i = 0; i < 200; i++) many.push(c.set(`${p}:m${i}`, `m${i}`));
    await Promise.all(many);
    const gets = [];
    for (let i = 0; i < 200; i++) gets.push(c.get(`${p}:m${i}`));
    out.many = await Promise.all(gets);
    out.zAdd = await c.zAdd(`${p}:z`, { score: 2.5, value: 'm' });
    out.zScore = await c.zScore(`${p}:z`, 'm');
    await c.quit();
    return out;
  },

  async 'ioredis-write'() {
    const c = await ioredis(args.proxy, args.db);
    const p = args.prefix;
    const out = {};
    out.set = await c.set(`${p}:s`, 'v-io');
    out.get = await c.get(`${p}:s`);
    out.hset = await c.hset(`${p}:h`, { a: '1', b: '2', c: '3' });
    out.hgetall = await c.hgetall(`${p}:h`);
    out.pipeline = await c.pipeline()
      .set(`${p}:p1`, 'y')
      .incr(`${p}:n`)
      .incr(`${p}:n`)
      .get(`${p}:p1`)
      .hgetall(`${p}:h`)
      .exec();
    out.pipeline = out.pipeline.map(([err, v]) => (err ? `ERR ${err.message}` : v));
    const many = [];
    for (let i = 0; i < 200; i++) many.push(c.set(`${p}:m${i}`, `m${i}`));
    await Promise.all(many);
    const gets = [];
    for (let i = 0; i < 200; i++) gets.push(c.get(`${p}:m${i}`));
    out.many = await Promise.all(gets);
    await c.quit();
    return out;
  },

  // Subscribe through the proxy, messages published on a direct connection to the primary,
  // unsubscribe, then ordinary commands on the same client again.
  async 'node-redis-pubsub'() {
    const sub = await nodeRedis(args.proxy, args.db, 3);
    const pub = await nodeRedis(args.primary, 0, 2);
    const got = [];
    const pgot = [];
    await sub.subscribe(args.channel, (msg, ch) => got.push([ch, msg]));
    await sub.pSubscribe(args.pattern, (msg, ch) => pgot.push([ch, msg]));
    const receivers = [];
    for (let i = 0; i < args.n; i++) receivers.push(await pub.publish(args.channel, `msg-${i}`));
    await waitFor(() => got.length >= args.n && pgot.length >= args.n, 20000, 'messages');
    await sub.unsubscribe(args.channel);
    await sub.pUnsubscribe(args.pattern);
    const out = { got, pgot, receivers };
    await gate(() => sub.get(args.str));
    // No subscription left: the same client runs ordinary commands again.
    out.after = [];
    for (let i = 0; i < args.reads_after; i++) out.after.push(await sub.get(args.str));
    out.afterRawZscore = describe(await sub.sendCommand(['ZSCORE', args.zset, args.member]));
    out.receiversAfter = await pub.publish(args.channel, 'late');
    await sub.quit();
    await pub.quit();
    return out;
  },

  async 'ioredis-pubsub'() {
    const sub = await ioredis(args.proxy, args.db);
    const pub = await ioredis(args.primary, 0);
    const got = [];
    const pgot = [];
    sub.on('message', (ch, msg) => got.push([ch, msg]));
    sub.on('pmessage', (pat, ch, msg) => pgot.push([ch, msg]));
    await sub.subscribe(args.channel);
    await sub.psubscribe(args.pattern);
    const receivers = [];
    for (let i = 0; i < args.n; i++) receivers.push(await pub.publish(args.channel, `msg-${i}`));
    await waitFor(() => got.length >= args.n && pgot.length >= args.n, 20000, 'messages');
    await sub.unsubscribe(args.channel);
    await sub.punsubscribe(args.pattern);
    const out = { got, pgot, receivers };
    await gate(() => sub.get(args.str));
    out.after = [];
    for (let i = 0; i < args.reads_after; i++) out.after.push(await sub.get(args.str));
    out.receiversAfter = await pub.publish(args.channel, 'late');
    await sub.quit();
    await pub.quit();
    return out;
  },
};

(async () => {
  const fn = scenarios[scenario];
  if (!fn) throw new Error(`unknown scenario ${scenario}`);
  const out = await fn();
  process.stdout.write(JSON.stringify(out) + '\n');
  clearTimeout(deadline);
  process.exit(0);
})().catch((err) => {
  process.stderr.write(`scenario ${scenario} failed: ${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});
