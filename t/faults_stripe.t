# Creates and pools under faults, several requests at once (issue 7):
#
# 4. Stripe hung, failing (503) and rate limiting (429) at a later step
#    of three concurrent creates: each gets the JSON error of the
#    contract in bounded time, naming the Stripe invoice; reads go on
#    meanwhile; a retry with the same Idempotency-Key finishes that same
#    invoice (one per key at Stripe, stored open).
# 5. The PostgreSQL pool of a location full (threads=1 max_queue=1, its
#    thread held by a table lock): 503 thread_pool_full with Retry-After
#    at once, never a hang; the held and the queued request finish once
#    the lock goes.
# 6. Clients that go away: half a body then close (admin and webhook),
#    and a whole create closed while Stripe is slow.  No crash (the
#    same worker), no descriptor leak, and the Stripe sequence of a
#    create whose client left still completes and is stored.
#
# t/create_stripe.t covers each Stripe failure one request at a time,
# t/create_load.t the Stripe pool's full queue.

use strict;
use warnings;
use Test::More;
use IO::Socket::INET;
use Time::HiRes qw(time sleep);
use Invoices::Test;
use Invoices::Webhook;
use Invoices::Load;

plan skip_all => 'timing test: not run under valgrind' if valgrind_mode();

my $W = new_whsec();
start_server(stripe => { max_retries => 1, timeout => '1s' },
             workers => 1, threads => 4,
             main_config => 'thread_pool tiny threads=1 max_queue=1;',
             server_config => webhook_location(secrets => ['file:' . secret_file($W)])
                            . <<'CONF');
        location /tiny/api/invoices {
            invoices_admin;
            invoices_thread_pool tiny;
        }
CONF
default_secret($W);
my $master = server_info()->{pid};
my @workers = wait_workers(1, $master);
is(scalar @workers, 1, 'one worker');

insert_rows(invoices => map { {
    stripe_invoice_id => "in_sfault$_", status => 'paid', amount => $_,
    currency => 'eur', stripe_created_at => "2024-02-0${_}T00:00:00.000Z",
} } 1 .. 3);

