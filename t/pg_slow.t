# PostgreSQL slow: a statement that runs into a statement_timeout (here
# set on the database; in production in the conninfo's options or on the
# role) is a quick 503 JSON with Retry-After, like an outage, not a 500,
# and not a hang; the next statement after the lock goes is a 200.

use strict;
use warnings;
use Test::More;
use POSIX ();
use Time::HiRes qw(time sleep);
use Invoices::Test;

start_server(threads => 2);
my $db = db_name();
sql_do(qq(ALTER DATABASE "$db" SET statement_timeout = '300ms'));
my ($inv) = insert_rows(invoices => {
    stripe_invoice_id => 'in_slow1', status => 'paid', amount => 1,
    currency => 'eur', stripe_created_at => '2024-05-01T00:00:00.000Z' });

# another session holds the table for 3 s
my $pid = fork // die "fork: $!";
if (!$pid) {
    eval { sql_do('BEGIN; SET LOCAL statement_timeout = 0; '
                  . 'LOCK TABLE invoices IN ACCESS EXCLUSIVE MODE; '
                  . 'SELECT pg_sleep(3); COMMIT') };
    POSIX::_exit(0);
}
ok(wait_until(sub { sql_value("SELECT count(*) FROM pg_locks l JOIN pg_class c
                               ON c.oid = l.relation WHERE c.relname = 'invoices'
                               AND l.mode = 'AccessExclusiveLock' AND l.granted") }, 5),
   'another session holds invoices locked');

for my $path ('/admin/api/invoices', "/admin/api/invoices/$inv->{id}") {
    my $t0 = time;
    my $res = api_request(GET => $path);
    my $took = time - $t0;
    is($res->status, 503, "GET $path, the table locked: 503") or diag $res->describe;
    is($res->header('Retry-After'), '1', '... with Retry-After: 1');
    my $err = ($res->json_or_undef // {})->{error} // {};
    is($err->{code}, 'database_busy', '... code database_busy');
    like($res->header('Content-Type') // '', qr{^application/json}, '... as JSON');
    cmp_ok($took, '<', 2 * time_factor(), '... within the timeout, not after the lock');
}
like(error_log_text(), qr/\[error\].*invoices: PostgreSQL statement failed: .*statement timeout/,
     'the timeout is logged at [error] with PostgreSQL\'s reason');

waitpid $pid, 0;
is(api_request(GET => '/admin/api/invoices')->status, 200, 'the lock gone: 200 again');
is(api_request(GET => "/admin/api/invoices/$inv->{id}")->status, 200, '... for one invoice too');

done_testing();
