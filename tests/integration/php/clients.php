<?php
// phpredis (Debian's php-redis) against the proxy, driven by
// tests/integration/test_php_ruby_clients.py; tests/integration/ruby/clients.rb runs the same
// scenarios with redis-rb and prints the same results.
//
//   php clients.php <scenario> '<json args>'
//
// Prints one JSON object (the results) on stdout and exits 0; an error prints its message on
// stderr and exits 1. With args.gate, a scenario first settles its reads on the replicas
// (repeats one read until a replica's INFO commandstats counted it), prints {"ready":true}
// and waits for a line on stdin before the reads the Python side counts or the fault it
// injects (as tests/integration/node/clients.js does).

const HOST = '127.0.0.1';

$scenario = $argv[1] ?? '';
$args = json_decode($argv[2] ?? '{}', true);

function connect(int $port, int $db = 0): Redis
{
    $r = new Redis();
    // A broken proxy must show as an error, not as a hang.
    if (!$r->connect(HOST, $port, 10.0, null, 0, 10.0)) {
        throw new RuntimeException("connect to $port failed");
    }
    $r->setOption(Redis::OPT_READ_TIMEOUT, 10.0);
    if ($db !== 0 && !$r->select($db)) {
        throw new RuntimeException("SELECT $db failed: " . $r->getLastError());
    }
    return $r;
}

function get_calls(array $servers): array
{
    $out = [];
    foreach ($servers as $s) {
        $stats = $s->info('commandstats');
        $line = $stats['cmdstat_get'] ?? '';
        $out[] = preg_match('/calls=(\d+)/', $line, $m) ? (int)$m[1] : 0;
    }
    return $out;
}

// Settles (see the top), says ready, and waits for the go-ahead.
function gate(array $args, callable $read): void
{
    if (empty($args['gate'])) {
        return;
    }
    $replicas = array_map(fn($p) => connect($p), $args['replicas']);
    $t0 = microtime(true);
    for (;;) {
        $before = get_calls($replicas);
        $read();
        $after = get_calls($replicas);
        $moved = false;
        foreach ($after as $i => $v) {
            $moved = $moved || $v > $before[$i];
        }
        if ($moved) {
            break;
        }
        if ((microtime(true) - $t0) * 1000 > $args['settle_ms']) {
            throw new RuntimeException('no read reached a replica');
        }
        usleep(20000);
    }
    foreach ($replicas as $r) {
        $r->close();
    }
    fwrite(STDOUT, json_encode(['ready' => true]) . "\n");
    fflush(STDOUT);
    if (fgets(STDIN) === false) {
        throw new RuntimeException('no go-ahead on stdin');
    }
}

// The answer of a command that must not fail: its error otherwise.
function ok($v, Redis $r, string $what)
{
    if ($v === false && $r->getLastError() !== null) {
        throw new RuntimeException("$what: " . $r->getLastError());
    }
    return $v;
}

