# PostgreSQL faults under concurrent load (issue 7, hardening):
#
# 1. PostgreSQL restarted while 6 clients read and a webhook event
#    arrives: during the outage each request is a 503 JSON with
#    Retry-After, every request sent after PostgreSQL is back is a 200,
#    the workers are the same processes throughout, and the event that
#    got 503 is stored when it is delivered again (as Stripe retries).
# 2. PostgreSQL slow: a lock held by another session on the invoices
#    table.  Through a location whose invoices_database sets
#    statement_timeout in libpq's options, the blocked statements end in
#    a JSON 5xx quickly instead of hanging; the connection survives.

use strict;
use warnings;
use Test::More;
use JSON::PP ();
use Time::HiRes qw(time sleep);
use Invoices::Test;
use Invoices::Webhook;
use Invoices::Load;

my $W = new_whsec();
my $TIMEOUT_MS = 300;
start_server(
    workers => 2,
    threads => 4,
    before_start => sub {
        my %e = map { $_ => $ENV{$_} } qw(INVOICES_TEST_PGHOST INVOICES_TEST_PGPORT
                                          INVOICES_TEST_PGUSER);
        my $db = db_name();
        open my $fh, '>', server_prefix() . '/conf/slow.conf' or die $!;
        print $fh <<"CONF";
        location /slow/api/invoices {
            invoices_admin;
            invoices_database "host=$e{INVOICES_TEST_PGHOST} port=$e{INVOICES_TEST_PGPORT} dbname=$db user=$e{INVOICES_TEST_PGUSER} options='-c statement_timeout=$TIMEOUT_MS'";
        }
CONF
        close $fh;
    },
    server_config => webhook_location(secrets => ['file:' . secret_file($W)])
                   . "        include slow.conf;\n",
);
default_secret($W);

my $master = server_info()->{pid};
my @workers;
if (valgrind_mode()) {    # one process, no master, no workers
    @workers = worker_pids($master);    # none: the checks by pid are moot
    pass('one process in valgrind mode');
} else {
    @workers = wait_workers(2, $master);
    is(scalar @workers, 2, 'two workers');
}
my %fds = map { $_ => fd_count($_) } @workers;

insert_rows(invoices => map { {
    stripe_invoice_id => "in_pgfault$_", status => 'paid', amount => 100 * $_,
    currency => 'eur', stripe_created_at => "2024-03-0${_}T00:00:00.000Z",
} } 1 .. 5);

my $FAST = 2 * time_factor();

#----------------------------------------------------------------------
# 1. PostgreSQL restarted under load

my $load = start_load(clients => 6, pause => 0.01, requests => [
    [GET => '/admin/api/invoices?limit=3'],
    [GET => '/admin/api/invoices/in_pgfault2'],
    [GET => '/admin/api/invoices?page=2&limit=2'],
]);
ok(wait_until(sub { load_count($load, status => 200) >= 20 }, 10),
   'load: 20 answers before the outage');

my $t_stop = time;
pg_stop();
my $t_stopped = time;
ok(wait_until(sub { load_count($load, since => $t_stopped, status => 503) >= 20 }, 10),
   'load: 20 answers (503) while PostgreSQL is down');

