# redis-rb (Debian's ruby-redis) against the proxy, driven by
# tests/integration/test_php_ruby_clients.py; the same scenarios as
# tests/integration/php/clients.php, with the same results.
#
#   ruby clients.rb <scenario> '<json args>'
#
# Prints one JSON object (the results) on stdout and exits 0; an error prints its message on
# stderr and exits 1. With args["gate"], a scenario first settles its reads on the replicas
# (repeats one read until a replica's INFO commandstats counted it), prints {"ready":true}
# and waits for a line on stdin before the reads the Python side counts or the fault it
# injects.
require 'digest'
require 'json'
require 'redis'

HOST = '127.0.0.1'.freeze

def connect(port, db = 0)
  # No reconnection: a broken proxy must show as an error. (db: the client SELECTs on connect.)
  Redis.new(host: HOST, port: port, db: db, timeout: 10, reconnect_attempts: 0)
end

def get_calls(servers)
  servers.map { |s| s.info('commandstats').dig('get', 'calls').to_i }
end

# Settles (see the top), says ready, and waits for the go-ahead.
def gate(args)
  return unless args['gate']
  replicas = args['replicas'].map { |p| connect(p) }
  t0 = Time.now
  loop do
    before = get_calls(replicas)
    yield
    break if get_calls(replicas).zip(before).any? { |a, b| a > b }
    raise 'no read reached a replica' if (Time.now - t0) * 1000 > args['settle_ms']
    sleep 0.02
  end
  replicas.each(&:close)
  $stdout.puts({ ready: true }.to_json)
  $stdout.flush
  raise 'no go-ahead on stdin' if $stdin.gets.nil?
end

# The message of the error reply the block gets (nil when it gets none).
def error_of
  yield
  nil
rescue Redis::CommandError => e
  e.message
end

SCENARIOS = {
  # Reads only (the client never writes): they may all go to the replicas.
  'read' => lambda do |a|
    c = connect(a['proxy'], a['db'])
    gate(a) { c.get(a['str']) }
    out = { 'get' => [], 'hgetall' => [] }
    a['n'].times do
      out['get'] << c.get(a['str'])
      out['hgetall'] << c.hgetall(a['hash'])
    end
    out['zscore'] = c.zscore(a['zset'], a['member'])
    out['smembers'] = c.smembers(a['set'])
    out['missing'] = c.get(a['missing'])
    out['mget'] = c.mget(a['str'], a['missing'], a['str'])
    c.close
    out
  end,

  # Writes and their read-backs, a pipeline, a transaction, WATCH, a script, a 3 MB value,
  # SCAN, BLPOP, an error.
  'write' => lambda do |a|
    c = connect(a['proxy'], a['db'])
    p = a['prefix']
    out = {}
    out['set'] = c.set("#{p}:s", 'v-rb')
    out['get'] = c.get("#{p}:s")
    out['incr'] = [c.incr("#{p}:n"), c.incrby("#{p}:n", 10)]
    out['hset'] = c.hset("#{p}:h", 'a', '1', 'b', '2')
    out['hgetall'] = c.hgetall("#{p}:h")
    res = c.pipelined do |pipe|
      200.times { |i| pipe.set("#{p}:m#{i}", "m#{i}") }
      200.times { |i| pipe.get("#{p}:m#{i}") }
    end
    out['pipeline_sets'] = res[0, 200].count('OK')
    out['many'] = res[200, 200]
    out['multi'] = c.multi do |tx|
      tx.set("#{p}:t", 'in-tx')
      tx.incr("#{p}:n")
      tx.get("#{p}:t")
    end
    # WATCH: a change by another client (through the proxy too) aborts the transaction.
    other = connect(a['proxy'], a['db'])
    out['watch_aborted'] = c.watch("#{p}:w") do
      other.set("#{p}:w", 'changed')
      c.multi { |tx| tx.set("#{p}:w", 'mine') }
    end
    out['watch_value'] = c.get("#{p}:w")
    out['watch_ok'] = c.watch("#{p}:w") { c.multi { |tx| tx.set("#{p}:w", 'mine') } }
    other.close
    out['eval'] = c.eval("redis.call('SET', KEYS[1], ARGV[1]); return redis.call('GET', KEYS[1])",
                         keys: ["#{p}:e"], argv: ['scripted'])
    big = '0123456789abcdef' * (3 * 65_536) # 3 MB
    out['big_set'] = c.set("#{p}:big", big)
    back = c.get("#{p}:big")
    out['big'] = [back.bytesize, Digest::MD5.hexdigest(back) == Digest::MD5.hexdigest(big)]
    out['scan'] = c.scan_each(match: "#{p}:m1*", count: 50).to_a.sort
    c.rpush("#{p}:l", 'x')
    out['blpop'] = c.blpop("#{p}:l", timeout: 1)
    out['blpop_timeout'] = c.blpop("#{p}:l", timeout: 1)
    out['error'] = error_of { c.call('NOSUCHCOMMAND', 'x') }
    out['ping_after_error'] = c.ping
    out['wrongtype_error'] = error_of { c.lpush("#{p}:s", 'x') }
    c.close
    out
  end,

  # Subscribe through the proxy; the Python side publishes on the primary, then "stop";
  # unsubscribe, then ordinary reads on the same connection again.
  'pubsub' => lambda do |a|
    c = Redis.new(host: HOST, port: a['proxy'], db: a['db'], timeout: 10, reconnect_attempts: 0)
    got = []
    c.subscribe_with_timeout(60, a['channel']) do |on|
      on.message do |chan, msg|
        if msg == 'stop'
          c.unsubscribe(chan)
        else
          got << [chan, msg]
        end
      end
    end
    gate(a) { c.get(a['str']) }
    after = Array.new(a['reads_after']) { c.get(a['str']) }
    c.close
    { 'got' => got, 'after' => after }
  end,

  # Reads that must stay right while the Python side kills a replica after the gate: every
  # answer is checked, errors are counted (not raised).
  'failover' => lambda do |a|
    c = connect(a['proxy'], a['db'])
    gate(a) { c.get(a['str']) }
    out = { 'reads' => 0, 'wrong' => [], 'errors' => [] }
    deadline = Time.now + a['seconds']
    while Time.now < deadline
      begin
        v = c.get(a['str'])
        out['reads'] += 1
        out['wrong'] << v if v != a['value']
      rescue Redis::BaseError => e
        out['errors'] << "#{e.class}: #{e.message}"
        c = connect(a['proxy'], a['db'])
      end
    end
    c.close
    out
  end
}.freeze

begin
  scenario = ARGV[0]
  fn = SCENARIOS[scenario] or raise "unknown scenario #{scenario}"
  $stdout.puts fn.call(JSON.parse(ARGV[1] || '{}')).to_json
  exit 0
rescue StandardError => e
  warn "scenario #{scenario} failed: #{e.class}: #{e.message}\n#{e.backtrace.join("\n")}"
  exit 1
end
