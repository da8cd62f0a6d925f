# Filtered and cursor pages, and the summary, in the caches: each filter has its own entry
# (a different filter never gets another's page), under the same
# generation as the plain list, so a write is visible to every filter at
# once: on the node that wrote, and on another node on the very next
# request.

use strict;
use warnings;
use Test::More;
use Invoices::Test;
use Invoices::Redis;

my $redis = start_redis();
# Redis answers in well under a millisecond here; a command that waits
# longer than invoices_redis_timeout makes the worker bypass Redis, and a
# write's bump is then sent late (docs/cache.md).  This file is about
# visibility with Redis healthy, so a loaded machine's stall must not
# count as a fault: 1 s (t/cache_faults.t tests the faults).
my $TIMEOUT = '1s';
my $WHSEC = 'whsec_' . join '', map { ('A'..'Z', 'a'..'z', 0..9)[rand 62] } 1 .. 32;

start_server(
    workers      => 1,
    before_start => sub { write_conf_file('whsec', "$WHSEC\n") },
    http_config  => cache_http_config($redis->{port}, timeout => $TIMEOUT),
    server_config => webhook_location(),
);
my $PORT = server_port();
my $B = start_nginx(workers => 2,
                    http_config => cache_http_config($redis->{port}, timeout => $TIMEOUT),
                    server_config => webhook_location(),
                    copy_files => ['whsec']);

sub ids { my ($res) = @_; return [map { $_->{invoiceId} } @{ ($res->json_or_undef // {})->{invoices} || [] }] }

my $cus = 'cus_FilterCache01';
my @inv = map {
    my $s = stripe_invoice(customer => $cus, status => 'open', total => 1000 * $_,
                           created => time - 3600 + $_);
    is(deliver_event($PORT, invoice_event("invoice.finalized", $s), $WHSEC)->status,
       200, "invoice $_ stored");
    $s;
} 1 .. 4;
insert_invoice(status => 'paid', stripe_customer_id => 'cus_Other0001', amount => 5);

my $open = "?status=open&customer=$cus";
my $paid = "?status=paid";

list_is(list($open), 'MISS', 'open of the customer: MISS');
my $hit = list($open);
list_is($hit, 'HIT', 'open of the customer again: HIT');
is_deeply(ids($hit), [reverse map { $_->{id} } @inv], '... the four open invoices');
my $p = list($paid);
list_is($p, 'MISS', 'another filter: its own entry, MISS');
is(scalar @{ ids($p) }, 1, '... one paid invoice');
list_is(list('?status=open'), 'MISS', 'status=open alone: its own entry too');
list_is(list("?status=open&customer=$cus&limit=2"), 'MISS', 'the same filter with another limit: MISS');
my $c1 = list("?status=open&customer=$cus&limit=2&starting_after=$inv[2]{id}");
list_is($c1, 'MISS', 'a cursor page: MISS');
is_deeply(ids($c1), [$inv[1]{id}, $inv[0]{id}], '... the two after the cursor');
list_is(list("?status=open&customer=$cus&limit=2&starting_after=$inv[2]{id}"), 'HIT',
        'the cursor page again: HIT');
list_is(list_on($B->{port}, $open), 'HIT', 'node B: the page A stored is a HIT');
my $sum = "/summary?customer=$cus";
list_is(list($sum), 'MISS', 'the summary: MISS');
my $sum_hit = list($sum);
list_is($sum_hit, 'HIT', 'the summary again: HIT');
is(($sum_hit->json_or_undef // {})->{totals}[0]{count}, 4, '... four open invoices');

# a write: invoice 3 is paid.  Every filter sees it on the next request.
my $paid3 = stripe_invoice(id => $inv[2]{id}, customer => $cus, status => 'paid',
                           total => 3000, created => $inv[2]{created});
is(deliver_event($PORT, invoice_event('invoice.paid', $paid3), $WHSEC)->status, 200,
   'invoice 3 paid, through node A');

my $after = list($open);
list_is($after, 'MISS', 'open of the customer after the write: MISS');
is_deeply(ids($after), [map { $_->{id} } @inv[3, 1, 0]], '... invoice 3 is gone from it');
is(($after->json_or_undef // {})->{count}, 3, '... count 3');
my $p2 = list($paid);
ok(grep({ $_ eq $inv[2]{id} } @{ ids($p2) }), 'status=paid shows invoice 3 at once');
is(($p2->json_or_undef // {})->{count}, 2, '... count 2');
my $sum_after = list($sum);
list_is($sum_after, 'MISS', 'the summary after the write: MISS');
is_deeply([map { "$_->{status} $_->{count}" } @{ ($sum_after->json_or_undef // {})->{totals} || [] }],
          ['open 3', 'paid 1'], '... three open, one paid');
my $c2 = list("?status=open&customer=$cus&limit=2&starting_after=$inv[3]{id}");
is_deeply(ids($c2), [$inv[1]{id}, $inv[0]{id}], 'a cursor page skips it at once');
for my $i (1 .. 4) {    # both of B's workers
    my $r = list_on($B->{port}, $open);
    is_deeply(ids($r), [map { $_->{id} } @inv[3, 1, 0]],
              "node B, request $i: the new answer (" . ($r->header('X-Cache') // '?') . ')');
}

# a write through B, seen by A's filters on its very next request
my $paid4 = stripe_invoice(id => $inv[3]{id}, customer => $cus, status => 'paid',
                           total => 4000, created => $inv[3]{created});
is(deliver_event($B->{port}, invoice_event('invoice.paid', $paid4), $WHSEC)->status, 200,
   'invoice 4 paid, through node B');
my $openA = list($open);
is_deeply(ids($openA), [map { $_->{id} } @inv[1, 0]], 'node A: open of the customer at once')
    or diag $openA->describe, "node B's log:\n", join "\n",
            grep { /redis|\[(?:warn|error)\]/i } split /\n/, nginx_log($B);
is((list($paid)->json_or_undef // {})->{count}, 3, 'node A: status=paid counts 3 at once');

my ($okB, $stB) = stop_nginx($B);
ok($okB && !$stB, 'node B quits gracefully');
my @badB = grep { /\[(?:alert|crit|emerg)\]/ } split /\n/, nginx_log($B);
ok(!@badB, 'node B: no [alert], [crit] or [emerg]') or diag join "\n", @badB;

my @off = kept_counts_off();
is(scalar @off, 0, 'the kept counts (total, per group) agree with the rows')
    or diag join "\n", @off;

done_testing();
