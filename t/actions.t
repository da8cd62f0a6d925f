# Acting on invoices: POST .../{id}/finalize|pay|send|void|mark_uncollectible
# and DELETE .../{id}, against the fake Stripe.  Each action from a status
# it may start from (200, Stripe's object, the row updated at once), from one
# it may not (409 invoice_status_conflict, no Stripe call, nothing changed),
# Idempotency-Key replays and conflicts, Stripe's refusals (a declined card,
# a send of a charge_automatically invoice, a status the row had not caught
# up with), Stripe failing, bad input of every kind (nothing changed, no
# Stripe call), methods, routes, read keys, PostgreSQL down, and the audit
# record of each.

use strict;
use warnings;
use Test::More;
use JSON::PP ();
use Invoices::Test;

my $KEYS = <<'KEYS';
ops write test-write-key-act
reader read test-read-key-act
KEYS

start_server(stripe => 1, keys => $KEYS);

my $J = JSON::PP->new->utf8->canonical;
my $visa = linked_customer(payment_method => 'pm_card_visa');
my $CT = ['Content-Type', 'application/json'];

sub fault { fake_config({ faults => [@_] }) }
sub no_faults { fake_config({ faults => [] }) }

sub act {
    my ($method, $path, %o) = @_;
    my @h = (['Api-Key', $o{key} // 'test-write-key-act']);
    push @h, ['Idempotency-Key', $o{idem}] if defined $o{idem};
    push @h, $CT if defined $o{body} && !$o{no_ct};
    push @h, @{ $o{headers} || [] };
    return request($method, "/admin/api/invoices/$path", \@h, $o{body});
}

# an open invoice made through the API: its Stripe id
sub open_invoice {
    my $res = request(POST => '/admin/api/invoices',
                      [['Api-Key', 'test-write-key-act'], $CT],
                      $J->encode({ items => [{ name => 'Act', amount => 1200 }],
                                   customer => $visa->{customer} }));
    is($res->status, 201, 'an open invoice: 201') or diag $res->describe;
    return ($res->json_or_undef // {})->{id} // 'in_none';
}

# an invoice made in Stripe directly, brought into our table by the sync
sub stripe_only {
    my (%form) = @_;
    my ($st, $inv) = fake_stripe(POST => '/v1/invoices',
                                 { customer => $visa->{customer}, auto_advance => 'false', %form });
    is($st, 200, 'an invoice in Stripe') or diag $J->encode($inv);
    # a line: Stripe marks an invoice of 0 paid when it is finalized
    ($st) = fake_stripe(POST => '/v1/invoiceitems', { customer => $visa->{customer},
                        invoice => $inv->{id}, amount => 700 });
    is($st, 200, 'a line on it');
    my $res = request(POST => '/admin/api/invoices/sync', [['Api-Key', 'test-write-key-act']]);
    is($res->status, 200, 'the sync: 200') or diag $res->describe;
    return $inv->{id};
}

sub status_of { sql_value('SELECT status FROM invoices WHERE stripe_invoice_id = ' . quote($_[0])) // 'none' }
sub last_audit {
    sql_value("SELECT key_name || ' ' || action || ' ' || coalesce(stripe_invoice_id, '-') || ' '"
              . " || status || ' ' || replayed || ' ' || coalesce(idempotency_key, '-')"
              . " FROM invoice_actions ORDER BY id DESC LIMIT 1") // '';
}
sub stripe_calls { scalar fake_requests(qr{^(POST|DELETE) /v1/invoices/in_}) }
sub err { my ($res) = @_; return ($res->json_or_undef // {})->{error} // {} }

# refused before Stripe: no Stripe call, the database as it was
sub refused_ok {
    my ($name, $status, $code, $param, @req) = @_;
    fake_control(DELETE => '/_fake/requests');
    my $before = db_fingerprint();
    my $audits = sql_value('SELECT count(*) FROM invoice_actions');
    my $res = act(@req);
    subtest $name => sub {
        is($res->status, $status, "status $status") or diag $res->describe;
        is(err($res)->{code}, $code, "code $code") if defined $code;
        is(err($res)->{param}, $param, "param $param") if defined $param;
        is(stripe_calls(), 0, 'Stripe was not called');
        is(db_fingerprint(), $before, 'the database is unchanged');
        is(sql_value('SELECT count(*) FROM invoice_actions'), $audits, 'no audit record');
    };
    return $res;
}

#----------------------------------------------------------------------
# void: open -> void, then everything around it

my $inv = open_invoice();
my $id = sql_value('SELECT id FROM invoices WHERE stripe_invoice_id = ' . quote($inv));
fake_control(DELETE => '/_fake/requests');

my $res = act(POST => "$id/void", idem => 'act-void-1');
is($res->status, 200, 'void an open invoice: 200') or diag $res->describe;
my $obj = $res->json_or_undef // {};
is($obj->{object}, 'invoice', "the answer is Stripe's invoice object");
is($obj->{id}, $inv, 'of this invoice');
is($obj->{status}, 'void', 'void in Stripe');
is(status_of($inv), 'void', 'the row is void at once');
is((act(GET => $inv)->json_or_undef // {})->{status}, 'void',
   'GET shows it void');
my @calls = fake_requests(qr{^POST /v1/invoices/in_});
is(scalar @calls, 1, 'one Stripe call');
is($calls[0]{path} // '', "/v1/invoices/$inv/void", 'POST /v1/invoices/{id}/void');
like($calls[0]{headers}{'Idempotency-Key'} // $calls[0]{idempotency_key} // '',
     qr/^ngxinv-[0-9a-f]{48}:void\z/, "Stripe's Idempotency-Key is derived from ours")
    or diag $J->encode($calls[0]);
is(last_audit(), "ops void $inv 200 false act-void-1", 'recorded: ops, void, 200, the key');

# the same key again: the same answer, replayed, no Stripe call
fake_control(DELETE => '/_fake/requests');
my $again = act(POST => "$id/void", idem => 'act-void-1');
is($again->status, 200, 'the same key again: 200');
is($again->header('Idempotent-Replayed'), 'true', 'Idempotent-Replayed: true');
is($again->body, $res->body, 'the same body');
is(stripe_calls(), 0, 'no Stripe call');
is(last_audit(), "ops void $inv 200 true act-void-1", 'the replay is recorded as one');

# by Stripe id, another key: the status forbids it now
$res = refused_ok('void of a void invoice: 409', 409, 'invoice_status_conflict', undef,
                  POST => "$inv/void", idem => 'act-void-2');
like(err($res)->{message} // '', qr/void/, '409: the message names the status');
is(err($res)->{type}, 'invalid_request_error', '409: invalid_request_error');

# the refused key was dropped: it may serve another request
refused_ok('the same key on another route after a 409: its own answer', 409,
           'invoice_status_conflict', undef, POST => "$inv/mark_uncollectible", idem => 'act-void-2');

# a key used for one action may not do another
fake_control(DELETE => '/_fake/requests');
$res = act(POST => "$inv/mark_uncollectible", idem => 'act-void-1');
is($res->status, 409, 'the key of the void for another action: 409');
is(err($res)->{code}, 'idempotency_key_reused', 'idempotency_key_reused');
is(stripe_calls(), 0, 'no Stripe call');

#----------------------------------------------------------------------
# mark_uncollectible, then pay from uncollectible (with a payment method)

my $inv2 = open_invoice();
$res = act(POST => "$inv2/mark_uncollectible");
is($res->status, 200, 'mark_uncollectible: 200') or diag $res->describe;
is(status_of($inv2), 'uncollectible', 'the row is uncollectible');
is(last_audit(), "ops mark_uncollectible $inv2 200 false -", 'recorded, no key given');
$res = act(POST => "$inv2/pay", body => '{"paymentMethod": "pm_card_visa"}');
is($res->status, 200, 'pay an uncollectible invoice: 200') or diag $res->describe;
is(($res->json_or_undef // {})->{status}, 'paid', 'paid in Stripe');
is(status_of($inv2), 'paid', 'the row is paid');
my ($pay) = fake_requests(qr{^POST /v1/invoices/\Q$inv2\E/pay});
like($J->encode($pay // {}), qr/pm_card_visa/, 'the payment method went to Stripe');
refused_ok('pay of a paid invoice: 409', 409, 'invoice_status_conflict', undef, POST => "$inv2/pay");
refused_ok('void of a paid invoice: 409', 409, 'invoice_status_conflict', undef, POST => "$inv2/void");

#----------------------------------------------------------------------
# Stripe refuses: a declined card, a send of a charge_automatically invoice

my $inv3 = open_invoice();
$res = act(POST => "$inv3/pay", body => '{"paymentMethod": "pm_card_chargeDeclined"}',
           idem => 'act-decline-1');
is($res->status, 402, 'a declined card: 402') or diag $res->describe;
is(err($res)->{type}, 'stripe_error', 'stripe_error');
is(err($res)->{stripe}{code}, 'card_declined', "Stripe's code inside");
unlike(err($res)->{message} // '', qr/draft/, 'the message calls no invoice a draft (an action makes none)');
is(status_of($inv3), 'open', 'the row stays open');
is(last_audit(), "ops pay $inv3 402 false act-decline-1", 'the 402 is recorded');
fake_control(DELETE => '/_fake/requests');
$res = act(POST => "$inv3/pay", body => '{"paymentMethod": "pm_card_chargeDeclined"}',
           idem => 'act-decline-1');
is($res->status, 402, "Stripe's refusal is final: the same key replays it");
is($res->header('Idempotent-Replayed'), 'true', 'replayed');
is(stripe_calls(), 0, 'no Stripe call');

$res = act(POST => "$inv3/send", idem => 'act-send-1');
is($res->status, 400, 'send of a charge_automatically invoice: 400') or diag $res->describe;
is(err($res)->{type}, 'stripe_error', 'stripe_error');
like(err($res)->{stripe}{message} // '', qr/send_invoice/, "Stripe's reason inside");
unlike(err($res)->{message} // '', qr/draft/, 'the message calls no invoice a draft');
is(status_of($inv3), 'open', 'the row stays open');
# Stripe keeps nothing of a request its validation refused: neither does
# the key, which another request may then use
is(sql_value("SELECT count(*) FROM idempotency_keys WHERE key LIKE '%act-send-1'"), 0,
   'the key of a 400 of Stripe\'s validation is dropped, not left running');
$res = act(POST => "$inv3/void", idem => 'act-send-1');
is($res->status, 200, '... so another action may take it') or diag $res->describe;
is(status_of($inv3), 'void', '... and it ran');

# a send_invoice invoice is sent
my $sendable = stripe_only(collection_method => 'send_invoice', days_until_due => 30);
my ($st) = fake_stripe(POST => "/v1/invoices/$sendable/finalize");
is($st, 200, 'finalized in Stripe');
request(POST => '/admin/api/invoices/sync', [['Api-Key', 'test-write-key-act']]);
is(status_of($sendable), 'open', 'open here after the sync');
$res = act(POST => "$sendable/send");
is($res->status, 200, 'send of a send_invoice invoice: 200') or diag $res->describe;
is(($res->json_or_undef // {})->{id}, $sendable, "Stripe's invoice");
ok(scalar(fake_requests(qr{^POST /v1/invoices/\Q$sendable\E/send})), 'POST .../send reached Stripe');

# the row has not caught up: Stripe says paid, the row says open
my $inv4 = open_invoice();
($st) = fake_stripe(POST => "/v1/invoices/$inv4/pay");
is($st, 200, 'paid in Stripe behind our back (no webhook)');
is(status_of($inv4), 'open', 'still open here');
$res = act(POST => "$inv4/void");
is($res->status, 400, "void: Stripe's own graph refuses it: 400") or diag $res->describe;
is(err($res)->{type}, 'stripe_error', 'stripe_error');
is(status_of($inv4), 'open', 'nothing written (the webhook or the sync brings "paid")');

#----------------------------------------------------------------------
# drafts: finalize, DELETE

my $draft = stripe_only();
is(status_of($draft), 'draft', 'a draft here');
refused_ok('void of a draft: 409', 409, 'invoice_status_conflict', undef, POST => "$draft/void");
refused_ok('pay of a draft: 409', 409, 'invoice_status_conflict', undef, POST => "$draft/pay");
$res = act(POST => "$draft/finalize");
is($res->status, 200, 'finalize a draft: 200') or diag $res->describe;
is(($res->json_or_undef // {})->{status}, 'open', 'open in Stripe');
is(status_of($draft), 'open', 'the row is open');
refused_ok('DELETE of an open invoice: 409', 409, 'invoice_status_conflict', undef,
           DELETE => $draft);
refused_ok('finalize of an open invoice: 409', 409, 'invoice_status_conflict', undef,
           POST => "$draft/finalize");

my $gone = stripe_only();
my $gone_id = sql_value('SELECT id FROM invoices WHERE stripe_invoice_id = ' . quote($gone));
$res = act(DELETE => $gone_id, idem => 'act-delete-1');
is($res->status, 200, 'DELETE a draft: 200') or diag $res->describe;
is_deeply($res->json_or_undef, { deleted => JSON::PP::true, invoiceId => $gone },
          '{"deleted": true, "invoiceId": ...}');
is(status_of($gone), 'none', 'the row is gone');
is(sql_value('SELECT count(*) FROM invoices_deleted WHERE stripe_invoice_id = ' . quote($gone)), 1,
   'its tombstone is kept');
is(act(GET => $gone)->status, 404, 'GET: 404');
($st) = fake_stripe(GET => "/v1/invoices/$gone");
is($st, 404, 'gone in Stripe');
$res = act(DELETE => $gone_id, idem => 'act-delete-1');
is($res->status, 200, 'the DELETE again with its key: replayed 200');
is($res->header('Idempotent-Replayed'), 'true', 'replayed');
refused_ok('the DELETE again without the key: 404', 404, 'resource_missing', 'id', DELETE => $gone_id);
is(last_audit(), "ops delete $gone 200 true act-delete-1", 'recorded');
my $hist = act(GET => "$gone/events")->json_or_undef // {};
is_deeply([map { "$_->{action} $_->{status}" } grep { $_->{source} eq 'admin' } @{ $hist->{events} || [] }],
          ['delete 200', 'delete 200'], "the deleted invoice's history by Stripe id");

#----------------------------------------------------------------------
# bad input: answered before Stripe, nothing changed, nothing recorded

my $open = open_invoice();
refused_ok('a body that is not JSON', 400, 'body_invalid', undef,
           POST => "$open/void", body => '{"x"');
refused_ok('a body that is an array', 400, 'body_invalid', undef,
           POST => "$open/void", body => '[]');
refused_ok('a key void does not take', 400, 'parameter_unknown', 'paymentMethod',
           POST => "$open/void", body => '{"paymentMethod": "pm_card_visa"}');
refused_ok('a key pay does not take', 400, 'parameter_unknown', 'amount',
           POST => "$open/pay", body => '{"amount": 5}');
refused_ok('pay: paymentMethod not a string', 400, 'parameter_invalid', 'paymentMethod',
           POST => "$open/pay", body => '{"paymentMethod": 42}');
refused_ok('pay: paymentMethod not a payment method id', 400, 'parameter_invalid', 'paymentMethod',
           POST => "$open/pay", body => '{"paymentMethod": "tok_visa"}');
refused_ok('duplicate keys', 400, 'body_invalid', undef,
           POST => "$open/pay", body => '{"paymentMethod": "pm_card_visa", "paymentMethod": "pm_x"}');
refused_ok('a body as text/plain: 415', 415, 'content_type_unsupported', undef,
           POST => "$open/void", body => '{}', no_ct => 1, headers => [['Content-Type', 'text/plain']]);
refused_ok('a malformed id: 400', 400, 'parameter_invalid', 'id', POST => 'NOT-AN-ID/void');
refused_ok('an unknown invoice: 404', 404, 'resource_missing', 'id',
           POST => 'in_1NeverSeenAnywhere00000/void');
refused_ok('an unknown _id: 404', 404, 'resource_missing', 'id',
           POST => 'ffffffffffffffffffffffff/void');
refused_ok('an Idempotency-Key of 256 characters: 400', 400, 'parameter_invalid', 'Idempotency-Key',
           POST => "$open/void", idem => 'k' x 256);
refused_ok('an unknown action: 404', 404, 'route_missing', undef, POST => "$open/refund");
refused_ok('GET of an action: 405', 405, 'method_not_allowed', undef, GET => "$open/void");
is(act(GET => "$open/void")->header('Allow'), 'POST', '405: Allow: POST');
is(act(PUT => $open)->header('Allow'), 'GET, HEAD, DELETE', 'one invoice: Allow GET, HEAD, DELETE');
refused_ok('a read key: 403', 403, 'api_key_read_only', undef,
           POST => "$open/void", key => 'test-read-key-act');
refused_ok('a read key DELETE: 403', 403, 'api_key_read_only', undef,
           DELETE => $open, key => 'test-read-key-act');
refused_ok('an empty body with a JSON type is no body: still 409 on a paid one', 409,
           'invoice_status_conflict', undef, POST => "$inv2/void", body => '');
$res = act(POST => "$open/void", body => '{"x": "' . ('y' x (1024 * 1024 + 10)) . '"}');
is($res->status, 413, 'a body over client_max_body_size: 413');
is(err($res)->{type}, 'invalid_request_error', '413: JSON');
is(status_of($open), 'open', '413: nothing done');
$res = act(POST => "$open/void", body => "  {}\n");
is($res->status, 200, 'an empty object (and spaces) is fine: 200') or diag $res->describe;

#----------------------------------------------------------------------
# Stripe fails: nothing written, the key free for the retry, which does it once

my $inv5 = open_invoice();
fault({ path => "POST /v1/invoices/$inv5/void", status => 500, count => 10 });
$res = act(POST => "$inv5/void", idem => 'act-fail-1');
is($res->status, 502, 'Stripe 500s after the retries: 502') or diag $res->describe;
is(err($res)->{type}, 'stripe_error', 'stripe_error');
is(status_of($inv5), 'open', 'the row stays open');
no_faults();
$res = act(POST => "$inv5/void", idem => 'act-fail-1');
is($res->status, 200, 'the retry with the same key: 200') or diag $res->describe;
is(status_of($inv5), 'void', 'void');
is(scalar(grep { !$_->{replayed} && ($_->{status} // 0) == 200 }
           fake_requests(qr{^POST /v1/invoices/\Q$inv5\E/void})), 1,
   'Stripe voided it once (every attempt under one Stripe key)');

# without a key of the caller's, nobody can retry under the one made for
# it: it is not left running
my $inv5b = open_invoice();
my $running = sql_value("SELECT count(*) FROM idempotency_keys WHERE state = 'running'");
fault({ path => "POST /v1/invoices/$inv5b/void", status => 500, count => 10 });
$res = act(POST => "$inv5b/void");
no_faults();
is($res->status, 502, 'Stripe 500s, no Idempotency-Key: 502') or diag $res->describe;
is(sql_value("SELECT count(*) FROM idempotency_keys WHERE state = 'running'"), $running,
   '... and no key made for it is left running');

# Stripe's other failures map as for the create: 429 is a 503 with
# Retry-After, 401 (this server's key) a 502; the key stays free
my $inv5c = open_invoice();
fault({ path => "POST /v1/invoices/$inv5c/void", status => 429, count => 10, retry_after => 1 });
$res = act(POST => "$inv5c/void", idem => 'act-429-1');
no_faults();
is($res->status, 503, 'Stripe 429 after the retries: 503') or diag $res->describe;
is(err($res)->{code}, 'stripe_rate_limited', 'stripe_rate_limited');
like($res->header('Retry-After') // '', qr/^[0-9]+\z/, 'with Retry-After');
is(status_of($inv5c), 'open', 'the row stays open');
fault({ path => "POST /v1/invoices/$inv5c/void", status => 401, count => 10 });
$res = act(POST => "$inv5c/void", idem => 'act-401-1');
no_faults();
is($res->status, 502, "Stripe 401 (this server's key): 502") or diag $res->describe;
is(err($res)->{code}, 'stripe_authentication_failed', 'stripe_authentication_failed');
unlike($res->body, qr/sk_/, "... Stripe's text, which quotes the key, not passed on");
$res = act(POST => "$inv5c/void", idem => 'act-429-1');
is($res->status, 200, 'the retry under the first key: 200') or diag $res->describe;
is(status_of($inv5c), 'void', 'void');

#----------------------------------------------------------------------
# the whole state graph, on rows Stripe does not know: an action a status
# allows goes to Stripe (which answers 404 for an invoice it never made:
# 404 stripe_error), one it does not is a 409 without any Stripe call

my %allowed = (
    finalize => [qw(draft)], pay => [qw(open uncollectible)], send => [qw(open)],
    void => [qw(open uncollectible)], mark_uncollectible => [qw(open)],
    delete => [qw(draft)],
);
for my $status (qw(draft open paid uncollectible void)) {
    my $row = insert_invoice(status => $status);
    for my $action (sort keys %allowed) {
        my $ok = grep { $_ eq $status } @{ $allowed{$action} };
        my @req = $action eq 'delete' ? (DELETE => $row->{id})
                                      : (POST => "$row->{id}/$action");
        fake_control(DELETE => '/_fake/requests');
        my $r = act(@req);
        if ($ok) {
            is($r->status, 404, "$action from $status: allowed, asked of Stripe (404 there)")
                or diag $r->describe;
            is(err($r)->{type}, 'stripe_error', "$action from $status: Stripe's 404");
            is(stripe_calls(), 1, "$action from $status: one Stripe call");
        } else {
            is($r->status, 409, "$action from $status: 409") or diag $r->describe;
            like(err($r)->{message} // '', qr/\b$status\b/, "$action from $status: the message names it");
            is(stripe_calls(), 0, "$action from $status: no Stripe call");
        }
        is(status_of($row->{stripe_invoice_id}), $status, "$action from $status: the row unchanged");
    }
}

#----------------------------------------------------------------------
# the same key while the first request runs: 409

my $slow = open_invoice();
fake_config({ latency_ms => 1500 });
my $first = start_request(POST => "/admin/api/invoices/$slow/void",
                          ['Api-Key' => 'test-write-key-act', 'Idempotency-Key' => 'act-slow-1']);
ok(wait_until(sub { sql_value("SELECT count(*) FROM idempotency_keys"
                              . " WHERE key = 'act-slow-1' AND state = 'running'"
                              . " AND lease_until IS NOT NULL") }, 5),
   'the first holds the key (Stripe answers it in 1.5 s)');
$res = act(POST => "$slow/void", idem => 'act-slow-1');
is($res->status, 409, 'the same key while the first runs: 409');
is(err($res)->{code}, 'idempotency_key_in_use', 'idempotency_key_in_use');
my ($done) = finish_request($first);
fake_config({ latency_ms => 0 });
is($done->status, 200, 'the first: 200') or diag $done->describe;
is(status_of($slow), 'void', 'void once');

#----------------------------------------------------------------------
# the audit record not written: the action stands, the log says which
# record and why

my $unaudited = open_invoice();
sql_do(q{CREATE FUNCTION audit_refused() RETURNS trigger LANGUAGE plpgsql AS
         $$ BEGIN RAISE EXCEPTION 'audit refused by the test'; END $$});
sql_do('CREATE TRIGGER audit_refused BEFORE INSERT ON invoice_actions
        FOR EACH ROW EXECUTE FUNCTION audit_refused()');
my $mark = error_log_mark();
$res = act(POST => "$unaudited/void");
sql_do('DROP TRIGGER audit_refused ON invoice_actions');
sql_do('DROP FUNCTION audit_refused()');
is($res->status, 200, 'the audit record failed: the void stands, 200') or diag $res->describe;
is(status_of($unaudited), 'void', '... and is stored');
like(error_log_since($mark),
     qr/\[error\].*the audit record of a void by "ops" \(status 200\) was not written: .*audit refused by the test/,
     '... the error log names the record and PostgreSQL\'s reason');

#----------------------------------------------------------------------
# PostgreSQL down: 503, Stripe not called

my $inv6 = open_invoice();
fake_control(DELETE => '/_fake/requests');
pg_stop();
$res = act(POST => "$inv6/void");
is($res->status, 503, 'PostgreSQL down: 503');
is(err($res)->{type}, 'api_error', 'api_error');
is(stripe_calls(), 0, 'Stripe was not called');
pg_start();
is(status_of($inv6), 'open', 'still open');

#----------------------------------------------------------------------
# the list sees an action at once (the cache is bumped before the answer)

my $listed = act(GET => '?status=open&limit=100')->json_or_undef // {};
ok((grep { $_->{invoiceId} eq $inv6 } @{ $listed->{invoices} || [] }), 'listed as open');
is(act(POST => "$inv6/void")->status, 200, 'void it');
$listed = act(GET => '?status=open&limit=100')->json_or_undef // {};
ok(!(grep { $_->{invoiceId} eq $inv6 } @{ $listed->{invoices} || [] }), 'no longer listed as open');
ok(!kept_counts_off(), 'the kept counts match the rows');

done_testing();
