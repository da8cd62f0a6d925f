# The background work (ngx_http_invoices_housekeeping.c): the reconciler
# pulls Stripe's invoice events that no delivery brought (the fake's
# webhooks switched off), applies each one once through the webhook's own
# statement, takes no event twice (one delivered as well, one pulled
# again), and is led by one node at a time: the node holding the lease is
# killed, the other takes over and logs it.  Events piled up past a page
# (Stripe's list answering 500 meanwhile) are pulled in one sweep of
# several pages; a sweep cut by a 500 after its first page moves no
# watermark, applies nothing twice and loses nothing once Stripe answers
# again (the fake's fault rules, on the reconciler's requests only).  The
# pruning deletes old event ids, tombstones and finished Idempotency-Keys
# in batches, and nothing younger than the retentions.  Both are counted
# in the metrics.
#
# The nodes here: this file's nginx (reads, the webhook, the metrics; no
# reconciler) and two more nginx on the same database, each with
# invoices_reconcile 1s.

use strict;
use warnings;
use Test::More;
use JSON::PP ();
use POSIX ();
use Time::HiRes qw(time sleep);
use Invoices::Test;
use Invoices::Webhook;
use Invoices::Redis qw(start_nginx stop_nginx nginx_log);

my $W = new_whsec();
my $METRICS = "        location = /metrics { invoices_metrics; }\n";
start_server(stripe => 1,
             server_config => webhook_location(secrets => ['file:' . secret_file($W)])
                              . $METRICS);
default_secret($W);
my $J = JSON::PP->new->utf8->canonical;

# deliveries are lost: the fake makes events, and sends none
fake_config({ webhooks => { url => 'http://127.0.0.1:' . server_port() . '/stripe/webhook',
                            secret => $W, enabled => JSON::PP::false } });

my @nodes = map {
    start_nginx(stripe => 1, copy_files => ['stripe.key'],
                location_config => '            invoices_reconcile 1s;',
                server_config => $METRICS)
} 1 .. 2;

