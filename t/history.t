# An invoice's history: the audit record of every create that went to
# Stripe (the key's name, never the key; the Idempotency-Key; replays; the
# status answered, Stripe's refusals included; bad input is not recorded)
# and GET /admin/api/invoices/{id}/events, which merges the webhook events
# seen for the invoice (whether each changed the row) with those records,
# oldest first.  Also: by _id and by Stripe id, a deleted invoice's history
# by Stripe id, 404/400/405, read keys, the 1,000 cap, PostgreSQL down.

use strict;
use warnings;
use Test::More;
use JSON::PP ();
use Invoices::Test;
use Invoices::Webhook;

my $KEYS = <<'KEYS';
ops-admin write test-write-key-hist
reader read test-read-key-hist
test-bare-key-hist
KEYS

my $W = new_whsec();
start_server(stripe => 1, keys => $KEYS,
             server_config => webhook_location(secrets => ['file:' . secret_file($W)]));
default_secret($W);

my $J = JSON::PP->new->utf8->canonical;
my $main = linked_customer(payment_method => 'pm_card_visa');
my $body = $J->encode({ items => [{ name => 'History', amount => 4200 }],
                        customer => $main->{customer} });

sub as_key {
    my ($key, $method, $path, $headers, $content) = @_;
    return request($method, $path, [['Api-Key', $key], @{ $headers || [] }], $content);
}