# a create of two items (700, 800) for $cus (the arguments of api_request)
sub create_req {
    my ($cus, $key, $prefix) = @_;
    return create_request($prefix // 'admin', create_body($cus, 700, 800), $key);
}

# warm every thread (its PostgreSQL connection, its curl handle) so that
# the descriptor count below is the steady one
my @warm_c = map { linked_customer(payment_method => 'pm_card_visa') } 1 .. 4;
my @warm = parallel_requests((map { create_req($_->{customer}, "warm-$_->{customer}") } @warm_c),
                             (map { [GET => '/admin/api/invoices?limit=2'] } 1 .. 8),
                             [GET => '/tiny/api/invoices?limit=1']);
is(scalar(grep { $_->status == 201 || $_->status == 200 } @warm), scalar @warm,
   'warm-up: 4 creates and 9 reads at once');
my $fd0 = fd_count($workers[0]);

#----------------------------------------------------------------------
# 4. Stripe hung / 503 / 429 for three concurrent creates

my @cases = (
    { name => 'finalize hangs', status => 504, code => 'stripe_timeout',
      fault => { path => 'POST /v1/invoices/in_\w+/finalize', hang_seconds => 1.5 } },
    { name => 'lines answer 503', status => 502, code => 'stripe_unavailable',
      fault => { path => 'POST /v1/invoiceitems', status => 503 } },
    { name => 'finalize answers 429', status => 503, code => 'stripe_rate_limited',
      fault => { path => 'POST /v1/invoices/in_\w+/finalize', status => 429 } },
);
# timeout 1s, 1 retry after 0.5s (or Stripe's Retry-After, at most 5s)
my $BOUND = 4 * time_factor();
for my $c (@cases) {
    my @cus = map { linked_customer(payment_method => 'pm_card_visa') } 1 .. 3;
    my @key = map { "f-$c->{code}-$_" } 1 .. 3;
    fake_reset();
    fake_config({ faults => [$c->{fault}] });
    my @pending = map { start_request(@{ create_req($cus[$_]{customer}, $key[$_]) }) } 0 .. 2;
    my @reads = map { api_request(GET => '/admin/api/invoices?limit=2') } 1 .. 5;
    my @res = finish_request(@pending);
    my @ids = map { (($_->json_or_undef // {})->{error} // {})->{invoiceId} // '' } @res;
    subtest "$c->{name}: three creates at once" => sub {
        is_deeply([map { $_->status } @reads], [(200) x 5], 'reads meanwhile: 200');
        for my $r (@res) {
            is($r->status, $c->{status}, "status $c->{status}") or diag $r->describe;
            is($r->header('Content-Type'), 'application/json; charset=utf-8', 'JSON');
            json_check($r, <<"EOC");
error.type = "stripe_error"
error.code = "$c->{code}"
error.message ~ \\S
error.invoiceId ~ ^in_
EOC
            like($r->header('Retry-After') // '', qr/^[1-9]\d*$/, 'Retry-After')
                if $c->{status} == 503;
            cmp_ok($r->elapsed, '<', $BOUND, sprintf 'answered in %.2fs', $r->elapsed);
        }
        for my $i (0 .. 2) {
            my @at = stripe_invoices_of($cus[$i]{customer});
            is(scalar(@at) == 1 && $at[0]{id}, $ids[$i], "create $i: its draft is at Stripe");
        }
    };
    fake_config({ faults => [] });
    my @retry = parallel_requests(map { create_req($cus[$_]{customer}, $key[$_]) } 0 .. 2);
    subtest "$c->{name}: the same keys again finish the same invoices" => sub {
        for my $i (0 .. 2) {
            my $r = $retry[$i];
            is($r->status, 201, "retry $i: 201") or diag $r->describe;
            my $got = $r->json_or_undef // {};
            is($got->{id}, $ids[$i], "retry $i: the invoice named by the error");
            is($got->{status}, 'open', "retry $i: finalized");
            my @at = stripe_invoices_of($cus[$i]{customer});
            is(scalar @at, 1, "retry $i: still one invoice at Stripe");
            is($at[0]{lines}{total_count}, 2, "retry $i: two lines, none twice");
            is((db_invoice($ids[$i]) // {})->{status}, 'open', "retry $i: stored open");
        }
    };
}
fake_reset();

#----------------------------------------------------------------------
# 5. the PostgreSQL pool full

my $lock = lock_invoices();
ok(wait_until(\&invoices_locked, 10), 'the invoices table is locked by another session');
my $held = start_request(GET => '/tiny/api/invoices?limit=1');
ok(wait_until(sub { Invoices::Load::lock_waiters() >= 1 }, 5),
   "the tiny pool's one thread waits for the lock");
my $mark = error_log_mark();
my @more = map { start_request(GET => '/tiny/api/invoices?limit=1') } 1 .. 7;
# one of them takes the queue's one place; the others must come back at once
my (@full, @queued);
{
    my @fin;
    my $t = time + 1.5 * time_factor();
    # collect the answers that come without the lock going away
    while (time < $t) {
        @fin = grep { $_->{done} } @more;
        last if @fin >= 6;
        my $rin = '';
        vec($rin, fileno($_->{sock}), 1) = 1 for grep { !$_->{done} } @more;
        select(my $rout = $rin, undef, undef, 0.05);
        for my $p (grep { !$_->{done} } @more) {
            Invoices::Test::HTTP::_read_some($p) if vec($rout, fileno($p->{sock}), 1);
        }
    }
    @full = finish_request(grep { $_->{done} } @more);
    @queued = grep { !$_->{done} } @more;
}
subtest 'pool full: 6 of 7 more requests are answered at once' => sub {
    is(scalar @full, 6, '6 answered while the lock is held, 1 queued');
    for my $r (@full) {
        is($r->status, 503, 'status 503') or diag $r->describe;
        like($r->header('Retry-After') // '', qr/^[1-9]\d*$/, 'Retry-After');
        json_check($r, "error.type = \"api_error\"\nerror.code = \"thread_pool_full\"");
        cmp_ok($r->elapsed, '<', 1 * time_factor(), sprintf 'in %.3fs', $r->elapsed);
    }
};
my $other = request(GET => '/admin/api/invoices?limit=1');
is($other->status, 401, 'meanwhile the worker answers what needs no pool (401 without a key)');
cmp_ok($other->elapsed, '<', 0.5 * time_factor(), '... at once');
like(error_log_since($mark), qr/thread pool "tiny" queue overflow/, 'nginx logged the overflow');
unlock_invoices($lock);
my @late = finish_request($held, @queued);
is_deeply([map { $_->status } @late], [(200) x @late],
          'the held and the queued request end 200 once the lock goes');

#----------------------------------------------------------------------
# 6. clients that go away

sub half_post {
    my ($path, @h) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => server_port(),
                                  Proto => 'tcp') or die "connect: $!";
    my $body = '{"items": [{"name": "x", "amount": 1}], "customer": "cus_half", "pad": "'
             . ('y' x 300) . '"}';
    print {$s} "POST $path HTTP/1.1\r\nHost: x\r\nApi-Key: test-key\r\n"
             . "Content-Type: application/json\r\n" . join('', map { "$_\r\n" } @h)
             . 'Content-Length: ' . length($body) . "\r\n\r\n" . substr($body, 0, 100);
    return $s;
}
my @half = ((map { half_post('/admin/api/invoices', "Idempotency-Key: half-$_") } 1 .. 10),
            (map { half_post('/stripe/webhook', 'Stripe-Signature: t=1,v1=00') } 1 .. 10));
sleep 0.2;    # the bytes reach nginx (not an assertion)
close $_ for @half;
my $after_half = api_request(GET => '/admin/api/invoices?limit=1');
is($after_half->status, 200, 'after 20 half bodies: the next request is 200');
is(scalar(() = fake_requests()), 0, 'nothing of a half body reached Stripe');

# a whole create, the client gone while Stripe is slow
fake_reset();
fake_config({ latency_ms => 600 });
my @gone = map { linked_customer(payment_method => 'pm_card_visa') } 1 .. 3;
my @socks;
for my $g (@gone) {
    my $req = create_req($g->{customer}, "gone-$g->{customer}");
    my $bytes = Invoices::Test::HTTP::build(server_port(), @$req[0 .. 1],
                                            [['Api-Key', API_KEY], ['Content-Type', 'application/json'],
                                             ['Idempotency-Key', "gone-$g->{customer}"]],
                                            $req->[3]);
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => server_port(),
                                  Proto => 'tcp') or die "connect: $!";
    print {$s} $bytes;
    push @socks, $s;
}
ok(wait_until(sub { scalar(fake_requests(qr{^POST /v1/invoices$})) >= 3 }, 5),
   'three creates reached Stripe');
close $_ for @socks;
my $mark6 = error_log_mark();
my @twins = parallel_requests(map { create_req($_->{customer}, "gone-$_->{customer}") } @gone);
subtest 'the same keys while the abandoned creates still run: 409 in use' => sub {
    for my $r (@twins) {
        is($r->status, 409, 'status 409') or diag $r->describe;
        json_check($r, 'error.code = "idempotency_key_in_use"');
    }
};
my @stored = map {
    my $cus = $_->{customer};
    wait_until(sub {
        my $st = sql_value('SELECT status FROM invoices WHERE stripe_customer_id = '
                           . quote($cus)) // '';
        $st eq 'open' && $st }, 10) // 'not open'
} @gone;
is_deeply(\@stored, [('open') x 3],
          'the clients left; the Stripe sequences still completed and were stored open')
    or diag explain \@stored;
unlike(error_log_since($mark6), qr/WARNING|don't own a lock/,
       'a 409 in use releases no lock it does not hold (no PostgreSQL WARNING on stderr)');
is(scalar(fake_requests(qr{^POST /v1/invoices/in_\w+/finalize$})), 3, 'Stripe finalized all three');
fake_config({ latency_ms => 0 });
for my $g (@gone) {
    my $r = api_request(@{ create_req($g->{customer}, "gone-$g->{customer}") }[0 .. 3]);
    my @at = stripe_invoices_of($g->{customer});
    subtest "the client of $g->{customer} comes back with its key" => sub {
        is($r->status, 201, 'status 201') or diag $r->describe;
        is($r->header('Idempotent-Replayed'), 'true', 'the stored answer, replayed');
        is(scalar @at, 1, 'one invoice at Stripe');
        is(($r->json_or_undef // {})->{id}, $at[0]{id}, 'the same invoice');
    };
}

is_deeply([worker_pids($master)], \@workers, 'the same worker process (no crash)');
my $fd1;
ok(wait_until(sub { ($fd1 = fd_count($workers[0])) <= $fd0 + 1 }, 5),
   "no descriptor leak: the worker holds $fd0 descriptors before the faults, then "
   . ($fd1 // '?'));

done_testing();