$scenarios = [
    // Reads only (the client never writes): they may all go to the replicas.
    'read' => function (array $a): array {
        $c = connect($a['proxy'], $a['db']);
        gate($a, fn() => ok($c->get($a['str']), $c, 'GET'));
        $out = ['get' => [], 'hgetall' => []];
        for ($i = 0; $i < $a['n']; $i++) {
            $out['get'][] = ok($c->get($a['str']), $c, 'GET');
            $out['hgetall'][] = ok($c->hGetAll($a['hash']), $c, 'HGETALL');
        }
        $out['zscore'] = $c->zScore($a['zset'], $a['member']);
        $out['smembers'] = $c->sMembers($a['set']);
        $out['missing'] = $c->get($a['missing']);
        $out['mget'] = $c->mGet([$a['str'], $a['missing'], $a['str']]);
        $c->close();
        return $out;
    },

    // Writes and their read-backs, a pipeline, a transaction, WATCH, a script, a 3 MB value,
    // SCAN, BLPOP, an error.
    'write' => function (array $a): array {
        $c = connect($a['proxy'], $a['db']);
        $p = $a['prefix'];
        $out = [];
        $out['set'] = $c->set("$p:s", 'v-php');
        $out['get'] = $c->get("$p:s");
        $out['incr'] = [$c->incr("$p:n"), $c->incrBy("$p:n", 10)];
        $out['hset'] = $c->hMSet("$p:h", ['a' => '1', 'b' => '2']);
        $out['hgetall'] = $c->hGetAll("$p:h");
        $pipe = $c->multi(Redis::PIPELINE);
        for ($i = 0; $i < 200; $i++) {
            $pipe->set("$p:m$i", "m$i");
        }
        for ($i = 0; $i < 200; $i++) {
            $pipe->get("$p:m$i");
        }
        $res = $pipe->exec();
        $out['pipeline_sets'] = count(array_filter(array_slice($res, 0, 200), fn($x) => $x === true));
        $out['many'] = array_slice($res, 200);
        $out['multi'] = $c->multi()->set("$p:t", 'in-tx')->incr("$p:n")->get("$p:t")->exec();
        // WATCH: a change by another client (through the proxy too) aborts the transaction.
        $other = connect($a['proxy'], $a['db']);
        $c->watch("$p:w");
        $other->set("$p:w", 'changed');
        $out['watch_aborted'] = $c->multi()->set("$p:w", 'mine')->exec();
        $out['watch_value'] = $c->get("$p:w");
        $c->watch("$p:w");
        $out['watch_ok'] = $c->multi()->set("$p:w", 'mine')->exec();
        $other->close();
        $out['eval'] = $c->eval("redis.call('SET', KEYS[1], ARGV[1]); return redis.call('GET', KEYS[1])",
                                ["$p:e", 'scripted'], 1);
        $big = str_repeat('0123456789abcdef', 3 * 65536);  // 3 MB
        $out['big_set'] = $c->set("$p:big", $big);
        $back = $c->get("$p:big");
        $out['big'] = [strlen($back), md5($back) === md5($big)];
        $keys = [];
        $it = null;
        $c->setOption(Redis::OPT_SCAN, Redis::SCAN_RETRY);
        while (($batch = $c->scan($it, "$p:m1*", 50)) !== false) {
            foreach ($batch as $k) {
                $keys[] = $k;
            }
        }
        sort($keys);
        $out['scan'] = $keys;
        $c->rPush("$p:l", 'x');
        $out['blpop'] = $c->blPop(["$p:l"], 1);
        $out['blpop_timeout'] = $c->blPop(["$p:l"], 1);
        $out['error'] = null;
        try {
            $out['error_reply'] = $c->rawCommand('NOSUCHCOMMAND', 'x');
        } catch (RedisException $e) {
            $out['error'] = $e->getMessage();
        }
        $out['error_last'] = $c->getLastError();
        $c->clearLastError();
        $out['ping_after_error'] = $c->ping();
        $out['wrongtype'] = $c->lPush("$p:s", 'x');
        $out['wrongtype_error'] = $c->getLastError();
        $c->close();
        return $out;
    },

    // Subscribe through the proxy; the Python side publishes on the primary, then "stop".
    // phpredis 5 cannot leave its subscribe loop from the callback (it only returns on a
    // read error), so, as PHP workers do, the loop ends with its read timeout once the
    // messages stop, and the client reads on a new connection.
    'pubsub' => function (array $a): array {
        $c = connect($a['proxy'], $a['db']);
        $got = [];
        $c->setOption(Redis::OPT_READ_TIMEOUT, 2.0);
        $ended = null;
        try {
            $c->subscribe([$a['channel']], function ($r, $chan, $msg) use (&$got) {
                $got[] = [$chan, $msg];
            });
        } catch (RedisException $e) {
            $ended = $e->getMessage();
        }
        $c->close();
        if (end($got) !== [$a['channel'], 'stop']) {
            throw new RuntimeException("subscribe loop ended before 'stop': $ended");
        }
        array_pop($got);
        $c = connect($a['proxy'], $a['db']);
        gate($a, fn() => ok($c->get($a['str']), $c, 'GET'));
        $after = [];
        for ($i = 0; $i < $a['reads_after']; $i++) {
            $after[] = ok($c->get($a['str']), $c, 'GET');
        }
        $c->close();
        return ['got' => $got, 'after' => $after];
    },

    // Reads that must stay right while the Python side kills a replica after the gate: every
    // answer is checked, errors are counted (not thrown).
    'failover' => function (array $a): array {
        $c = connect($a['proxy'], $a['db']);
        gate($a, fn() => ok($c->get($a['str']), $c, 'GET'));
        $out = ['reads' => 0, 'wrong' => [], 'errors' => []];
        $deadline = microtime(true) + $a['seconds'];
        while (microtime(true) < $deadline) {
            try {
                $v = $c->get($a['str']);
                $out['reads']++;
                if ($v !== $a['value']) {
                    $out['wrong'][] = $v;
                }
            } catch (RedisException $e) {
                $out['errors'][] = $e->getMessage();
                $c = connect($a['proxy'], $a['db']);
            }
        }
        $c->close();
        return $out;
    },
];

try {
    if (!isset($scenarios[$scenario])) {
        throw new RuntimeException("unknown scenario $scenario");
    }
    $out = $scenarios[$scenario]($args);
    fwrite(STDOUT, json_encode($out) . "\n");
    exit(0);
} catch (Throwable $e) {
    fwrite(STDERR, "scenario $scenario failed: $e\n");
    exit(1);
}
