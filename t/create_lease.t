# POST /admin/api/invoices: the Idempotency-Key is held by a lease, not by
# a PostgreSQL session (migration 0004).
#
# 1. A node stalls in the middle of a create (SIGSTOP on its whole nginx):
#    once the lease runs out, a retry on another node takes the key over
#    and completes the same Stripe invoice; the stalled node, resumed,
#    creates and overwrites nothing, and answers with the taker's result.
# 2. A PostgreSQL backend killed in the middle of a create: the create
#    goes on on a new connection, and no raw libpq WARNING ("you don't own
#    a lock") reaches the log.
# 3. Our libpq connections have TCP keepalive on (ss shows the timer).
# 4. nginx -t refuses a lease shorter than the longest Stripe call.

use strict;
use warnings;
use Test::More;
use JSON::PP ();
use POSIX ();
use HTTP::Tiny;
use Time::HiRes qw(time sleep);
use Invoices::Test;
use Invoices::Redis qw(start_nginx stop_nginx nginx_log);

# one Stripe call: at most 5 s (no retries), so the lease must exceed
# 5 s; 6 s keeps the test short
my %stripe = (timeout => '5s', max_retries => 0);
my $LEASE = 'invoices_idempotency_lease 6s;';

start_server(stripe => {%stripe}, workers => 1, location_config => $LEASE);
my $A = server_info();
my $B = start_nginx(stripe => {%stripe}, workers => 1,
                    location_config => $LEASE, copy_files => ['stripe.key']);
ok($B && $B->{port}, 'a second node on the same database and fake Stripe');

my $J = JSON::PP->new->utf8->canonical;

sub create_on {
    my ($port, $body, $key) = @_;
    my $http = HTTP::Tiny->new(timeout => 60 * time_factor());
    my $res = $http->request(POST => "http://127.0.0.1:$port/admin/api/invoices",
                             { headers => { 'Api-Key' => API_KEY,
                                            'Content-Type' => 'application/json',
                                            'Idempotency-Key' => $key },
                               content => $J->encode($body) });
    return $res;
}



sub executed {    # the /v1 POSTs the fake executed (not replays) on a path
    my ($re) = @_;
    return grep { !$_->{replayed} } fake_posts($re);
}

#----------------------------------------------------------------------
# 1. a node stalls holding the key

