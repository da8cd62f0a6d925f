# PostgreSQL goes away and comes back, twice, while nginx keeps running:
# every request during the outage is a fast 503 JSON with Retry-After,
# and the first request after the restart (and every one after it, on
# every pool thread) is a 200, with no nginx restart.

use strict;
use warnings;
use Test::More;
use IO::Socket::INET;
use Time::HiRes qw(time sleep);
use Invoices::Test;

my $THREADS = 4;
start_server(threads => $THREADS);

my @inv = insert_rows(invoices => map { {
    stripe_invoice_id => "in_outage$_",
    status            => 'paid',
    amount            => $_,
    currency          => 'eur',
    stripe_created_at => "2024-05-0${_}T00:00:00.000Z",
} } 1 .. 3);
my $pid = server_info()->{pid};
my $FAST = 2 * time_factor();    # "at once": far below the 5 s of the contract

# concurrent($n, $method, $path): $n requests in flight at once (so that
# every pool thread gets one), answers in order.
sub concurrent {
    my ($n, $method, $path) = @_;
    my @socks;
    my $t0 = time;
    for (1 .. $n) {
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                      PeerPort => server_port(), Proto => 'tcp')
            or die "connect: $!";
        binmode $s;
        print {$s} "$method $path HTTP/1.1\r\nHost: x\r\nApi-Key: test-key\r\n"
                 . "Connection: close\r\n\r\n";
        push @socks, $s;
    }
    my @res;
    for my $s (@socks) {
        my $buf = '';
        my $deadline = time + 20 * time_factor();
        while (time < $deadline) {
            my $rin = '';
            vec($rin, fileno($s), 1) = 1;
            next unless select(my $r = $rin, undef, undef, 0.5);
            my $n = sysread($s, $buf, 65536, length $buf);
            last unless $n;
        }
        close $s;
        push @res, Invoices::Test::Response->parse($buf, elapsed => time - $t0);
    }
    return @res;
}

sub check_503 {
    my ($res, $name) = @_;
    subtest $name => sub {
        is($res->status, 503, 'status 503') or diag $res->describe;
        cmp_ok($res->elapsed, '<', $FAST, "answered within ${FAST}s");
        is($res->header('Content-Type'), 'application/json; charset=utf-8',
           'JSON content type');
        like($res->header('Retry-After') // '', qr/^[1-9]\d*$/,
             'Retry-After: a positive number of seconds');
        json_check($res, <<'EOC');
error.type = "api_error"
error.code = "database_unavailable"
error.message ~ \S
EOC
        unlike($res->body, qr/(?i)postgres|libpq|connection refused|127\.0\.0\.1/,
               'no internals in the message');
    };
}

sub check_200 {
    my ($res, $name, $jp) = @_;
    subtest $name => sub {
        is($res->status, 200, 'status 200') or diag $res->describe;
        json_check($res, $jp) if $jp;
    };
}

# warm up: every pool thread holds an open connection
my @warm = concurrent(2 * $THREADS, GET => '/admin/api/invoices');
is(scalar(grep { $_->status == 200 } @warm), 2 * $THREADS,
   'before the outage: concurrent requests all 200');

for my $round (1, 2) {
    pg_stop();

    check_503(api_request(GET => '/admin/api/invoices'),
              "round $round, PG down: list is 503");
    check_503(api_request(GET => '/admin/api/invoices?page=2&limit=1'),
              "round $round, PG down: list again, still 503 at once");
    check_503(api_request(GET => "/admin/api/invoices/$inv[0]{id}"),
              "round $round, PG down: one invoice by _id is 503");
    check_503(api_request(GET => '/admin/api/invoices/in_outage2'),
              "round $round, PG down: one invoice by Stripe id is 503");
    check_503(api_request(GET => '/admin/api/invoices?status=paid&q=outage'),
              "round $round, PG down: a filtered list is 503");
    check_503(api_request(GET => "/admin/api/invoices?starting_after=$inv[0]{id}"),
              "round $round, PG down: a cursor page is 503");
    check_503(api_request(GET => '/admin/api/invoices/summary'),
              "round $round, PG down: the summary is 503");
    check_503(api_request(GET => '/admin/api/invoices/export'),
              "round $round, PG down: the export is 503 (nothing sent yet)");

    my $head = api_request(HEAD => '/admin/api/invoices');
    is($head->status, 503, "round $round, PG down: HEAD is 503");
    is($head->raw_body, '', "round $round, PG down: HEAD has no body");

    my @down = concurrent(2 * $THREADS, GET => '/admin/api/invoices');
    is(scalar(grep { $_->status == 503 } @down), 2 * $THREADS,
       "round $round, PG down: " . 2 * $THREADS . " concurrent requests all 503");
    my ($slowest) = sort { $b <=> $a } map { $_->elapsed } @down;
    cmp_ok($slowest, '<', $FAST, "round $round, PG down: all of them within ${FAST}s");

    # what needs no database still works
    my $noauth = request(GET => '/admin/api/invoices');
    is($noauth->status, 401, "round $round, PG down: no key is still 401");

    pg_start();

    check_200(api_request(GET => '/admin/api/invoices'),
              "round $round, PG back: the next request is 200", "count = 3\ninvoices.# = 3");
    check_200(api_request(GET => "/admin/api/invoices/$inv[0]{id}"),
              "round $round, PG back: one invoice is 200", qq(_id = "$inv[0]{id}"));
    check_200(api_request(GET => '/admin/api/invoices/summary'),
              "round $round, PG back: the summary is 200", "count = 3");
    my @up = concurrent(2 * $THREADS, GET => '/admin/api/invoices?limit=1');
    is(scalar(grep { $_->status == 200 } @up), 2 * $THREADS,
       "round $round, PG back: concurrent requests (every thread) all 200")
        or diag join "\n", map { $_->describe } grep { $_->status != 200 } @up;
    my @seq = map { api_request(GET => '/admin/api/invoices/in_outage3')->status } 1 .. 8;
    is_deeply(\@seq, [(200) x 8], "round $round, PG back: 8 more requests all 200");

    is(server_info()->{pid}, $pid, "round $round: the same nginx master");
    ok(kill(0, $pid), "round $round: nginx still running");
}

# and the data written during nothing is still right
is(sql_value('SELECT count(*) FROM invoices'), 3, 'database intact after two outages');

done_testing();