sub events_of {
    my ($id, $key) = @_;
    my $res = as_key($key // 'test-read-key-hist', GET => "/admin/api/invoices/$id/events");
    is($res->status, 200, "GET $id/events: 200") or diag $res->describe;
    return $res->json_or_undef // {};
}

my $CT = ['Content-Type', 'application/json'];

#----------------------------------------------------------------------
# a create, its replay, then Stripe's events

my $res = as_key('test-write-key-hist', POST => '/admin/api/invoices',
                 [$CT, ['Idempotency-Key', 'hist-create-1']], $body);
is($res->status, 201, 'create: 201') or diag $res->describe;
my $stripe_id = ($res->json_or_undef // {})->{id} // '';
like($stripe_id, qr/^in_/, 'create: the Stripe invoice id');

$res = as_key('test-write-key-hist', POST => '/admin/api/invoices',
              [$CT, ['Idempotency-Key', 'hist-create-1']], $body);
is($res->status, 201, 'replay: 201');
is($res->header('Idempotent-Replayed'), 'true', 'replay: replayed');

my $row = invoice_row($stripe_id);
ok($row, 'the row is stored');
my $id = $row->{id} // 'x';

# Stripe's events: one that changes the row, the same again (a duplicate
# delivery: seen once), an older one that changes nothing
my $paid = stripe_invoice(id => $stripe_id, status => 'paid', total => 4200,
                          customer => $main->{customer});
my $ev_paid = invoice_event('invoice.paid', $paid);
is(result_of(deliver_event($ev_paid)), 'updated', 'invoice.paid: updated');
is(result_of(deliver_event($ev_paid)), 'duplicate', 'the same event again: duplicate');
my $late = invoice_event('invoice.payment_failed',
                         stripe_invoice(id => $stripe_id, status => 'open', total => 4200,
                                        customer => $main->{customer}),
                         created => time - 7200);
is(result_of(deliver_event($late)), 'unchanged', 'a late payment_failed: unchanged');

my $h = events_of($id);
is($h->{invoiceId}, $stripe_id, 'events: the Stripe invoice id');
is(JSON::PP::is_bool($h->{has_more}) && !$h->{has_more} ? 'no' : 'yes', 'no', 'events: has_more false');
my @ev = @{ $h->{events} || [] };
is(scalar @ev, 4, 'events: two admin records and two Stripe events (the duplicate once)')
    or diag $J->encode(\@ev);
is_deeply([map { $_->{source} } @ev], [qw(admin admin stripe stripe)],
          'events: oldest first, the create and its replay before the events')
    or diag $J->encode(\@ev);
is_deeply([map { { %$_, at => 'T' } } @ev[0, 1]], [
    { source => 'admin', action => 'create', keyName => 'ops-admin', status => 201,
      idempotencyKey => 'hist-create-1', replayed => JSON::PP::false, at => 'T' },
    { source => 'admin', action => 'create', keyName => 'ops-admin', status => 201,
      idempotencyKey => 'hist-create-1', replayed => JSON::PP::true, at => 'T' },
], 'events: the admin records: key name, action, status, Idempotency-Key, replayed')
    or diag $J->encode(\@ev);
is_deeply([map { [$_->{id}, $_->{type}, $_->{changed} ? 1 : 0] } @ev[2, 3]],
          [[$ev_paid->{id}, 'invoice.paid', 1], [$late->{id}, 'invoice.payment_failed', 0]],
          'events: each Stripe event once, with whether it changed the row')
    or diag $J->encode(\@ev);
is($ev[3]{created}, iso_ms($late->{created}), "events: Stripe's created, ISO 8601 with ms");
like($_->{at}, qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\z/, "events: at is ISO 8601 with ms")
    for @ev;
ok(!grep({ $_->{at} lt $ev[0]{at} } @ev), 'events: none before the first');
is_deeply([sort keys %{ $ev[2] }], [sort qw(source at id type created changed)],
          'events: a Stripe entry has exactly its keys');

is_deeply(events_of($stripe_id), $h, 'by Stripe id: the same history');
is_deeply(events_of($id, 'test-write-key-hist'), $h, 'with a write key: the same');

my $text = sql_value("SELECT string_agg(t::text, ' ') FROM invoice_actions t");
unlike($text, qr/test-write-key-hist/, 'the audit table holds no key');

#----------------------------------------------------------------------
# Stripe's refusals are recorded too (a bare key, under its line name);
# bad input is not (it changes nothing: t/hostile.t)

$res = as_key('test-bare-key-hist', POST => '/admin/api/invoices',
              [$CT, ['Idempotency-Key', 'hist-bad-1']],
              $J->encode({ items => [{ name => 'x', amount => 1 }],
                           customer => $main->{customer},
                           paymentMethod => 'pm_doesNotExist123' }));
is($res->status, 400, 'a payment method Stripe does not know: 400');
is(($res->json_or_undef // {})->{error}{type}, 'stripe_error', '400: stripe_error');
is(sql_value("SELECT key_name || ' ' || action || ' ' || status || ' '"
             . " || coalesce(stripe_invoice_id, '-') || ' ' || idempotency_key"
             . " FROM invoice_actions ORDER BY id DESC LIMIT 1"),
   'line-3 create 400 - hist-bad-1', "Stripe's 400 is recorded: line-3, no invoice, its key");

my $n = sql_value('SELECT count(*) FROM invoice_actions');
$res = as_key('test-bare-key-hist', POST => '/admin/api/invoices',
              [$CT, ['Idempotency-Key', 'hist-bad-2']], '{"items": []}');
is($res->status, 400, 'a bad body: 400');
$res = as_key('test-bare-key-hist', POST => '/admin/api/invoices', [$CT],
              $J->encode({ items => [{ name => 'x', amount => 1 }], customer => 'cus_NoSuchOne0000' }));
is($res->status, 404, 'an unknown customer: 404');
is(sql_value('SELECT count(*) FROM invoice_actions'), $n, 'bad input: nothing recorded');

$res = as_key('test-bare-key-hist', POST => '/admin/api/invoices', [$CT], $body);
is($res->status, 201, 'a create without an Idempotency-Key: 201');
is(sql_value("SELECT coalesce(idempotency_key, 'NULL') FROM invoice_actions ORDER BY id DESC LIMIT 1"),
   'NULL', 'recorded without one (not the generated key)');
my $no_key = sql_value('SELECT stripe_invoice_id FROM invoice_actions ORDER BY id DESC LIMIT 1');
my ($entry) = grep { $_->{source} eq 'admin' } @{ events_of($no_key)->{events} || [] };
ok($entry && exists $entry->{idempotencyKey} && !defined $entry->{idempotencyKey},
   'events: idempotencyKey is null, not left out, when none was given');

# a read key's refused write is not an action: nothing recorded
$n = sql_value('SELECT count(*) FROM invoice_actions');
$res = as_key('test-read-key-hist', POST => '/admin/api/invoices', [$CT], $body);
is($res->status, 403, 'a read key: 403');
is(sql_value('SELECT count(*) FROM invoice_actions'), $n, 'nothing recorded for a 403');

#----------------------------------------------------------------------
# a deleted draft: its history outlives the row

my $draft = stripe_invoice(status => 'draft', customer => $main->{customer});
is(result_of(deliver_event(invoice_event('invoice.created', $draft))), 'inserted', 'a draft: inserted');
my $draft_id = invoice_row($draft->{id})->{id};
is(result_of(deliver_event(invoice_event('invoice.deleted', $draft))), 'deleted', 'deleted');
my $gone = events_of($draft->{id});
is_deeply([map { [$_->{type}, $_->{changed} ? 1 : 0] } @{ $gone->{events} || [] }],
          [['invoice.created', 1], ['invoice.deleted', 1]],
          'a deleted invoice by Stripe id: its events, both changed the row');
is(as_key('test-read-key-hist', GET => "/admin/api/invoices/$draft_id/events")->status, 404,
   'by its old _id: 404 (no row)');
# a second deleted for a draft already gone changes nothing
is(result_of(deliver_event(invoice_event('invoice.deleted', $draft))), 'deleted', 'deleted again');
is((events_of($draft->{id})->{events} || [])->[-1]{changed} ? 1 : 0, 0,
   'a delete of a row already gone: changed false');

#----------------------------------------------------------------------
# errors of the route

$res = as_key('test-read-key-hist', GET => '/admin/api/invoices/in_1NeverSeen000000000000/events');
is($res->status, 404, 'an unknown Stripe id: 404');
is(($res->json_or_undef // {})->{error}{code}, 'resource_missing', '404: resource_missing');
$res = as_key('test-read-key-hist', GET => '/admin/api/invoices/ffffffffffffffffffffffff/events');
is($res->status, 404, 'an unknown _id: 404');
$res = as_key('test-read-key-hist', GET => '/admin/api/invoices/NOT-AN-ID/events');
is($res->status, 400, 'a malformed id: 400');
is(($res->json_or_undef // {})->{error}{param}, 'id', '400: param id');
$res = as_key('test-write-key-hist', POST => "/admin/api/invoices/$id/events", [$CT], '{}');
is($res->status, 405, 'POST to events: 405');
is($res->header('Allow'), 'GET, HEAD', '405: Allow GET, HEAD');
$res = as_key('test-read-key-hist', HEAD => "/admin/api/invoices/$id/events");
is($res->status, 200, 'HEAD: 200');
for my $path ("$id/event", "$id/events/", "$id/events/x", "$id/EVENTS") {
    $res = as_key('test-read-key-hist', GET => "/admin/api/invoices/$path");
    is($res->status, 404, "GET .../$path: 404");
    is(($res->json_or_undef // {})->{error}{code}, 'route_missing', "GET .../$path: route_missing");
}
$res = request(GET => "/admin/api/invoices/$id/events");
is($res->status, 401, 'no key: 401');

#----------------------------------------------------------------------
# at most 1,000 entries, the oldest, and has_more

sql_do("INSERT INTO invoice_actions (at, key_name, action, stripe_invoice_id, status)
        SELECT now() + g * interval '1 ms', 'bulk', 'create', " . quote($stripe_id) . ", 201
        FROM generate_series(1, 1000) g");
$h = events_of($id);
is(scalar @{ $h->{events} || [] }, 1000, '1,004 entries: 1,000 given');
ok($h->{has_more}, 'has_more true');
is($h->{events}[0]{keyName}, 'ops-admin', 'the oldest first');
is($h->{events}[-1]{keyName}, 'bulk', 'the last one given is a bulk one');

#----------------------------------------------------------------------
# PostgreSQL down: 503, and the create's answer does not depend on the record

pg_stop();
$res = as_key('test-read-key-hist', GET => "/admin/api/invoices/$id/events");
is($res->status, 503, 'PostgreSQL down: 503');
is(($res->json_or_undef // {})->{error}{type}, 'api_error', '503: api_error');
pg_start();
$res = as_key('test-read-key-hist', GET => "/admin/api/invoices/$id/events");
is($res->status, 200, 'PostgreSQL back: 200');

done_testing();