{
    my $C = linked_customer(payment_method => 'pm_card_visa');
    my $body = create_body($C->{customer}, 1000, 2000, 3000);
    my $key = 'lease-stalled-1';
    fake_reset();
    fake_config({ latency_ms => 700 });

    my $pending = start_request(POST => '/admin/api/invoices',
                                ['Content-Type' => 'application/json',
                                 'Idempotency-Key' => $key],
                                $J->encode($body), timeout => 90 * time_factor());

    # the draft exists and a line is on its way: stop node A there
    ok(wait_until(sub { scalar grep { $_->{path} eq '/v1/invoiceitems' } fake_requests() }, 20),
       'node A is adding the lines');
    kill 'STOP', -$A->{pid};
    kill 'STOP', $A->{pid};
    my $stopped_at = time;

    my $draft = sql_value('SELECT stripe_invoice_id FROM idempotency_keys WHERE key = '
                          . quote($key));
    like($draft // '', qr/^in_\w+$/, 'the key names the draft node A made');

    # before the lease ends the key is still A's
    my $early = create_on($B->{port}, $body, $key);
    is($early->{status}, 409, 'node B, before the lease ends: 409');
    like($early->{content}, qr/idempotency_key_in_use/, '... idempotency_key_in_use');

    ok(wait_until(sub { sql_value('SELECT lease_until < now() FROM idempotency_keys WHERE key = '
                                  . quote($key)) eq 't' }, 20),
       'the lease runs out while node A is stopped');
    cmp_ok(time - $stopped_at, '<', 15 * time_factor(),
           '... within seconds, not hours');

    fake_config({ latency_ms => 0 });
    my $taken = create_on($B->{port}, $body, $key);
    is($taken->{status}, 201, 'node B takes the key over: 201') or diag $taken->{content};
    my $inv = eval { $J->decode($taken->{content}) } // {};
    is($inv->{id}, $draft, '... the same Stripe invoice node A had made');
    is($inv->{status}, 'open', '... finalized');
    is(sql_value('SELECT fence FROM idempotency_keys WHERE key = ' . quote($key)), 2,
       '... under the next fence');

    kill 'CONT', -$A->{pid};
    kill 'CONT', $A->{pid};
    my ($late) = finish_request($pending);
    ok($late->status == 201 || $late->status == 409 || $late->status == 504,
       'node A, resumed, answers (' . $late->status . ')') or diag $late->describe;
    if ($late->status == 201) {
        is($late->header('Idempotent-Replayed'), 'true', "... with the taker's result, replayed");
        is($late->body, $taken->{content}, "... the taker's bytes");
    }

    my @at_stripe = stripe_invoices_of($C->{customer});
    is(scalar @at_stripe, 1, 'Stripe has one invoice for the customer');
    my $lines = fake_stripe(GET => "/v1/invoices/$draft/lines?limit=100");
    is(scalar @{ $lines->{data} }, 3, '... with three lines, none twice');
    is($at_stripe[0]{total}, 6000, '... total 6000');
    is(scalar(executed(qr{^/v1/invoices$})), 1, 'Stripe created one invoice');
    is(scalar(executed(qr{/finalize$})), 1, 'Stripe finalized it once');
    is(sql_value('SELECT response_body FROM idempotency_keys WHERE key = ' . quote($key)),
       $taken->{content}, "the key keeps the taker's answer");
    is(sql_value('SELECT count(*) FROM invoices WHERE stripe_customer_id = '
                 . quote($C->{customer})), 1, 'one row');
    my $replay = create_on($A->{port}, $body, $key);
    is($replay->{status}, 201, 'a replay on node A: 201');
    is($replay->{headers}{'idempotent-replayed'}, 'true', '... replayed');
    is($replay->{content}, $taken->{content}, '... the same answer');
    like(error_log_text(), qr/\[warn\].*stalled past its Idempotency-Key lease/,
         "node A's log says it was taken over")
        if $late->status != 504;
}

#----------------------------------------------------------------------
# 1b. stopped between two steps: the late node's next write is fenced
#
# To stop node A at a known point, the test holds the key's row locked, so
# that A's renewal (before its next Stripe call) waits in PostgreSQL; A is
# stopped there, the row let go (A's renewal then runs in its backend),
# and the lease runs out while A stays stopped.

{
    my $C = linked_customer(payment_method => 'pm_card_visa');
    my $body = create_body($C->{customer}, 1100, 2200, 3300);
    my $key = 'lease-stalled-2';
    fake_reset();
    fake_config({ latency_ms => 500 });

    my $pending = start_request(POST => '/admin/api/invoices',
                                ['Content-Type' => 'application/json',
                                 'Idempotency-Key' => $key],
                                $J->encode($body), timeout => 90 * time_factor());
    ok(wait_until(sub { scalar grep { $_->{path} eq '/v1/invoiceitems' } fake_requests() }, 20),
       'node A is adding the lines');

    my @psql = ('psql', '-X', '-q', '-o', '/dev/null', '-v', 'ON_ERROR_STOP=1',
                '-h', $ENV{INVOICES_TEST_PGHOST}, '-p', $ENV{INVOICES_TEST_PGPORT},
                '-U', $ENV{INVOICES_TEST_PGUSER}, '-d', db_name());
    open(my $holder, '|-', @psql) or die "psql: $!";
    $holder->autoflush(1);
    print $holder "BEGIN;
SELECT 1 FROM idempotency_keys WHERE key = " . quote($key)
        . " FOR UPDATE;
";
    ok(wait_until(sub {
           sql_value(q{SELECT count(*) FROM pg_stat_activity
                       WHERE application_name = 'ngx_http_invoices'
                         AND wait_event_type = 'Lock'
                         AND query LIKE 'UPDATE idempotency_keys SET lease_until%'}) > 0 }, 20),
       "node A's renewal waits for the row");
    kill 'STOP', -$A->{pid};
    kill 'STOP', $A->{pid};
    print $holder "COMMIT;
";
    close $holder;

    ok(wait_until(sub { sql_value('SELECT lease_until < now() FROM idempotency_keys WHERE key = '
                                  . quote($key)) eq 't' }, 20),
       'the lease runs out while node A is stopped');
    fake_config({ latency_ms => 0 });
    my $taken = create_on($B->{port}, $body, $key);
    is($taken->{status}, 201, 'node B takes the key over: 201') or diag $taken->{content};
    my $inv = eval { $J->decode($taken->{content}) } // {};

    my $mark = error_log_mark();
    kill 'CONT', -$A->{pid};
    kill 'CONT', $A->{pid};
    my ($late) = finish_request($pending);
    is($late->status, 201, 'node A, resumed: 201') or diag $late->describe;
    is($late->header('Idempotent-Replayed'), 'true', "... the taker's result, replayed");
    is($late->body, $taken->{content}, "... the taker's bytes");
    like(error_log_since($mark), qr/\[warn\].*stalled past its Idempotency-Key lease/,
         "node A's log says it was taken over");

    my @at_stripe = stripe_invoices_of($C->{customer});
    is(scalar @at_stripe, 1, 'Stripe has one invoice for the customer');
    my $lines = fake_stripe(GET => "/v1/invoices/$inv->{id}/lines?limit=100");
    is(scalar @{ $lines->{data} }, 3, '... with three lines, none twice');
    is(scalar(executed(qr{^/v1/invoiceitems$})), 3, 'Stripe executed three line requests');
    is(scalar(executed(qr{/finalize$})), 1, 'Stripe finalized once');
    is(sql_value('SELECT response_body FROM idempotency_keys WHERE key = ' . quote($key)),
       $taken->{content}, "the key keeps the taker's answer");
}

#----------------------------------------------------------------------
# 2. the PostgreSQL backend killed during a create

{
    my $C = linked_customer(payment_method => 'pm_card_visa');
    my $body = create_body($C->{customer}, 500, 600);
    fake_reset();
    fake_config({ latency_ms => 400 });
    my $mark = error_log_mark();
    my $pending = start_request(POST => '/admin/api/invoices',
                                ['Content-Type' => 'application/json',
                                 'Idempotency-Key' => 'lease-backend-killed'],
                                $J->encode($body), timeout => 60 * time_factor());
    ok(wait_until(sub { scalar grep { $_->{path} eq '/v1/invoiceitems' } fake_requests() }, 20),
       'a create is adding lines');
    my $killed = sql_value(q{SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                             WHERE application_name = 'ngx_http_invoices'
                               AND datname = current_database()});
    cmp_ok($killed, '>=', 1, "PostgreSQL backends of nginx terminated ($killed)");
    my ($res) = finish_request($pending);
    fake_config({ latency_ms => 0 });
    is($res->status, 201, 'the create completes on a new connection') or diag $res->describe;
    my $log = error_log_since($mark);
    unlike($log, qr/you don't own a lock/, "no \"you don't own a lock\" in the log");
    unlike($log, qr/^WARNING:/m, 'no raw libpq WARNING in the log');
}

#----------------------------------------------------------------------
# 3. TCP keepalive on our PostgreSQL connections

SKIP: {
    my $ss = `ss -tnpo state established 2>/dev/null`;
    skip 'ss (iproute2) not available', 1 unless $? == 0 && $ss =~ /\S/;
    my @pids = ($A->{pid}, map { /^\s*(\d+)/ ? $1 : () }
                           `ps -o pid= --ppid $A->{pid}`);
    my $pids = join '|', @pids;
    my $port = $ENV{INVOICES_TEST_PGPORT};
    my @ours = grep { /:\Q$port\E\s/ && /pid=(?:$pids),/ } split /\n/, $ss;
    ok(@ours && !grep({ !/timer:\(keepalive/ } @ours),
       'every connection of nginx to PostgreSQL has a keepalive timer')
        or diag $ss;
}

#----------------------------------------------------------------------
# 4. a lease shorter than a Stripe call

{
    my ($rc, $out) = nginx_config_test(stripe => { timeout => '10s', max_retries => 1 },
                                       location_config => 'invoices_idempotency_lease 20s;');
    isnt($rc, 0, 'nginx -t: a lease of 20 s for Stripe calls of up to 25 s fails');
    like($out, qr/\[emerg\][^\n]*invoices_idempotency_lease[^\n]*25000 ms/,
         '... naming the directive and the longest call') or diag $out;
    ($rc, $out) = nginx_config_test(stripe => { timeout => '10s', max_retries => 1 },
                                    location_config => 'invoices_idempotency_lease 26s;');
    is($rc, 0, 'nginx -t: 26 s is accepted') or diag $out;
}

unlike(nginx_log($B), qr/\[(?:alert|crit|emerg)\]/, "no [alert], [crit] or [emerg] in node B's log");
my ($okB) = stop_nginx($B);
ok($okB, 'node B stops gracefully');
done_testing();
