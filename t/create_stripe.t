# POST /admin/api/invoices when Stripe refuses or fails (faults injected
# in the fake Stripe): Stripe's 4xx passed on and replayed, our key's
# 401/403 hidden, 429 and 5xx after the retries, a single 500 retried
# with the same key, timeouts, an unreachable Stripe, and invoices left
# half-way (created, then a line or the finalize failed) completed by a
# retry with the same key.
#
# /admin/api/invoices    the harness's settings (timeout 2s, 2 retries)
# /r0/api/invoices       no retries, timeout 1s
# /down/api/invoices     Stripe on a closed port
# /badkey/api/invoices   a secret key the fake does not know

use strict;
use warnings;
use Test::More;
use JSON::PP ();
use IO::Socket::INET;
use Time::HiRes qw(time sleep);
use Invoices::Test;

my $closed = do {
    my $s = IO::Socket::INET->new(Listen => 1, LocalAddr => '127.0.0.1',
                                  LocalPort => 0, Proto => 'tcp') or die $!;
    my $port = $s->sockport;
    close $s;
    $port;
};
my $WRONG = 'sk_test_wrong' . join '', map { ('a'..'z')[rand 26] } 1 .. 24;

start_server(
    stripe => 1,
    before_start => sub {
        my $f = server_prefix() . '/conf/wrong.key';
        open my $fh, '>', $f or die "$f: $!";
        print $fh "$WRONG\n";
        close $fh;
        chmod 0600, $f;
    },
    server_config => <<"CONF");
        location /r0/api/invoices {
            invoices_admin;
            invoices_stripe_max_retries 0;
            invoices_stripe_timeout 1s;
        }
        location /down/api/invoices {
            invoices_admin;
            invoices_stripe_api_base http://127.0.0.1:$closed;
        }
        location /badkey/api/invoices {
            invoices_admin;
            invoices_stripe_secret_key file:wrong.key;
        }
CONF



sub fault { fake_config({ faults => [@_] }) }
sub no_faults { fake_config({ faults => [] }) }
sub n_rows { sql_value('SELECT count(*) FROM invoices') }


my $A = linked_customer(payment_method => 'pm_card_visa');

sub stripe_error_ok {
    my ($res, $status, $code, $name) = @_;
    is($res->status, $status, "$name: $status") or diag $res->describe;
    is($res->header('Content-Type'), 'application/json; charset=utf-8', "$name: JSON");
    json_check($res, <<"EOC", $name);
error.type = "stripe_error"
error.code = "$code"
error.message ~ \\S
EOC
}

