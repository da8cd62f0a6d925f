# invoices_metrics (issue 7, item 6): the counters in Prometheus' text
# format.  Known numbers of requests of every kind move the counters by
# exactly those numbers (diff of two scrapes), summed over two workers;
# a local and a Redis hit are told apart; webhook results, Stripe calls
# and PostgreSQL and Redis errors are counted; the text parses as the
# exposition format and holds no secret; POST is a 405 JSON; a reload
# keeps the counters; nginx -t refuses an argument.

use strict;
use warnings;
use Test::More;
use JSON::PP ();
use IO::Socket::INET;
use Time::HiRes qw(time sleep);
use Invoices::Test;
use Invoices::Redis;

my $redis = start_redis();
my $WHSEC = 'whsec_' . join '', map { ('A'..'Z', 'a'..'z', 0..9)[rand 62] } 1 .. 32;
my $J = JSON::PP->new->utf8->canonical;

my $METRICS_LOCATION = "        location = /metrics {\n"
                     . "            invoices_metrics;\n"
                     . "        }\n";

start_server(
    workers         => 2,
    stripe          => 1,
    before_start    => sub { write_conf_file('whsec', "$WHSEC\n") },
    http_config     => cache_http_config($redis->{port}),
    server_config   => webhook_location() . $METRICS_LOCATION,
    location_config => '            add_header X-Pid $pid always;',
);
my $PORT = server_port();

#----------------------------------------------------------------------
# scraping and parsing