# a webhook event arrives during the outage
my $inv = stripe_invoice(status => 'open', customer => 'cus_pgfault', total => 4242);
my $ev = invoice_event('invoice.finalized', $inv);
my $body = event_body($ev);
my $during = deliver($body);
subtest 'webhook during the outage: 503 JSON with Retry-After (Stripe will retry)' => sub {
    is($during->status, 503, 'status 503') or diag $during->describe;
    like($during->header('Retry-After') // '', qr/^[1-9]\d*$/, 'Retry-After');
    is($during->header('Content-Type'), 'application/json; charset=utf-8', 'JSON');
    json_check($during, 'error.code = "database_unavailable"');
    cmp_ok($during->elapsed, '<', $FAST, "within ${FAST}s");
};

pg_start();
my $t_started = time;
ok(wait_until(sub { load_count($load, since => $t_started, status => 200) >= 30 }, 10),
   'load: 30 answers (200) after PostgreSQL is back');
my @rec = stop_load($load);

# Stripe retries the delivery later, signed again (a new t=)
my $again = deliver($body);
is(result_of($again), 'inserted', 'the same event delivered again after the outage: stored')
    or diag $again->describe;
is(event_row($ev->{id}) ? 1 : 0, 1, 'the event is recorded');
my $row = invoice_row($inv->{id});
is($row && $row->{amount}, 4242, "the event's invoice is in the database");
is(result_of(deliver($body)), 'duplicate', 'a third delivery is a duplicate')
    if result_of($again) eq 'inserted';

subtest 'load through the restart: ' . summarize(@rec) => sub {
    my @bad = grep { !$_->{complete} || ($_->{status} != 200 && $_->{status} != 503) } @rec;
    is(scalar @bad, 0, 'every request got a complete 200 or 503')
        or diag explain [@bad[0 .. ($#bad > 4 ? 4 : $#bad)]];
    my @e503 = grep { $_->{status} == 503 } @rec;
    cmp_ok(scalar @e503, '>', 0, 'some requests met the outage');
    is(scalar(grep { ($_->{retry_after} // '') !~ /^[1-9]\d*$/ } @e503), 0,
       'every 503 has Retry-After');
    is(scalar(grep { ($_->{code} // '') ne 'database_unavailable'
                     || ($_->{content_type} // '') ne 'application/json; charset=utf-8' } @e503),
       0, 'every 503 is a JSON database_unavailable error');
    is(scalar(grep { $_->{t1} < $t_stop || $_->{t0} > $t_started } @e503), 0,
       'the 503s all fall inside the outage');
    my @after = grep { $_->{t0} >= $t_started } @rec;
    cmp_ok(scalar @after, '>=', 30, scalar(@after) . ' requests sent after the restart');
    is(scalar(grep { $_->{status} != 200 } @after), 0,
       'every request sent after PostgreSQL is back is a 200')
        or diag explain [grep { $_->{status} != 200 } @after];
    my ($slowest) = sort { $b <=> $a } map { $_->{elapsed} } @rec;
    cmp_ok($slowest, '<', $FAST, sprintf 'the slowest answer took %.3fs', $slowest);
};

is_deeply([worker_pids($master)], \@workers, 'the same worker processes (none crashed)');
ok(kill(0, $master), 'the same nginx master');

#----------------------------------------------------------------------
# 2. PostgreSQL slow: a lock on invoices, statement_timeout in the conninfo

# warm the connections of /slow (a first statement works)
is(api_request(GET => '/slow/api/invoices?limit=1')->status, 200,
   '/slow (statement_timeout in the conninfo) answers');

my $lpid = lock_invoices();
ok(wait_until(\&invoices_locked, 10), 'another session holds an exclusive lock on invoices');

my @slow = parallel_requests(map { [GET => '/slow/api/invoices?limit=2'] } 1 .. 6);
push @slow, api_request(GET => '/slow/api/invoices/in_pgfault1');
my $BOUND = ($TIMEOUT_MS / 1000 + 1.5) * time_factor();
subtest 'locked table, statement_timeout 300ms: 7 concurrent reads end quickly' => sub {
    for my $r (@slow) {
        ok($r->status >= 500 && $r->status <= 504, 'a 5xx (' . $r->status . ')')
            or diag $r->describe;
        is($r->header('Content-Type'), 'application/json; charset=utf-8', 'JSON');
        json_check($r, "error.type = \"api_error\"\nerror.message ~ \\S");
        cmp_ok($r->elapsed, '<', $BOUND, sprintf('answered in %.3fs, not a hang', $r->elapsed));
        unlike($r->body, qr/(?i)statement timeout|canceling|postgres/, 'no internals');
    }
};
{
    is(scalar(grep { $_->status == 503 && ($_->header('Retry-After') // '') =~ /^\d+$/
                     && (($_->json_or_undef // {})->{error}{code} // '') eq 'database_busy' } @slow),
       scalar @slow, 'a statement timeout is a 503 database_busy with Retry-After, not a 500')
        or diag 'got: ' . join(', ', map { $_->status . ' ' . (($_->json_or_undef // {})->{error}{code} // '') } @slow);
}

unlock_invoices($lpid);
ok(!invoices_locked(), 'the lock is released');
my @after = parallel_requests(map { [GET => '/slow/api/invoices?limit=2'] } 1 .. 6);
is_deeply([map { $_->status } @after], [(200) x 6],
          'after the lock: /slow answers 200 again on every thread');
is(api_request(GET => '/admin/api/invoices?limit=1')->status, 200, '... and so does the default location');

is_deeply([worker_pids($master)], \@workers, 'still the same worker processes');
# every connection of the load is closed: the workers hold the same
# descriptors as at the start (the pool threads' PostgreSQL sockets were
# reopened, not added)
ok(wait_until(sub { !grep { fd_count($_) > $fds{$_} + 10 } @workers }, 5),
   'no descriptor leak in the workers')
    or diag join ', ', map { "$_: $fds{$_} -> " . fd_count($_) } @workers;

done_testing();
