# The Redis list cache when Redis misbehaves: SCRIPT FLUSH (NOSCRIPT is
# handled), the link cut while Redis keeps its data (a bump that could
# not be sent is sent on reconnect), a write landing while a miss is
# being filled (the late page is never served), Redis hung by DEBUG SLEEP
# (one timeout, then bypass, then the cache again), Redis stopped and
# restarted (BYPASS at once, the cache back by itself), errors logged at
# most once a second.  Never a failed request.
#
# Instance A (the harness's, 1 worker) reaches Redis through a small TCP
# proxy that can hold or cut its traffic, with the worker's own copy off
# (invoices_cache_local off), so that every request tests the Redis path;
# instance B (2 workers) talks to Redis directly, with its copy on.

use strict;
use warnings;
use Test::More;
use Time::HiRes qw(time sleep);
use Invoices::Test;
use Invoices::Redis;

my $redis = start_redis();
my $proxy = start_proxy($redis->{port});
my $WHSEC = 'whsec_' . join '', map { ('A'..'Z', 'a'..'z', 0..9)[rand 62] } 1 .. 32;
my $TIMEOUT_MS = 200;

start_server(
    workers      => 1,
    before_start => sub { write_conf_file('whsec', "$WHSEC\n") },
    http_config  => cache_http_config($proxy->{port}, timeout => "${TIMEOUT_MS}ms",
                                      local => 'off'),
    server_config => webhook_location(),
);
my $A = server_port();
my $B = start_nginx(workers => 2,
                    http_config => cache_http_config($redis->{port},
                                                     timeout => "${TIMEOUT_MS}ms"),
                    server_config => webhook_location(),
                    copy_files => ['whsec']);