sub holder { sql_value("SELECT holder FROM invoices_leases WHERE task = 'reconcile'") // '' }
sub status_of { sql_value('SELECT status FROM invoices WHERE stripe_invoice_id = ' . quote($_[0])) // 'none' }
sub metric {
    my ($port, $name) = @_;
    my $res = Invoices::Test::HTTP::request($port, GET => '/metrics');
    my ($v) = ($res->body // '') =~ /^\Q$name\E (\d+)$/m;
    return $v // 0;
}
sub applied_total { my $n = 0; $n += metric($_->{port}, 'invoices_reconcile_events_total{result="applied"}') for grep { $_->{pid} } @nodes; $n }
sub node_of {
    my ($holder) = @_;
    my ($pid) = $holder =~ / (\d+)\z/ or return;
    for my $n (grep { $_->{pid} } @nodes) {
        return $n if grep { $_ == $pid } worker_processes($n->{pid});
    }
    return;
}

# an open invoice made through the API, then collected by Stripe
sub paid_in_stripe {
    my $res = api_request(POST => '/admin/api/invoices', ['Content-Type' => 'application/json'],
        $J->encode({ items => [{ name => 'Lost', amount => 900 }],
                     customer => $_[0]{customer} }));
    is($res->status, 201, 'an invoice: 201') or diag $res->describe;
    my $id = ($res->json_or_undef // {})->{id} // 'in_none';
    is(status_of($id), 'open', 'open here');
    my $adv = fake_control(POST => '/_fake/advance');
    ok((grep { $_ eq $id } @{ $adv->{collected} || [] }), 'Stripe collected it (paid there)');
    return $id;
}

#----------------------------------------------------------------------
# one node leads

ok(wait_until(sub { holder() ne '' }, 10), 'a node took the reconciler\'s lease')
    or diag map { nginx_log($_) } @nodes;
my $leader = node_of(holder());
ok($leader, 'the holder is worker 0 of one of the two nodes') or diag holder();
$leader //= $nodes[0];
my ($follower) = grep { $_ != $leader } @nodes;
# (the pass logs it when it ends, a moment after it took the lease)
ok(wait_until(sub { nginx_log($leader) =~ /\[warn\].*invoices: the reconciler runs on this node now/ }, 5),
   'the leader says so in its log') or diag nginx_log($leader);
unlike(nginx_log($follower), qr/the reconciler runs on this node/, 'the other does not');

#----------------------------------------------------------------------
# lost deliveries are pulled and applied

my $visa = linked_customer(payment_method => 'pm_card_visa');
my $a0 = applied_total();
my $lost = paid_in_stripe($visa);
ok(wait_until(sub { status_of($lost) eq 'paid' }, 10), 'the reconciler brought "paid"')
    or diag nginx_log($leader);
is(scalar(@{ fake_control(GET => '/_fake/webhooks') }), 0, 'no delivery was attempted');

my ($st, $events) = fake_stripe(GET => "/v1/events?limit=100");
my @mine = grep { ($_->{data}{object}{id} // '') eq $lost } @{ $events->{data} || [] };
ok(@mine >= 3, 'Stripe has its events (created, finalized, paid, ...)') or diag scalar @mine;
# (the pass applies them one statement each: "paid" may show before the last)
my $in = join(',', map { quote($_->{id}) } @mine);
wait_until(sub { sql_value("SELECT count(*) FROM webhook_events WHERE id IN ($in)") == @mine }, 5);
is(sql_value("SELECT count(*) FROM webhook_events WHERE id IN ($in)"), scalar @mine,
   'every one recorded, once');
ok(wait_until(sub { applied_total() - $a0 >= @mine }, 5), 'counted as applied')
    or diag applied_total() - $a0;
my $pulled = metric($leader->{port}, 'invoices_reconcile_events_total{result="pulled"}');
ok($pulled >= @mine, "the leader counted them pulled ($pulled)");

# the history shows them (an event pulled is an event seen)
my $hist = api_request(GET => "/admin/api/invoices/$lost/events")->json_or_undef // {};
is(scalar(grep { $_->{source} eq 'stripe' } @{ $hist->{events} || [] }), scalar @mine,
   "the invoice's history has each event");

#----------------------------------------------------------------------
# no event twice: pulled again each pass (the overlap), delivered as well

my $a1 = applied_total();
sleep 3;
is(applied_total(), $a1, 'passes over events already seen apply nothing');
is(result_of(deliver_event($mine[0])), 'duplicate', 'the webhook delivering one of them: duplicate');

fake_config({ webhooks => { enabled => JSON::PP::true } });
my $delivered = paid_in_stripe($visa);
ok(wait_until(sub { status_of($delivered) eq 'paid' }, 10), 'delivered by the webhook: paid');
sleep 3;
is(applied_total(), $a1, 'the reconciler applies none of the delivered events');
fake_config({ webhooks => { enabled => JSON::PP::false } });

#----------------------------------------------------------------------
# the leader dies: the other node takes over within its lease

my $old = holder();
kill 'KILL', -$leader->{pid};
waitpid $leader->{pid}, 0;
delete $leader->{pid};
ok(wait_until(sub { holder() ne $old }, 15), 'another node holds the lease');
is(node_of(holder()), $follower, 'the surviving node');
ok(wait_until(sub { nginx_log($follower)
                    =~ /the reconciler runs on this node now \("[^"]+"; before: "\Q$old\E"\)/ }, 5),
   'its log says it took over, and from whom') or diag nginx_log($follower);

my $after = paid_in_stripe($visa);
ok(wait_until(sub { status_of($after) eq 'paid' }, 10), 'the survivor applies what is lost now');

#----------------------------------------------------------------------
# a sweep of more than one page (the module asks for 100 events a page):
# the events of invoices paid in Stripe while Stripe's list of events
# answered 500 pile up past a page; when it answers again one pass
# follows has_more/starting_after through all of them

my $survivor = $follower;
sub pulled_total { metric($survivor->{port}, 'invoices_reconcile_events_total{result="pulled"}') }
sub watermark { sql_value("SELECT watermark FROM invoices_leases WHERE task = 'reconcile'") // '' }
sub recorded {
    my @ids = @_ or return 0;
    return sql_value('SELECT count(*) FROM webhook_events WHERE id IN ('
                     . join(',', map { quote($_) } @ids) . ')');
}
# every invoice.* event of the fake, newest first (pages of 100)
sub invoice_events {
    my (@all, $after);
    while (1) {
        my (undef, $l) = fake_stripe(GET => '/v1/events?type=invoice.*&limit=100'
                                            . ($after ? "&starting_after=$after" : ''));
        push @all, @{ $l->{data} || [] };
        last unless $l->{has_more} && @{ $l->{data} || [] };
        $after = $l->{data}[-1]{id};
    }
    return @all;
}
# $n invoices of 4 lines made through the API, then collected by Stripe:
# their ids, and their invoice.* events at Stripe (newest first)
sub lost_invoices {
    my ($n) = @_;
    my (@ids, %mine);
    for my $i (1 .. $n) {
        my $res = api_request(POST => '/admin/api/invoices', ['Content-Type' => 'application/json'],
            $J->encode({ items => [map { { name => "Line $_", amount => 100 * $_ } } 1 .. 4],
                         customer => $visa->{customer} }));
        my $id = ($res->json_or_undef // {})->{id};
        $res->status == 201 && $id or diag $res->describe;
        push @ids, $id // 'in_none';
    }
    fake_control(POST => '/_fake/advance');
    $mine{$_} = 1 for @ids;
    return (\@ids, [grep { $mine{ $_->{data}{object}{id} // '' } } invoice_events()]);
}
# the faults: the reconciler's list of events answers 500 (its every page,
# or its pages after the first); this file's own reads of the list (no
# created[gte]) are answered
my $LIST_FAILS = { path => 'GET /v1/events', query => 'created%5Bgte%5D', status => 500 };
my $NEXT_PAGE_FAILS = { path => 'GET /v1/events', query => 'created%5Bgte%5D=\\d+&starting_after=',
                        status => 500 };
# a pass that failed on GET /v1/events, logged after $mark
sub failed_since {
    my ($mark) = @_;
    return substr(nginx_log($survivor), $mark)
        =~ /invoices: the background work failed: GET \/v1\/events of Stripe failed \(HTTP 500[^)]*\)/;
}

# the line says what Stripe said, but for a 401 (its text quotes the key)
fake_config({ faults => [{ %$LIST_FAILS, status => 400,
                           error => { message => 'No such thing, says this test' } }] });
my $mark = length nginx_log($survivor);
ok(wait_until(sub { substr(nginx_log($survivor), $mark)
                        =~ /Stripe failed \(HTTP 400, request req_\w+\): No such thing, says this test$/m }, 10),
   "a 400 on the list of events: logged with Stripe's request id and message")
    or diag substr(nginx_log($survivor), $mark);
fake_config({ faults => [{ %$LIST_FAILS, status => 401 }] });
$mark = length nginx_log($survivor);
ok(wait_until(sub { substr(nginx_log($survivor), $mark) =~ /Stripe failed \(HTTP 401[^)]*\)$/m }, 10),
   'a 401: logged without Stripe\'s text') or diag substr(nginx_log($survivor), $mark);
unlike(substr(nginx_log($survivor), $mark), qr/Invalid API Key|sk_test/, '... none of the key');

fake_config({ faults => [$LIST_FAILS] });
$mark = length nginx_log($survivor);
ok(wait_until(sub { failed_since($mark) }, 10), 'Stripe\'s list of events answers 500: the pass fails and says so')
    or diag nginx_log($survivor);
my ($applied0, $pulled0, $w0) = (applied_total(), pulled_total(), watermark());
my ($many, $many_ev) = lost_invoices(14);
cmp_ok(scalar @$many_ev, '>', 100, scalar(@$many_ev) . ' events of 14 invoices: more than a page of 100');
$mark = length nginx_log($survivor);
ok(wait_until(sub { failed_since($mark) }, 10), 'a pass after them failed too');
is(recorded(map { $_->{id} } @$many_ev), 0, 'none of them applied meanwhile');
is(watermark(), $w0, 'the watermark stays');
is(pulled_total(), $pulled0, 'nothing counted pulled');

my $n_all = () = invoice_events();
fake_config({ faults => [] });
ok(wait_until(sub { recorded(map { $_->{id} } @$many_ev) == @$many_ev }, 15),
   'Stripe answers again: every event applied')
    or diag recorded(map { $_->{id} } @$many_ev) . ' of ' . @$many_ev;
ok(wait_until(sub { !grep { status_of($_) ne 'paid' } @$many }, 5), 'every invoice paid here');
my $n = @$many_ev;
ok(wait_until(sub { nginx_log($survivor) =~ /background work: $n_all Stripe events pulled, $n applied/ }, 5),
   "one pass pulled the $n_all invoice events since the watermark (pages of 100) and applied the $n")
    or diag nginx_log($survivor);
ok(wait_until(sub { pulled_total() - $pulled0 >= 2 * $n_all }, 10),
   'the next pass reads them all again');
is(applied_total() - $applied0, $n, "applied: counted $n, once each");
my $dp = pulled_total() - $pulled0;
ok($dp >= $n_all && $dp % $n_all == 0,
   "pulled: $dp, $n_all a complete pass (each pass reads the window again)");
cmp_ok(watermark(), '>=', $many_ev->[0]{created}, 'the watermark moves on to the newest event');
my $hist_ok = grep {
    my $id = $_;
    my $h = api_request(GET => "/admin/api/invoices/$id/events")->json_or_undef // {};
    my @got = sort map { $_->{id} } grep { $_->{source} eq 'stripe' } @{ $h->{events} || [] };
    my @want = sort map { $_->{id} } grep { $_->{data}{object}{id} eq $id } @$many_ev;
    "@got" eq "@want"
} @$many;
is($hist_ok, scalar @$many, 'each invoice\'s history has each of its events once');

#----------------------------------------------------------------------
# Stripe fails mid-sweep: the first page (the newest 100) is read and
# applied, the next one answers 500, pass after pass; nothing moves the
# watermark, nothing is applied twice, and once Stripe answers the rest
# is applied, once

fake_config({ faults => [$LIST_FAILS] });
$mark = length nginx_log($survivor);
ok(wait_until(sub { failed_since($mark) }, 10), 'Stripe\'s list fails again');
($applied0, $w0) = (applied_total(), watermark());
my ($more, $more_ev) = lost_invoices(14);
cmp_ok(scalar @$more_ev, '>', 100, scalar(@$more_ev) . ' events of 14 more invoices');
my @newest = map { $_->{id} } @{ $more_ev }[0 .. 99];
my @older = map { $_->{id} } @{ $more_ev }[100 .. $#$more_ev];
fake_config({ faults => [$NEXT_PAGE_FAILS] });
ok(wait_until(sub { recorded(@newest) == 100 }, 15), 'the first page answered: its 100 events applied')
    or diag recorded(@newest);
$mark = length nginx_log($survivor);
ok(wait_until(sub { failed_since($mark) }, 10), 'the next page answers 500: the pass fails and says so')
    or diag nginx_log($survivor);
$mark = length nginx_log($survivor);
ok(wait_until(sub { failed_since($mark) }, 10), 'and the pass after it: the first page again, the next 500');
is(recorded(@older), 0, 'the ' . @older . ' older events: not yet');
is(applied_total() - $applied0, 100, 'applied: 100, none twice over the passes since');
is(watermark(), $w0, 'the watermark stays where it was');
fake_config({ faults => [] });
ok(wait_until(sub { recorded(@older) == @older }, 15), 'Stripe answers again: the rest applied')
    or diag recorded(@older);
ok(wait_until(sub { !grep { status_of($_) ne 'paid' } @$more }, 5), 'every invoice paid here');
wait_until(sub { applied_total() - $applied0 >= @$more_ev }, 5);
my $p1 = pulled_total();
ok(wait_until(sub { pulled_total() > $p1 }, 10), 'a pass more');
is(applied_total() - $applied0, scalar @$more_ev, 'applied: ' . @$more_ev . ', each event once');
is(recorded(map { $_->{id} } @$more_ev), scalar @$more_ev, 'each recorded');

#----------------------------------------------------------------------
# the pruning: old rows go, young ones stay

sql_do(q{
    INSERT INTO webhook_events (id, type, stripe_created_at, received_at)
    SELECT 'evt_1OldOne' || lpad(g::text, 16, '0'), 'invoice.paid', now(),
           now() - interval '46 days'
    FROM generate_series(1, 2500) g;
    INSERT INTO webhook_events (id, type, stripe_created_at, received_at)
    VALUES ('evt_1YoungOne0000000000001', 'invoice.paid', now(), now() - interval '44 days');
    INSERT INTO invoices_deleted (stripe_invoice_id, deleted_at)
    VALUES ('in_1OldTombstone000000001', now() - interval '46 days'),
           ('in_1YoungTombstone0000001', now() - interval '1 day');
    INSERT INTO idempotency_keys (key, request_hash, state, response_status, response_body,
                                  updated_at)
    VALUES ('old-done', 'x', 'done', 201, '{}', now() - interval '31 days'),
           ('young-done', 'x', 'done', 201, '{}', now() - interval '29 days');
    INSERT INTO idempotency_keys (key, request_hash, state, updated_at)
    VALUES ('old-running', 'x', 'running', now() - interval '60 days');
});
my $p0 = metric($follower->{port}, 'invoices_pruned_rows_total{table="webhook_events"}')
       + metric(server_port(), 'invoices_pruned_rows_total{table="webhook_events"}');
ok(wait_until(sub { !sql_value("SELECT count(*) FROM webhook_events WHERE id LIKE 'evt_1OldOne%'") }, 15),
   '2,500 event ids past 45 days: pruned (in batches of 1,000)');
ok(wait_until(sub { !sql_value("SELECT count(*) FROM idempotency_keys WHERE key = 'old-done'") }, 5),
   'a finished key past 30 days: pruned');
is(sql_value("SELECT count(*) FROM webhook_events WHERE id = 'evt_1YoungOne0000000000001'"), 1,
   'an event id of 44 days stays');
is(sql_value("SELECT string_agg(stripe_invoice_id, ',' ORDER BY 1) FROM invoices_deleted"
             . " WHERE stripe_invoice_id LIKE 'in_1%Tombstone%'"),
   'in_1YoungTombstone0000001', 'the old tombstone pruned, the young one kept');
is(sql_value("SELECT string_agg(key, ',' ORDER BY key) FROM idempotency_keys"
             . " WHERE key IN ('old-done', 'young-done', 'old-running')"),
   'old-running,young-done', 'a young finished key and an unfinished one stay');
ok(sql_value('SELECT count(*) FROM webhook_events WHERE id IN ('
             . join(',', map { quote($_->{id}) } @mine) . ')') == @mine,
   'recent events stay');
# (counted when the pass that deleted them ends)
sub pruned_events {
    return metric($follower->{port}, 'invoices_pruned_rows_total{table="webhook_events"}')
         + metric(server_port(), 'invoices_pruned_rows_total{table="webhook_events"}');
}
wait_until(sub { pruned_events() - $p0 >= 2500 }, 5);
is(pruned_events() - $p0, 2500, 'the metrics count 2,500 event ids pruned');

# the pruning's holder samples q's trigrams again when the sample is over
# an hour old (migrations 0013, 0014), not before
sql_do("INSERT INTO invoices_search_trigram (field, trigram, n) VALUES ('number', 'stale', 1)");
sql_do("UPDATE invoices_search_sample SET sampled_at = now() - interval '59 minutes'");
sleep 3 * time_factor();
is(sql_value("SELECT count(*) FROM invoices_search_trigram WHERE trigram = 'stale'"), 1,
   "q's trigrams: a sample of 59 minutes is kept");
sql_do("UPDATE invoices_search_sample SET sampled_at = now() - interval '61 minutes'");
ok(wait_until(sub { sql_value("SELECT sampled_at > now() - interval '1 minute'
                                      AND NOT EXISTS (SELECT 1 FROM invoices_search_trigram
                                                      WHERE trigram = 'stale')
                               FROM invoices_search_sample") eq 't' },
              10),
   "... one of 61 minutes is taken again by a housekeeping pass");

stop_nginx($_) for grep { $_->{pid} } @nodes;

done_testing();