# stripe_inside($res, \%want, $name): error.stripe has Stripe's type,
# code, message, param and decline_code: those Stripe gave as it gave
# them, the others absent (or null), nothing else
sub stripe_inside {
    my ($res, $want, $name) = @_;
    my $got = ((($res->json_or_undef // {})->{error}) // {})->{stripe};
    subtest "$name: error.stripe is Stripe's error" => sub {
        is(ref $got, 'HASH', 'error.stripe is an object') or return;
        for my $k (qw(type code message param decline_code)) {
            if (exists $want->{$k}) {
                is($got->{$k}, $want->{$k}, "$k as Stripe gave it");
            } else {
                ok(!defined $got->{$k}, "$k: Stripe gave none");
            }
        }
        is_deeply([grep { !/^(?:type|code|message|param|decline_code)$/ } sort keys %$got],
                  [], 'no other field (request_log_url, doc_url ...)');
    };
}

#----------------------------------------------------------------------
# Stripe 400/402/404: the caller's data; passed on, final, replayed

fake_reset();
my $rows = n_rows();
my $res = create_invoice(admin => { %{ create_body($A->{customer}) },
                            paymentMethod => 'pm_doesNotExist123' }, 'pm-missing');
is($res->status, 400, 'unknown payment method: Stripe 400 -> 400') or diag $res->describe;
json_check($res, <<'EOC', 'unknown payment method');
error.type = "stripe_error"
error.message ~ \S
error.invoiceId absent
EOC
stripe_inside($res, { type => 'invalid_request_error', code => 'resource_missing',
                      message => "No such PaymentMethod: 'pm_doesNotExist123'",
                      param => 'default_payment_method' }, 'unknown payment method');
is(n_rows(), $rows, 'unknown payment method: no row');
is(sql_value("SELECT count(*) FROM idempotency_keys WHERE key = 'pm-missing'"), 0,
   'a 400 invalid_request_error is not kept under our key (Stripe keeps none)');
like(error_log_text(), qr/\[warn\].*Stripe refused a parameter while creating the invoice \(HTTP 400, request req_\w+\)/,
     '... logged at warn with Stripe\'s Request-Id');
my $n = () = fake_requests();
my $again = create_invoice(admin => { %{ create_body($A->{customer}) },
                              paymentMethod => 'pm_doesNotExist123' }, 'pm-missing');
is($again->status, 400, 'the same key again: 400, asked of Stripe again');
ok(!defined $again->header('Idempotent-Replayed'), '... not a replay');
is(scalar(() = fake_requests()), $n + 1, '... Stripe got the request again');
# the key was released: the corrected body may use it
my $fixed = create_invoice(admin => create_body($A->{customer}), 'pm-missing');
is($fixed->status, 201, '... and the same key with a corrected body creates')
    or diag $fixed->describe;

# a 400 after the draft exists: the key is released, the draft kept for
# the retry, which completes the same invoice
my $D = linked_customer(payment_method => 'pm_card_visa');
fake_reset();
fault({ path => 'POST /v1/invoices/in_\w+/finalize', status => 400, count => 1,
        error => { type => 'invalid_request_error', message => 'not now' } });
$res = create_invoice(admin => create_body($D->{customer}, 500, 600), 'finalize-400');
is($res->status, 400, 'finalize refused with a 400: 400') or diag $res->describe;
my $draft = (($res->json_or_undef // {})->{error} // {})->{invoiceId} // '';
like($draft, qr/^in_\w+$/, '... the error names the draft');
is(sql_value("SELECT state || ' ' || (lease_until IS NULL)::text || ' ' || stripe_invoice_id "
             . "FROM idempotency_keys WHERE key = 'finalize-400'"),
   "running true $draft", '... the key is released, its draft kept');
$again = create_invoice(admin => create_body($D->{customer}, 500, 600), 'finalize-400');
is($again->status, 201, '... the retry with the same key: 201') or diag $again->describe;
is(($again->json_or_undef // {})->{id}, $draft, '... the same invoice');
is(scalar(grep { !$_->{replayed} } fake_posts(qr{^/v1/invoices$})), 1, '... one invoice created at Stripe');
is(scalar(grep { !$_->{replayed} } fake_posts(qr{^/v1/invoiceitems$})), 2, '... two lines, none twice');

fake_reset();
fault({ path => 'POST /v1/invoices', status => 402, count => 1 });
$res = create_invoice(admin => create_body($A->{customer}), 'declined-402');
is($res->status, 402, 'Stripe 402 -> 402') or diag $res->describe;
json_check($res, 'error.type = "stripe_error"', 'Stripe 402');
stripe_inside($res, { type => 'card_error', code => 'card_declined',
                      decline_code => 'generic_decline',
                      message => 'Your card was declined.' }, 'Stripe 402');
is(scalar(fake_posts(qr{^/v1/invoices$})), 1, 'Stripe 402: not retried');
$again = create_invoice(admin => create_body($A->{customer}), 'declined-402');
is($again->status, 402, 'Stripe 402, the same key again: 402 ...');
is($again->header('Idempotent-Replayed'), 'true', '... replayed');
is($again->body, $res->body, '... the same body');
is(scalar(fake_posts(qr{^/v1/invoices$})), 1, '... Stripe got nothing more');

fake_reset();
fault({ path => 'POST /v1/invoices', status => 404, count => 1 });
$res = create_invoice(admin => create_body($A->{customer}), 'stripe-404');
is($res->status, 404, 'Stripe 404 -> 404') or diag $res->describe;
json_check($res, 'error.type = "stripe_error"', 'Stripe 404');
stripe_inside($res, { type => 'invalid_request_error',
                      message => 'Unrecognized request URL.' }, 'Stripe 404');
$again = create_invoice(admin => create_body($A->{customer}), 'stripe-404');
is($again->header('Idempotent-Replayed'), 'true', 'Stripe 404: replayed for the same key');

#----------------------------------------------------------------------
# 401/403: our key's problem; 502, Stripe's text withheld, not final

for my $st (401, 403) {
    fake_reset();
    fault({ path => 'POST /v1/invoices', status => $st });
    my $mark = error_log_mark();
    $rows = n_rows();
    $res = create_invoice(admin => create_body($A->{customer}), "auth-$st");
    stripe_error_ok($res, 502, 'stripe_authentication_failed', "Stripe $st");
    unlike($res->body, qr/Invalid API Key|permissions|sk_test/,
           "Stripe $st: Stripe's own message is not in the body");
    json_check($res, "error.stripe absent", "Stripe $st");
    is(scalar(fake_posts(qr{^/v1/invoices$})), 1, "Stripe $st: not retried");
    is(n_rows(), $rows, "Stripe $st: no row");
    like(error_log_since($mark), qr/\[error\].*Stripe refused this server's credentials.*HTTP $st/,
         "Stripe $st: logged for the operator");
    no_faults();
    my $ok = create_invoice(admin => create_body($A->{customer}), "auth-$st");
    is($ok->status, 201, "Stripe $st, then fixed: the same key gives 201 (not final)");
    ok(!defined $ok->header('Idempotent-Replayed'), '... not a replay');
}

# a key Stripe (the fake) really refuses
fake_reset();
my $mark = error_log_mark();
$res = create_invoice(badkey => create_body($A->{customer}), 'badkey-1');
stripe_error_ok($res, 502, 'stripe_authentication_failed', 'a wrong secret key');
unlike($res->body, qr/Invalid API Key|sk_test|\Q@{[substr $WRONG, -4]}\E/,
       'a wrong secret key: neither Stripe\'s message nor the key in the body');
my ($bad) = fake_posts(qr{^/v1/invoices$});
ok($bad && !$bad->{authorized}, 'a wrong secret key: the fake saw the wrong key');
my $log = error_log_since($mark);
like($log, qr/Stripe refused this server's credentials/, 'a wrong secret key: logged');
unlike($log, qr/\Q$WRONG\E|Invalid API Key/, '... without the key or Stripe\'s text');

#----------------------------------------------------------------------
# 429 and 5xx on every attempt; a single 500

fake_reset();
fault({ path => 'POST /v1/invoices', status => 429 });
$res = create_invoice(admin => create_body($A->{customer}), 'rate-1');
stripe_error_ok($res, 503, 'stripe_rate_limited', 'Stripe 429 on every attempt');
like($res->header('Retry-After') // '', qr/^[1-9]\d*$/, '... with Retry-After');
my @att = fake_posts(qr{^/v1/invoices$});
is(scalar @att, 3, '... after 3 attempts (invoices_stripe_max_retries 2)');
is(scalar(keys %{ { map { $_->{idempotency_key} => 1 } @att } }), 1,
   '... all with the same Idempotency-Key');
no_faults();
is(create_invoice(admin => create_body($A->{customer}), 'rate-1')->status, 201,
   '... not final: the same key later gives 201');

for my $st (500, 503) {
    fake_reset();
    fault({ path => 'POST /v1/invoices', status => $st });
    $rows = n_rows();
    $res = create_invoice(admin => create_body($A->{customer}), "five-$st");
    stripe_error_ok($res, 502, 'stripe_unavailable', "Stripe $st on every attempt");
    json_check($res, 'error.invoiceId absent', "Stripe $st on every attempt");
    @att = fake_posts(qr{^/v1/invoices$});
    is(scalar @att, 3, "Stripe $st: 3 attempts");
    is(scalar(keys %{ { map { $_->{idempotency_key} => 1 } @att } }), 1,
       "Stripe $st: all with the same Idempotency-Key");
    is(n_rows(), $rows, "Stripe $st: no row");
}

fake_reset();
fault({ path => 'POST /v1/invoices', status => 500, should_retry => JSON::PP::false });
$res = create_invoice(admin => create_body($A->{customer}));
stripe_error_ok($res, 502, 'stripe_unavailable', 'Stripe 500 with Stripe-Should-Retry: false');
is(scalar(fake_posts(qr{^/v1/invoices$})), 1, '... not retried');

fake_reset();
fault({ path => 'POST /v1/invoices', status => 500, count => 1 });
$res = create_invoice(admin => create_body($A->{customer}));
is($res->status, 201, 'a single Stripe 500: retried, 201') or diag $res->describe;
@att = fake_posts(qr{^/v1/invoices$});
is_deeply([map { $_->{status} } @att], [500, 200], '... the fake answered 500, then 200');
is(scalar @att == 2 && $att[0]{idempotency_key} eq $att[1]{idempotency_key}, 1,
   '... the retry had the same Idempotency-Key');

# a 500 after Stripe acted (the answer lost): the retry is replayed by
# Stripe, no second line
my $B = linked_customer();
fake_reset();
fault({ path => 'POST /v1/invoiceitems', status => 500, when => 'after', count => 1 });
$res = create_invoice(admin => create_body($B->{customer}, 100, 200));
is($res->status, 201, 'a line created but answered 500: retried, 201') or diag $res->describe;
my ($inv) = stripe_invoices_of($B->{customer});
is($inv->{lines}{total_count}, 2, '... the invoice has 2 lines, not 3');
is($inv->{total}, 300, '... total 300');
my @items = fake_posts(qr{^/v1/invoiceitems$});
is(scalar(grep { $_->{replayed} } @items), 1, '... the retry was a replay at Stripe');

#----------------------------------------------------------------------
# half-way: the invoice exists, a later step failed

sub halfway {
    my (%o) = @_;
    my $C = linked_customer(payment_method => 'pm_card_visa');
    my @amounts = (1100, 2200, 3300);
    my $body = create_body($C->{customer}, @amounts);
    my $key = "halfway-$o{name}";
    fake_reset();
    fault(@{ $o{faults} });
    my $res = create_invoice($o{prefix} // 'admin', $body, $key);
    subtest "half-way ($o{name}): the error" => sub {
        stripe_error_ok($res, $o{status}, $o{code}, $o{name});
        my $e = ($res->json_or_undef // {})->{error} // {};
        like($e->{invoiceId} // '', qr/^in_\w+$/, 'invoiceId is the Stripe invoice');
        like($e->{message} // '', qr/\Q$e->{invoiceId}\E/, 'the message names it')
            if $e->{invoiceId};
        my ($at_stripe) = stripe_invoices_of($C->{customer});
        is($at_stripe->{id}, $e->{invoiceId}, 'Stripe has that invoice');
        is($at_stripe->{status}, $o{stripe_status} // 'draft', "at Stripe: "
           . ($o{stripe_status} // 'draft'));
        my $list = api_request(GET => '/admin/api/invoices?limit=100')->json;
        my ($r) = grep { $_->{invoiceId} eq ($e->{invoiceId} // '') } @{ $list->{invoices} };
        ok($r, 'the row is in the list');
        is($r->{status}, 'draft', 'the row is a draft') if $r && !$o{stripe_status};
    };
    my $inv_id = (($res->json_or_undef // {})->{error} // {})->{invoiceId} // '';
    no_faults() unless $o{keep_faults};
    my $retry = create_invoice($o{prefix} // 'admin', $body, $key);
    subtest "half-way ($o{name}): a retry with the same key completes it" => sub {
        is($retry->status, 201, 'status 201') or diag $retry->describe;
        my $got = $retry->json_or_undef // {};
        is($got->{id}, $inv_id, 'the same invoice');
        is($retry->header('Location'), '/' . ($o{prefix} // 'admin') . "/api/invoices/$inv_id",
           'Location');
        is($got->{status}, 'open', 'finalized');
        my @at_stripe = stripe_invoices_of($C->{customer});
        is(scalar @at_stripe, 1, 'one invoice at Stripe');
        is($at_stripe[0]{lines}{total_count}, 3, 'three lines, none twice');
        is($at_stripe[0]{total}, 6600, 'total = the sum of the items');
        is(scalar(grep { !$_->{replayed} } fake_posts(qr{^/v1/invoices$})), 1,
           'Stripe created one invoice');
        is_deeply($got, $at_stripe[0], "the body is Stripe's invoice");
        my $r = db_invoice($inv_id) // {};
        is($r->{status}, 'open', 'the row is open');
        is($r->{amount}, 6600, 'the row has the total');
        my $re = create_invoice($o{prefix} // 'admin', $body, $key);
        is($re->header('Idempotent-Replayed'), 'true', 'and now it replays');
    };
}

halfway(name => 'lines fail (500)', status => 502, code => 'stripe_unavailable',
        faults => [{ path => 'POST /v1/invoiceitems', status => 500 }]);
halfway(name => 'finalize fails (500)', status => 502, code => 'stripe_unavailable',
        faults => [{ path => 'POST /v1/invoices/in_\w+/finalize', status => 500 }]);
halfway(name => 'lines rate limited (429)', status => 503, code => 'stripe_rate_limited',
        faults => [{ path => 'POST /v1/invoiceitems', status => 429 }]);
# no retries: line 0 is made at Stripe, its answer lost; the retry adds
# only the lines Stripe lacks
halfway(name => 'the first line answered 500, no retries', prefix => 'r0',
        status => 502, code => 'stripe_unavailable',
        faults => [{ path => 'POST /v1/invoiceitems', status => 500, when => 'after',
                     count => 1 }]);
halfway(name => 'a line times out', prefix => 'r0',
        status => 504, code => 'stripe_timeout',
        faults => [{ path => 'POST /v1/invoiceitems', hang_seconds => 2, count => 1 }]);
# Stripe finalized, the answer never came: the retry finds it open
halfway(name => 'finalize done but timed out', prefix => 'r0',
        status => 504, code => 'stripe_timeout', stripe_status => 'open',
        keep_faults => 1,
        faults => [{ path => 'POST /v1/invoices/in_\w+/finalize', hang_seconds => 2,
                     when => 'after' }]);

#----------------------------------------------------------------------
# timeouts and an unreachable Stripe

fake_reset();
fault({ path => 'POST /v1/invoices', hang_seconds => 2 });
$rows = n_rows();
$res = create_invoice(r0 => create_body($A->{customer}), 'hang-1');
stripe_error_ok($res, 504, 'stripe_timeout', 'Stripe hangs (timeout 1s, no retries)');
cmp_ok($res->elapsed, '<', 1.9 * time_factor(), '... answered after the timeout, not the hang');
is(n_rows(), $rows, '... no row');
no_faults();
sleep 1.2;    # the hanging fake thread lets go
$res = create_invoice(r0 => create_body($A->{customer}), 'hang-1');
is($res->status, 201, '... not final: the same key gives 201 once Stripe answers');

fake_reset();
fault({ path => 'POST /v1/invoices', hang_seconds => 3 });
$res = create_invoice(admin => create_body($A->{customer}));
stripe_error_ok($res, 504, 'stripe_timeout', 'Stripe hangs on every attempt (2 retries)');
is(scalar(fake_posts(qr{^/v1/invoices$})), 3, '... 3 attempts');
no_faults();

fake_reset();
$rows = n_rows();
$res = create_invoice(down => create_body($A->{customer}), 'down-1');
stripe_error_ok($res, 504, 'stripe_unreachable', 'Stripe unreachable (closed port)');
is(n_rows(), $rows, '... no row');
is(scalar(() = fake_requests()), 0, '... (the fake got nothing)');
$res = create_invoice(down => create_body($A->{customer}), 'down-1');
is($res->status, 504, '... not final: the same key tries again');
ok(!defined $res->header('Idempotent-Replayed'), '... not a replay');

done_testing();