sub xc { return $_[0]->header('X-Cache') // '<none>' }
sub insert_event {
    my ($port, $total) = @_;
    my $inv = stripe_invoice(customer => 'cus_faults', status => 'open', total => $total);
    my $res = deliver_event($port, invoice_event('invoice.finalized', $inv), $WHSEC);
    my $result = ($res->json_or_undef // {})->{result} // '<' . $res->status . '>';
    return ($inv->{id}, $result);
}
sub list_status_ok {
    my ($res, $name) = @_;
    is($res->status, 200, "$name: 200") or diag $res->describe;
}

insert_invoice(stripe_invoice_id => "in_faultseed$_", status => 'paid', amount => $_,
               stripe_created_at => "2023-02-0${_}T00:00:00.000Z") for 1 .. 5;

#----------------------------------------------------------------------
# warm up, then SCRIPT FLUSH: NOSCRIPT is answered by EVAL

my $w = list('?limit=50');
is(xc($w), 'MISS', 'A: first list is a MISS') or diag $w->describe;
is(xc(list('?limit=50')), 'HIT', 'A: second is a HIT');
is(xc(list_on($B->{port}, '?limit=50')), 'HIT', 'B: the same page is a HIT');

is(rcmd($redis, 'SCRIPT', 'FLUSH'), 'OK', 'SCRIPT FLUSH');
my $mark = error_log_mark();
my $f = list('?limit=50');
list_status_ok($f, 'A after SCRIPT FLUSH');
is(xc($f), 'HIT', 'A after SCRIPT FLUSH: still a HIT (EVAL instead of EVALSHA)');
is($f->body, $w->body, '... the same bytes');
my $f2 = list('?limit=49');
is(xc($f2), 'MISS', 'A after SCRIPT FLUSH: a new page is a MISS');
is(xc(list('?limit=49')), 'HIT', '... and then a HIT (stored)');
is(rcmd($redis, 'SCRIPT', 'FLUSH'), 'OK', 'SCRIPT FLUSH again');
for my $i (1 .. 4) {    # both of B's workers meet NOSCRIPT
    my $r = list_on($B->{port}, '?limit=50');
    is($r->status . ' ' . xc($r), '200 HIT', "B after SCRIPT FLUSH, list #$i: 200 HIT");
}
unlike(error_log_since($mark), qr/NOSCRIPT/, 'NOSCRIPT is not logged as an error');

#----------------------------------------------------------------------
# the link is cut while Redis keeps its data: the bump of a write made
# meanwhile is sent when the worker reconnects, before its next lookup

my $cached = list('?limit=50');
is(xc($cached), 'HIT', 'A: page cached before the cut');
my $g = cache_gen($redis);
proxy_mode($proxy, 'down');
my $down = list('?limit=50');
list_status_ok($down, 'A, link cut');
is(xc($down), 'BYPASS', 'A, link cut: BYPASS');
cmp_ok($down->elapsed, '<', 1 * time_factor(), 'A, link cut: answered at once');
my ($lost_id, $lost_result) = insert_event($A, 1111);
is($lost_result, 'inserted', 'A, link cut: a webhook write still succeeds');
is(cache_gen($redis), $g, 'the bump could not reach Redis (invoices:gen unchanged)');
is(rcmd($redis, 'EXISTS', "invoices:list:$g:1:50"), 1,
   'the page cached before the write is still in Redis');
proxy_mode($proxy, 'pass');
my $first;
wait_until(sub { my $r = list('?limit=50'); $first = $r if xc($r) ne 'BYPASS'; $first }, 10);
ok($first, 'A reconnects by itself within 10s');
if ($first) {
    is(xc($first), 'MISS', 'A: the first cached answer after the reconnect is a MISS')
        or diag $first->describe;
    ok(listed_invoice($first, $lost_id), '... showing the write made while the link was cut');
}
is(cache_gen($redis), $g + 1, 'the lost bump was sent again (invoices:gen moved by one)');
ok(listed_invoice(list_on($B->{port}, '?limit=50'), $lost_id),
   'B sees the write too');

#----------------------------------------------------------------------
# the race: a miss reads generation G, asks PostgreSQL, and its page is
# stored only after a write has moved the generation to G+1.  The late
# page (without the write) must never be served.

$g = cache_gen($redis);
is(rcmd($redis, 'EXISTS', "invoices:list:$g:1:48"), 0, 'race: page limit=48 not cached yet');
proxy_mode($proxy, 'hold_set');
my $race_miss = list('?limit=48');
is(xc($race_miss), 'MISS', 'race: A misses and answers from PostgreSQL');
ok(wait_until(sub { proxy_held($proxy) > 0 }, 5), 'race: A\'s SET of the page is held back');
my ($race_id, $race_result) = insert_event($B->{port}, 2222);
is($race_result, 'inserted', 'race: a write through B meanwhile');
is(cache_gen($redis), $g + 1, 'race: the write moved the generation to G+1');
ok(!listed_invoice($race_miss, $race_id), 'race: (the held page was built before the write)');
proxy_mode($proxy, 'pass');
ok(wait_until(sub { rcmd($redis, 'EXISTS', "invoices:list:$g:1:48") }, 5),
   'race: the late page lands in Redis, under G (the generation read before the query)');
is(rcmd($redis, 'EXISTS', "invoices:list:" . ($g + 1) . ":1:48"), 0,
   'race: nothing was stored under G+1');
my $race_after = list('?limit=48');
is(xc($race_after), 'MISS', 'race: the next list on A misses');
ok(listed_invoice($race_after, $race_id), 'race: and shows the write');
for my $i (1 .. 3) {
    my $r = list_on($B->{port}, '?limit=48');
    ok(listed_invoice($r, $race_id), "race: B list #$i shows the write (" . xc($r) . ')');
}
ok(listed_invoice(list('?limit=48'), $race_id), 'race: A again shows the write');

#----------------------------------------------------------------------
# Redis hung (DEBUG SLEEP 2): one timeout, then bypass, then the cache

# errors are logged at most once a second: let the last one age
sleep 1.1;
is(xc(list('?limit=50')), 'MISS', 'A: page limit=50 (new generation)');
is(xc(list('?limit=50')), 'HIT', 'A: cached again before the hang');
$mark = error_log_mark();
my $t0 = time;
redis_background($redis, 'DEBUG', 'SLEEP', 2);
my $hung = list('?limit=50');
list_status_ok($hung, 'A, Redis hung');
is(xc($hung), 'BYPASS', 'A, Redis hung: BYPASS');
cmp_ok($hung->elapsed, '<', 1.5 * time_factor(), 'A, Redis hung: answered within 1.5s');
cmp_ok($hung->elapsed, '>=', $TIMEOUT_MS / 1000 * 0.9,
       'A, Redis hung: after waiting for invoices_redis_timeout');
my @fast = map { list('?limit=50') } 1 .. 3;
is_deeply([map { $_->status . ' ' . xc($_) } @fast], [('200 BYPASS') x 3],
          'A, Redis still hung: the next requests bypass it');
my ($slow) = sort { $b <=> $a } map { $_->elapsed } @fast;
cmp_ok($slow, '<', 0.15 * time_factor(),
       'A, Redis still hung: without waiting for the timeout again');
my @par = parallel_requests(map { [GET => '/admin/api/invoices?limit=50'] } 1 .. 4);
is(scalar(grep { $_->status == 200 } @par), 4, 'A, Redis hung: 4 concurrent lists all 200');
my @b_hung = map { list_on($B->{port}, '?limit=50') } 1 .. 4;
is(scalar(grep { $_->status == 200 } @b_hung), 4, 'B (2 workers), Redis hung: 4 lists all 200');
my ($b_slow) = sort { $b <=> $a } map { $_->elapsed } @b_hung;
cmp_ok($b_slow, '<', 1.5 * time_factor(), 'B, Redis hung: each within 1.5s');
cmp_ok(time - $t0, '<', 2, '(all of that while Redis slept)');
reap_background();
my $back;
wait_until(sub { my $r = list('?limit=50'); $back = $r if xc($r) eq 'HIT'; $back }, 5);
ok($back, 'A: HIT again once Redis answers');
like(error_log_since($mark), qr/\[error\].*invoices: redis .*timed out/,
     'the timeout is logged at [error]');

#----------------------------------------------------------------------
# a write while Redis is hung: the worker bypasses Redis, so its bump is
# not sent then; it must still reach Redis (or the cache must not serve
# the page cached before the write) once Redis answers again

is(xc(list('?limit=47')), 'MISS', 'A: page limit=47');
is(xc(list('?limit=47')), 'HIT', 'A: page limit=47 cached');
$g = cache_gen($redis);
redis_background($redis, 'DEBUG', 'SLEEP', 1.5);
is(xc(list('?limit=47')), 'BYPASS', 'A, Redis hung: BYPASS (the worker now bypasses Redis)');
my ($stall_id, $stall_result) = insert_event($A, 3333);
is($stall_result, 'inserted', 'A, Redis hung: a webhook write succeeds');
reap_background();
my $after_stall;
wait_until(sub { my $r = list('?limit=47'); $after_stall = $r if xc($r) ne 'BYPASS'; $after_stall }, 5);
ok($after_stall, 'A uses the cache again once Redis answers');
ok($after_stall && listed_invoice($after_stall, $stall_id),
   'A: the first cached answer after the hang shows the write made during it')
    or diag 'X-Cache: ' . ($after_stall ? xc($after_stall) : '-')
          . ", invoices:gen $g -> " . cache_gen($redis) . ' (the bump made while Redis was hung was never sent)';
cmp_ok(cache_gen($redis), '>', $g, 'the generation moved for the write made while Redis was hung');

#----------------------------------------------------------------------
# a reload while a write waits for its bump: the old worker must not quit
# before it has answered (its only other timers are cancelable)

SKIP: {
    skip 'signals to a master process (not in valgrind mode)', 4 if valgrind_mode();
    wait_until(sub { xc(list('?limit=45')) ne 'BYPASS' }, 5);
    proxy_mode($proxy, 'hold');
    my $inv = stripe_invoice(customer => 'cus_faults', status => 'open', total => 6666);
    my $body = JSON::PP->new->utf8->canonical->encode(invoice_event('invoice.finalized', $inv));
    my $h = start_request(POST => '/stripe/webhook',
        [['Content-Type', 'application/json'], ['Stripe-Signature', sign_event($body, $WHSEC)]],
        $body);
    # the job itself takes milliseconds; the bump then waits for Redis,
    # up to invoices_redis_timeout (200 ms)
    sleep 0.06;
    kill 'HUP', server_info()->{pid};
    my ($res) = finish_request($h);
    is(sql_value('SELECT count(*) FROM invoices WHERE stripe_invoice_id = '
                 . quote($inv->{id})), 1, 'reload: the write is stored');
    is($res->status, 200, 'reload while the write waits for Redis: answered 200')
        or diag $res->describe;
    is(($res->json_or_undef // {})->{result}, 'inserted', '... with its result');
    proxy_mode($proxy, 'pass');
}

#----------------------------------------------------------------------
# Redis unreachable without the connection closing (the proxy holds
# everything): after 5 s stalled the worker drops the link and opens a
# new one, instead of waiting on the kernel's retransmissions

wait_until(sub { xc(list('?limit=44')) ne 'BYPASS' }, 5);
$mark = error_log_mark();
proxy_mode($proxy, 'hold');
my @held;
my $t_held = time;
while (time - $t_held < 6) {
    push @held, list('?limit=44');
    sleep 0.2;
}
is(scalar(grep { $_->status == 200 } @held), scalar @held,
   'A, Redis unreachable for 6 s: ' . @held . ' lists, all 200');
like(error_log_since($mark), qr/\[error\].*invoices: redis .*no answer for 5 s: reconnecting/,
     'A gives the stalled link up after 5 s and reconnects');
proxy_mode($proxy, 'pass');
ok(wait_until(sub { xc(list('?limit=44')) eq 'HIT' }, 8), 'A: HIT again once Redis answers');

#----------------------------------------------------------------------
# B's own copies while Redis hangs: no message can come, so they must go
# out of use by themselves (a PING every 200 ms that times out after
# invoices_redis_timeout): a write through A during the hang shows on
# every B worker within about 0.4 s

my @b_cached = map { list_on($B->{port}, '?limit=46') } 1 .. 6;
is(scalar(grep { xc($_) =~ /^(?:HIT|MISS)$/ } @b_cached), 6, 'B: page limit=46 cached');
redis_background($redis, 'DEBUG', 'SLEEP', 2);
my $t_hang = time;
my ($hang_id, $hang_result) = insert_event($A, 5555);
is($hang_result, 'inserted', 'A, Redis hung: a webhook write succeeds');
my $t_written = time;
my $seen;
wait_until(sub {
    my @r = map { list_on($B->{port}, '?limit=46') } 1 .. 4;
    $seen = time if 4 == grep { $_->status == 200 && listed_invoice($_, $hang_id) } @r;
    $seen
}, 3);
ok($seen, 'B, Redis hung: every worker shows the write made through A');
cmp_ok(($seen // 99) - $t_written, '<', 1.0 * time_factor(),
       '... within a second of its answer (' . sprintf('%.3f', ($seen // 99) - $t_written) . ' s)');
my @b_later = map { list_on($B->{port}, '?limit=46') } 1 .. 4;
is(scalar(grep { listed_invoice($_, $hang_id) } @b_later), 4, '... and every list after that');
cmp_ok(time - $t_hang, '<', 2, '(all of that while Redis slept)');
reap_background();

#----------------------------------------------------------------------
# Redis stopped: BYPASS at once, writes work; restarted: the cache comes
# back by itself, on every worker

$mark = error_log_mark();
my $b_mark = length nginx_log($B);
stop_redis($redis);
my @stopped;
my $t_stop = time;
while (time - $t_stop < 2.5) {
    push @stopped, list('?limit=50');
    sleep 0.05;
}
is(scalar(grep { $_->status == 200 } @stopped), scalar @stopped,
   'A, Redis stopped: ' . @stopped . ' lists over 2.5s, all 200');
is(scalar(grep { xc($_) eq 'BYPASS' } @stopped), scalar @stopped, '... all BYPASS');
my ($worst) = sort { $b <=> $a } map { $_->elapsed } @stopped;
cmp_ok($worst, '<', 0.5 * time_factor(), '... each answered at once');
my @b_stopped = map { list_on($B->{port}, '?limit=50') } 1 .. 6;
is_deeply([map { $_->status . ' ' . xc($_) } @b_stopped], [('200 BYPASS') x 6],
          'B, Redis stopped: 6 lists all 200 BYPASS');
my $one = get_on($A, '/admin/api/invoices/in_faultseed1');
is($one->status, 200, 'A, Redis stopped: a single GET is 200');
my ($down_id, $down_result) = insert_event($A, 4444);
is($down_result, 'inserted', 'A, Redis stopped: a webhook write succeeds');
my @lines = grep { /invoices: redis/ && !/redis connected to/ } split /\n/, error_log_since($mark);
ok(@lines >= 1, 'A: the outage is logged') or diag error_log_since($mark);
ok(!grep({ !/\[error\]/ } @lines), '... at [error]') or diag join "\n", @lines;
cmp_ok(scalar @lines, '<=', 5,
       'A: at most about one line a second (' . @lines . ' lines in ~3s, 1 worker)')
    or diag join "\n", @lines;

restart_redis($redis);
my $back_a;
wait_until(sub { my $r = list('?limit=50'); $back_a = $r if xc($r) ne 'BYPASS'; $back_a }, 8);
ok($back_a, 'A: the cache is back by itself after the restart');
if ($back_a) {
    is(xc($back_a), 'MISS', 'A: the first cached answer is a MISS (Redis restarted empty)');
    ok(listed_invoice($back_a, $down_id), '... showing the write made while Redis was down');
}
is(xc(list('?limit=50')), 'HIT', 'A: then a HIT');
# B: both workers come back (each request lands on either)
my $b_hits = 0;
wait_until(sub {
    my $r = list_on($B->{port}, '?limit=50');
    return 0 unless $r->status == 200;
    $b_hits = xc($r) eq 'HIT' ? $b_hits + 1 : 0;
    return $b_hits >= 6;
}, 10);
cmp_ok($b_hits, '>=', 6, 'B: six HITs in a row after the restart (both workers back)');
my @b_lines = grep { /\[(?:alert|crit|emerg)\]/ } split /\n/, nginx_log($B);
ok(!@b_lines, 'B: no [alert], [crit] or [emerg]') or diag join "\n", @b_lines;
like(substr(nginx_log($B), $b_mark), qr/\[error\].*invoices: redis/, 'B: the outage is logged');

my ($okB, $stB) = stop_nginx($B);
ok($okB && !$stB, 'B quits gracefully, status 0');

done_testing();