# scrape() -> { samples => { 'name{labels}' => value }, text => ... };
# every line is checked against the text exposition format 0.0.4
sub scrape {
    my $res = request(GET => '/metrics');
    is($res->status, 200, 'scrape: 200') or diag $res->describe;
    my (%samples, %help, %type, @bad);
    for my $line (split /\n/, $res->body) {
        if ($line =~ /^# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) \S.*$/) {
            $help{$1}++;
        } elsif ($line =~ /^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|summary)$/) {
            $type{$1} = $2;
        } elsif ($line =~ /^([a-zA-Z_:][a-zA-Z0-9_:]*)
                           (\{[a-zA-Z_][a-zA-Z0-9_]*="[^"\\\n]*"
                              (?:,[a-zA-Z_][a-zA-Z0-9_]*="[^"\\\n]*")*\})?
                           [ ](-?[0-9]+(?:\.[0-9]+)?)$/x)
        {
            my ($name, $labels, $value) = ($1, $2 // '', $3);
            my $family = $name;
            $family =~ s/_(?:sum|count)$// unless $type{$name};
            push @bad, "no HELP/TYPE before: $line"
                unless $help{$family} && $type{$family};
            push @bad, "sample twice: $line" if exists $samples{"$name$labels"};
            $samples{"$name$labels"} = $value;
        } else {
            push @bad, "not exposition format: $line";
        }
    }
    return { samples => \%samples, text => $res->body, bad => \@bad,
             res => $res, type => \%type };
}

sub value { my ($m, $key) = @_; return $m->{samples}{$key} // 0 }
sub delta { my ($a, $b, $key) = @_; return value($b, $key) - value($a, $key) }

# scrape_after($before, key => n, ...): a scrape once every key has grown
# by at least n since $before (or after 2 s).  Requests are counted in the
# log phase, which nginx may run only after the client has its answer (a
# lingering close after a request body), so a scrape at once can miss them;
# the checks on the scrape stay exact.
sub scrape_after {
    my ($before, %want) = @_;
    my $deadline = time + 2 * time_factor();
    while (1) {
        my $m = scrape();
        return $m if time > $deadline
                  || !grep { delta($before, $m, $_) < $want{$_} } keys %want;
        sleep 0.05;
    }
}

sub req_key {
    my ($endpoint, $status) = @_;
    return qq{invoices_requests_total{endpoint="$endpoint",status="$status"}};
}

# the sum of every invoices_requests_total sample
sub requests_sum {
    my ($m) = @_;
    my $n = 0;
    $n += $m->{samples}{$_} for grep { /^invoices_requests_total\{/ } keys %{ $m->{samples} };
    return $n;
}

#----------------------------------------------------------------------
# the format itself

my $m0 = scrape();
like($m0->{res}->header('Content-Type') // '', qr{^text/plain; version=0\.0\.4\b},
     'Content-Type: text/plain; version=0.0.4');
is_deeply($m0->{bad}, [], 'every line is HELP, TYPE or a sample with HELP and TYPE')
    or diag $m0->{text};
for my $name (qw(invoices_requests_total invoices_cache_total
                 invoices_stripe_calls_total invoices_stripe_call_seconds
                 invoices_webhook_events_total
                 invoices_thread_pool_queue_full_total invoices_jobs_in_flight
                 invoices_postgresql_errors_total invoices_redis_errors_total))
{
    ok($m0->{type}{$name}, "$name has a TYPE line");
}
is($m0->{type}{invoices_jobs_in_flight}, 'gauge', 'jobs in flight is a gauge');
for my $key ('invoices_stripe_call_seconds_sum', 'invoices_stripe_call_seconds_count',
             'invoices_thread_pool_queue_full_total', 'invoices_jobs_in_flight',
             'invoices_postgresql_errors_total', 'invoices_redis_errors_total',
             (map { qq{invoices_cache_total{result="$_"}} } qw(hit_local hit_redis miss bypass)),
             (map { qq{invoices_webhook_events_total{result="$_"}} }
                  qw(inserted updated unchanged duplicate deleted ignored rejected)),
             (map { qq{invoices_stripe_calls_total{outcome="$_"}} } qw(ok error)))
{
    ok(exists $m0->{samples}{$key}, "$key is there from the start");
}

#----------------------------------------------------------------------
# requests by endpoint and status, on separate connections, summed over
# both workers

my $A = linked_customer(payment_method => 'pm_card_visa');
my @seed = map {
    insert_invoice(team_id => $A->{team}{id}, stripe_customer_id => $A->{customer},
                   amount => 100 * $_, status => 'open',
                   stripe_created_at => sprintf('2023-02-%02dT10:00:00.000Z', $_))
} 1 .. 6;

my $before = scrape();
my (%pids, %got);

# lists until both workers have answered (at least 8)
my $lists = 0;
while ($lists < 8 || (keys %pids < 2 && $lists < 200)) {
    my $res = list('?limit=' . (1 + $lists % 50));
    $got{'list ' . $res->status}++;
    $pids{ $res->header('X-Pid') // '?' }++;
    $lists++;
}
for my $inv (@seed[0 .. 4]) {
    my $res = get_on($PORT, "/admin/api/invoices/$inv->{id}");
    $got{'get ' . $res->status}++;
    $pids{ $res->header('X-Pid') // '?' }++;
}
for (1 .. 3) {
    $got{'get ' . get_on($PORT, '/admin/api/invoices/' . object_id())->status}++;
}
for (1 .. 2) {
    $got{'route ' . get_on($PORT, '/admin/api/invoices/a/b')->status}++;
}
for (1 .. 4) {
    $got{'nokey ' . request(GET => '/admin/api/invoices')->status}++;
}
$got{'delete ' . api_request(DELETE => '/admin/api/invoices')->status}++;

is_deeply(\%got, { 'list 200' => $lists, 'get 200' => 5, 'get 404' => 3,
                   'route 404' => 2, 'nokey 401' => 4, 'delete 405' => 1 },
          'the requests got the expected statuses');
SKIP: {
    # valgrind mode runs one process, no master and no workers
    skip 'one process in valgrind mode', 1 if valgrind_mode();
    cmp_ok(scalar(keys %pids), '>=', 2,
           "both workers answered ($lists lists; pids: @{[ sort keys %pids ]})");
}

my $after = scrape_after($before, req_key(list => 200) => $lists,
                         req_key(get => 200) => 5, req_key(get => 404) => 3,
                         req_key(other => 404) => 2, req_key(other => 401) => 4,
                         req_key(other => 405) => 1);
is(delta($before, $after, req_key(list => 200)), $lists, "list 200: +$lists");
is(delta($before, $after, req_key(get => 200)), 5, 'get 200: +5');
is(delta($before, $after, req_key(get => 404)), 3, 'get 404: +3');
is(delta($before, $after, req_key(other => 404)), 2, 'a missing route: other 404 +2');
is(delta($before, $after, req_key(other => 401)), 4, 'no Api-Key: other 401 +4');
is(delta($before, $after, req_key(other => 405)), 1, 'DELETE: other 405 +1');
is(requests_sum($after) - requests_sum($before), $lists + 15,
   'nothing else was counted (the scrapes are not)');
is(value($after, 'invoices_jobs_in_flight'), 0, 'no job in flight when idle');

#----------------------------------------------------------------------
# the cache: a local hit and a Redis hit are counted apart

sub cache_key { return qq{invoices_cache_total{result="$_[0]"}} }

$before = scrape();

# two requests on one connection reach one worker: a miss, then its copy
my $req = "GET /admin/api/invoices?page=7&limit=3 HTTP/1.1\r\nHost: localhost\r\n"
        . "Api-Key: " . API_KEY . "\r\n";
my $two = raw_request($req . "\r\n" . $req . "Connection: close\r\n\r\n");
my @xc = $two->raw =~ /^X-Cache: (\w+)\r$/mg;
is_deeply(\@xc, ['MISS', 'HIT'], 'one connection: MISS, then HIT from the worker');

# a page that only Redis has: a Redis hit on whichever worker
# (the miss's SET is sent after its answer: wait for it)
my $stored;
wait_until(sub { ($stored) = grep { /:7:3$/ } @{ rcmd($redis, 'KEYS', 'invoices:list:*') };
                 $stored }, 5);
ok($stored, 'the miss stored its page in Redis (' . ($stored // 'none') . ')')
    or die 'no page in Redis to copy';
(my $only_redis = $stored) =~ s/:7:3$/:8:3/;
rcmd($redis, 'SET', $only_redis, qq{"00000000000000aa"\n{"invoices":[]}});
my $rh = list('?page=8&limit=3');
is($rh->header('X-Cache'), 'HIT', 'a page only Redis has: HIT');
is($rh->body, '{"invoices":[]}', '... with the bytes stored in Redis');

$after = scrape_after($before, req_key(list => 200) => 3);
is(delta($before, $after, cache_key('miss')), 1, 'cache miss +1');
is(delta($before, $after, cache_key('hit_local')), 1, 'cache hit_local +1');
is(delta($before, $after, cache_key('hit_redis')), 1, 'cache hit_redis +1');
is(delta($before, $after, cache_key('bypass')), 0, 'cache bypass +0');
is(delta($before, $after, req_key(list => 200)), 3, 'list 200 +3');

#----------------------------------------------------------------------
# the webhook: an insert, a bad signature, a body that is no event

sub wh_key { return qq{invoices_webhook_events_total{result="$_[0]"}} }

$before = scrape();
my $new_inv = stripe_invoice(customer => $A->{customer}, status => 'open', total => 4242);
my $res = deliver_event($PORT, invoice_event('invoice.finalized', $new_inv), $WHSEC);
is(($res->json_or_undef // {})->{result}, 'inserted', 'webhook: inserted')
    or diag $res->describe;
my $forged = $J->encode(invoice_event('invoice.paid', $new_inv));
$res = Invoices::Test::HTTP::request($PORT, POST => '/stripe/webhook',
    [['Content-Type', 'application/json'],
     ['Stripe-Signature', sign_event($forged, 'whsec_wrong')]], $forged);
is($res->status, 400, 'webhook with a wrong signature: 400');
$res = deliver_event($PORT, '{"hello":"world"}', $WHSEC);
is($res->status, 400, 'webhook, signed, but not an event: 400');

$after = scrape_after($before, req_key(webhook => 200) => 1, req_key(webhook => 400) => 2);
is(delta($before, $after, wh_key('inserted')), 1, 'webhook inserted +1');
is(delta($before, $after, wh_key('rejected')), 2, 'webhook rejected +2');
is(delta($before, $after, wh_key($_)), 0, "webhook $_ +0")
    for qw(updated unchanged duplicate deleted ignored);
is(delta($before, $after, req_key(webhook => 200)), 1, 'webhook 200 +1');
is(delta($before, $after, req_key(webhook => 400)), 2, 'webhook 400 +2');

#----------------------------------------------------------------------
# Stripe: a create makes calls, each with its time

$before = scrape();
my $cr = api_request(POST => '/admin/api/invoices',
    ['Content-Type' => 'application/json', 'Idempotency-Key' => 'metrics-' . int(rand 1e9)],
    $J->encode({ customer => $A->{customer}, items => [{ name => 'metrics', amount => 990 }] }));
is($cr->status, 201, 'create: 201') or diag $cr->describe;
$after = scrape_after($before, req_key(create => 201) => 1);
my $calls = delta($before, $after, 'invoices_stripe_calls_total{outcome="ok"}');
cmp_ok($calls, '>=', 1, "the create made Stripe calls ($calls)");
is(delta($before, $after, 'invoices_stripe_calls_total{outcome="error"}'), 0,
   'none of them failed');
is(delta($before, $after, 'invoices_stripe_call_seconds_count'), $calls,
   'the latency count is the number of calls');
my $secs = delta($before, $after, 'invoices_stripe_call_seconds_sum');
ok($secs > 0 && $secs < 10 * $calls, "their time is counted ($secs s)");
is(delta($before, $after, req_key(create => 201)), 1, 'create 201 +1');
is(value($after, 'invoices_jobs_in_flight'), 0, 'no job in flight afterwards');

#----------------------------------------------------------------------
# PostgreSQL down: the job's failure is counted

$before = scrape();
pg_stop();
my $down = get_on($PORT, '/admin/api/invoices/' . object_id());
pg_start();
is($down->status, 503, 'PostgreSQL down: 503') or diag $down->describe;
$after = scrape_after($before, req_key(get => 503) => 1);
is(delta($before, $after, 'invoices_postgresql_errors_total'), 1,
   'postgresql errors +1');
is(delta($before, $after, req_key(get => 503)), 1, 'get 503 +1');
ok(wait_until(sub { get_on($PORT, "/admin/api/invoices/$seed[5]{id}")->status == 200 }),
   'PostgreSQL is back');

#----------------------------------------------------------------------
# Redis: the module's connections killed, the losses are counted

$before = scrape();
rcmd($redis, 'CLIENT', 'KILL', 'TYPE', 'pubsub');
ok(wait_until(sub { delta($before, scrape(), 'invoices_redis_errors_total') >= 1 }),
   'a lost Redis connection is a Redis error');

#----------------------------------------------------------------------
# the endpoint itself: GET and HEAD only, no Api-Key, no secret

$res = request(POST => '/metrics', ['Content-Type', 'text/plain'], 'x');
is($res->status, 405, 'POST /metrics: 405');
like($res->header('Content-Type') // '', qr{^application/json}, '... as JSON');
is(($res->json_or_undef // {})->{error}{code}, 'method_not_allowed',
   '... with the module\'s error shape') or diag $res->describe;
is($res->header('Allow'), 'GET, HEAD', '... and Allow: GET, HEAD');

$res = Invoices::Test::HTTP::request($PORT, HEAD => '/metrics', [], undef, method => 'HEAD');
is($res->status, 200, 'HEAD /metrics: 200');
is($res->raw_body, '', '... without a body');

my $text = scrape()->{text};
note $text;
for ([API_KEY, 'the admin key'], [API_KEY_2, 'the second admin key'],
     [$WHSEC, 'the webhook secret'], [stripe_secret(), 'the Stripe key'])
{
    unlike($text, qr/\Q$_->[0]\E/, "the metrics hold not $_->[1]");
}

#----------------------------------------------------------------------
# a reload keeps the counters

SKIP: {
    skip 'a reload needs a master process (not in valgrind mode)', 7
        if valgrind_mode();
    my $master = server_info()->{pid};
    my @old = worker_pids($master);
    $before = scrape();
    ok(kill('HUP', $master), 'SIGHUP to the master (reload)');
    ok(wait_until(sub {
           my %now = map { $_ => 1 } worker_pids($master);
           return !grep { $now{$_} } @old;
       }, 20), 'the old workers are gone');
    $after = scrape();
    is(requests_sum($after), requests_sum($before), 'after the reload: the same request counts');
    is(value($after, wh_key('inserted')), value($before, wh_key('inserted')),
       '... the same webhook counts');
    is(value($after, cache_key('hit_local')), value($before, cache_key('hit_local')),
       '... the same cache counts');
    is(list('?limit=2')->status, 200, 'a list after the reload');
    is(delta($before, scrape_after($before, req_key(list => 200) => 1), req_key(list => 200)),
       1, '... goes on from there');
}

#----------------------------------------------------------------------
# configuration

my ($rc, $out) = nginx_config_test(server_config => "        location = /m {\n"
                                                  . "            invoices_metrics on;\n"
                                                  . "        }\n");
isnt($rc, 0, 'nginx -t: invoices_metrics with an argument fails');
like($out, qr/invalid number of arguments in "invoices_metrics"/, '... saying why')
    or diag $out;

($rc, $out) = nginx_config_test(location_config => '            invoices_metrics;');
isnt($rc, 0, 'nginx -t: invoices_metrics in the invoices_admin location fails');
like($out, qr/"invoices_metrics" directive cannot share a location/, '... saying why')
    or diag $out;

($rc, $out) = nginx_config_test(server_config => $METRICS_LOCATION);
is($rc, 0, 'nginx -t: a metrics location next to the admin one is fine') or diag $out;

done_testing();
