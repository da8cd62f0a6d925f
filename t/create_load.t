# POST /admin/api/invoices under load and outages: creates stuck at a
# hanging Stripe do not hold up reads (the Stripe jobs have their own
# thread pool), a full Stripe pool answers 503 at once, and PostgreSQL
# going away is a 503 with nothing sent to Stripe.
#
# /admin/api/invoices   Stripe pool invoices_stripe (4 threads), no
#                       retries, timeout 3s
# /tiny/api/invoices    Stripe pool "tiny": 1 thread, a queue of 1

use strict;
use warnings;
use Test::More;
use JSON::PP ();
use Time::HiRes qw(time sleep);
use Invoices::Test;

# A timing test: under valgrind everything is 15 times slower and the
# Stripe timeouts overtake the orderings it sets up.  The same code paths
# run under valgrind in t/create.t and t/create_stripe.t.
plan skip_all => 'timing test: not run under valgrind'
    if $ENV{TEST_NGINX_USE_VALGRIND};

start_server(stripe => { max_retries => 0, timeout => '3s' },
             threads => 4,
             main_config => 'thread_pool tiny threads=1 max_queue=1;',
             server_config => <<'CONF');
        location /tiny/api/invoices {
            invoices_admin;
            invoices_stripe_thread_pool tiny;
        }
CONF

my $J = JSON::PP->new->utf8->canonical;
my $A = linked_customer(payment_method => 'pm_card_visa');
insert_rows(invoices => map { {
    stripe_invoice_id => "in_load$_", status => 'paid', amount => $_,
    currency => 'eur', stripe_created_at => "2024-01-0${_}T00:00:00.000Z",
} } 1 .. 3);

sub body { my ($amount) = @_; $J->encode({ items => [{ name => 'load', amount => $amount }],
                                           customer => $A->{customer} }) }
sub start_create {
    my ($prefix, $amount, @h) = @_;
    return start_request(POST => "/$prefix/api/invoices",
                         ['Content-Type' => 'application/json', @h], body($amount));
}
sub creates_at_stripe { scalar fake_posts(qr{^/v1/invoices\z}) }

#----------------------------------------------------------------------
# 6 creates hang at Stripe; reads go on

fake_reset();
fake_config({ faults => [{ path => 'POST /v1/invoices',
                             hang_seconds => 4 * time_factor() }] });
my @stuck = map { start_create(admin => 100 + $_) } 1 .. 6;
# wait for the pool's threads to reach Stripe (slow under valgrind)
for (my $t = time + 5 * time_factor(); time < $t && creates_at_stripe() < 4; ) {
    sleep 0.1;
}
is(creates_at_stripe(), 4, '4 creates hang at Stripe (the pool\'s 4 threads), 2 wait');
my @lat;
my $all_ok = 1;
for my $i (1 .. 20) {
    my $r = api_request(GET => '/admin/api/invoices?limit=2');
    push @lat, $r->elapsed;
    $all_ok = 0 unless $r->status == 200;
}
my ($max) = sort { $b <=> $a } @lat;
diag sprintf 'GET latency while Stripe hangs: max %.3fs over %d requests', $max, scalar @lat;
ok($all_ok, '20 GETs while creates hang: all 200');
cmp_ok($max, '<', 1.0 * time_factor(), '... each within 1s');
my $one = api_request(GET => '/admin/api/invoices/in_load1');
is($one->status, 200, 'GET one invoice meanwhile: 200');
my @done = finish_request(@stuck);
is_deeply([map { $_->status } @done], [(504) x 6], 'the hanging creates: 504 each')
    or diag join "\n", map { $_->describe } @done;
json_check($done[0], 'error.code = "stripe_timeout"', 'a hanging create');
fake_config({ faults => [] });
sleep 1;    # the fake lets go of the last hangs

#----------------------------------------------------------------------
# the Stripe pool's queue is full: 503 at once

fake_reset();
fake_config({ faults => [{ path => 'POST /v1/invoices',
                             hang_seconds => 2 * time_factor() }] });
my $mark = error_log_mark();
my $busy = start_create(tiny => 201);
sleep 0.3 * time_factor();
my $queued = start_create(tiny => 202);
sleep 0.3 * time_factor();
my $full = api_request(POST => '/tiny/api/invoices', ['Content-Type' => 'application/json'],
                       body(203));
is($full->status, 503, 'the Stripe pool full: 503') or diag $full->describe;
json_check($full, <<'EOC', 'pool full');
error.type = "api_error"
error.code = "thread_pool_full"
error.message ~ \S
EOC
like($full->header('Retry-After') // '', qr/^[1-9]\d*$/, '... with Retry-After');
cmp_ok($full->elapsed, '<', 0.5 * time_factor(), '... at once');
my $get = api_request(GET => '/tiny/api/invoices?limit=1');
is($get->status, 200, 'GET in that location meanwhile: 200 (another pool)');
cmp_ok($get->elapsed, '<', 0.5 * time_factor(), '... at once');
my @two = finish_request($busy, $queued);
is_deeply([map { $_->status } @two], [504, 504], 'the running and the queued create end (504)');
is(creates_at_stripe(), 2, 'Stripe saw those two, not the refused one');
like(error_log_since($mark), qr/thread pool "tiny" queue overflow/, 'nginx logged the overflow');
fake_config({ faults => [] });
sleep 1;

#----------------------------------------------------------------------
# PostgreSQL down: 503, nothing sent to Stripe; back: creates work

fake_reset();
pg_stop();
my $down = api_request(POST => '/admin/api/invoices',
                       ['Content-Type' => 'application/json', 'Idempotency-Key' => 'pg-1'],
                       body(301));
is($down->status, 503, 'PostgreSQL down: create is 503') or diag $down->describe;
json_check($down, <<'EOC', 'PostgreSQL down');
error.type = "api_error"
error.code = "database_unavailable"
EOC
like($down->header('Retry-After') // '', qr/^[1-9]\d*$/, '... with Retry-After');
cmp_ok($down->elapsed, '<', 2 * time_factor(), '... at once');
unlike($down->body, qr/(?i)postgres|libpq|connection refused/, '... no internals');
is(scalar(() = fake_requests()), 0, '... nothing sent to Stripe');
pg_start();

my $up = api_request(POST => '/admin/api/invoices',
                     ['Content-Type' => 'application/json', 'Idempotency-Key' => 'pg-1'],
                     body(301));
is($up->status, 201, 'PostgreSQL back: the same key creates (201)') or diag $up->describe;
ok(!defined $up->header('Idempotent-Replayed'), '... not a replay of the 503');
my $inv = $up->json_or_undef // {};
is(sql_value('SELECT status FROM invoices WHERE stripe_invoice_id = ' . quote($inv->{id} // '')),
   'open', '... and the row is stored');
is(creates_at_stripe(), 1, '... one invoice at Stripe');

done_testing();
