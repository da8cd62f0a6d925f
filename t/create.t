# POST /admin/api/invoices against the fake Stripe: the checks made
# before Stripe is called (Content-Type, Idempotency-Key, body, customer),
# the Stripe sequence and what it sends, the 201 and the stored row,
# idempotent replays and conflicts, and the routes around it.  Stripe's
# failures: t/create_stripe.t; load, pools and PostgreSQL: t/create_load.t.
#
# /admin/api/invoices       the default Stripe settings of the harness
# /small/api/invoices       client_max_body_size 1k

use strict;
use warnings;
use Test::More;
use JSON::PP ();
use Time::HiRes qw(time sleep);
use Invoices::Test;

start_server(stripe => 1, server_config => <<'CONF');
        location /small/api/invoices {
            invoices_admin;
            client_max_body_size 1k;
        }
CONF

my $J = JSON::PP->new->utf8->canonical;
my $CT = ['Content-Type' => 'application/json'];

my $main = linked_customer(payment_method => 'pm_card_visa');
my $other = linked_customer(team => 0);    # in Stripe, but no team
my $CUS = $main->{customer};
my $item = qq({"name":"x","amount":1});
block_vars(cus => $CUS, item => $item, unlinked => $other->{customer},
           n251 => join(',', ($item) x 251),
           s501 => 'n' x 501, s256 => 'a' x 252,
           big => '{"items":[' . join(',', ($item) x 60) . qq(],"customer":"$CUS"}));

# The blocks with a bad Idempotency-Key run last (see the end).
my @blocks = blocks_from_data();
my @key_blocks = grep { $_->{name} =~ /^Idempotency-Key/ } @blocks;
my $DEFAULTS = "Api-Key: test-key\nContent-Type: application/json";
run_blocks(default_headers => $DEFAULTS,
           blocks => [grep { $_->{name} !~ /^Idempotency-Key/ } @blocks]);

# create(\%body or $json, %headers) -> response
sub create {
    my ($body, @h) = @_;
    $body = $J->encode($body) if ref $body;
    return api_request(POST => '/admin/api/invoices', [@$CT, @h], $body);
}

#----------------------------------------------------------------------
# the full create, and what Stripe is sent

fake_reset();
my %body = (items => [{ name => "  All resources \n", amount => 3300 },
                      { name => "\tSupport\r", amount => 700 }],
            customer => $CUS, paymentMethod => 'pm_card_visa',
            description => 'November 2023');
my $res = create(\%body, 'Idempotency-Key' => 'create-1');
is($res->status, 201, 'create: 201') or diag $res->describe;
is($res->header('Content-Type'), 'application/json; charset=utf-8', 'create: JSON');
ok(!defined $res->header('Idempotent-Replayed'), 'create: not a replay');
my $inv = $res->json_or_undef // {};
like($inv->{id} // '', qr/^in_\w+$/, 'create: the body is a Stripe invoice');
is($res->header('Location'), "/admin/api/invoices/$inv->{id}",
   'create: Location names the invoice');
is($inv->{status}, 'open', 'create: the invoice is finalized (open)');
is($inv->{total}, 4000, 'create: total is the sum of the items');
is($inv->{currency}, 'eur', 'create: the default currency');

my @seq = fake_posts();
is_deeply([map { "$_->{method} $_->{path}" } @seq],
          ['POST /v1/invoices', 'POST /v1/invoiceitems', 'POST /v1/invoiceitems',
           "POST /v1/invoices/$inv->{id}/finalize"],
          'Stripe: create, one item per line, finalize, nothing else');
my @all_seen = fake_requests();
is(scalar @all_seen, 4, 'Stripe: no other request (no GET either)');

is_deeply($seq[0]{params}, {
    customer => $CUS, collection_method => 'charge_automatically',
    auto_advance => 'false', pending_invoice_items_behavior => 'exclude',
    currency => 'eur', default_payment_method => 'pm_card_visa',
    description => 'November 2023',
    metadata => { source => 'ngx_http_invoices_module',
                  team_id => $main->{team}{id} },
}, 'Stripe: POST /v1/invoices has exactly the documented parameters (a draft Stripe will not advance by itself)');
is_deeply($seq[1]{params}, { customer => $CUS, invoice => $inv->{id},
                             amount => '3300', currency => 'eur',
                             description => 'All resources',
                             metadata => { ngx_invoices_line => '0' } },
          'Stripe: line 0, name trimmed, its index in its metadata');
is_deeply($seq[2]{params}, { customer => $CUS, invoice => $inv->{id},
                             amount => '700', currency => 'eur',
                             description => 'Support',
                             metadata => { ngx_invoices_line => '1' } },
          'Stripe: line 1, name trimmed, its index in its metadata');
is_deeply($seq[3]{params}, { auto_advance => 'true' }, 'Stripe: finalize with auto_advance=true');

my ($hex) = ($seq[0]{idempotency_key} // '') =~ /^ngxinv-([0-9a-f]{48}):create$/;
ok($hex, 'Stripe: create carries Idempotency-Key ngxinv-<48 hex>:create')
    or diag $seq[0]{idempotency_key};
is_deeply([map { $_->{idempotency_key} } @seq],
          ["ngxinv-$hex:create", "ngxinv-$hex:item:0", "ngxinv-$hex:item:1",
           "ngxinv-$hex:finalize"], 'Stripe: every step has its own key, one prefix');
for my $r (@seq) {
    ok($r->{authorized}, "Stripe: $r->{path} authorized with the secret key (Bearer)");
    is($r->{stripe_version}, '2023-10-16', "Stripe: $r->{path} Stripe-Version 2023-10-16");
    is($r->{content_type}, 'application/x-www-form-urlencoded', "Stripe: $r->{path} is a form");
}
my $fake_inv = fake_stripe(GET => "/v1/invoices/$inv->{id}");
is_deeply($inv, $fake_inv, "create: the body is Stripe's invoice, field for field");

my $list = api_request(GET => '/admin/api/invoices')->json;
my ($row) = grep { $_->{invoiceId} eq $inv->{id} } @{ $list->{invoices} };
ok($row, 'list: the invoice is listed at once');
is($row->{status}, 'open', 'list: status open');
is($row->{amount}, 4000, 'list: amount is the sum of the items');
is($row->{currency}, 'eur', 'list: currency');
is_deeply($row->{user}, { _id => $main->{team}{id}, name => $main->{team}{name} },
          'list: user is the team of the customer');
ok(defined $row->{invoicePdf}, 'list: invoicePdf is set');
is($row->{invoicePdf}, $inv->{invoice_pdf}, "list: invoicePdf is Stripe's");
my $one = api_request(GET => $res->header('Location'));
is($one->status, 200, 'GET Location: 200');
is(($one->json_or_undef // {})->{_id}, $row->{_id}, 'GET Location: the same invoice');

#----------------------------------------------------------------------
# idempotency

my $n = () = fake_requests();
my $again = create(\%body, 'Idempotency-Key' => 'create-1');
is($again->status, 201, 'replay: 201');
is($again->body, $res->body, 'replay: the identical body');
is($again->header('Idempotent-Replayed'), 'true', 'replay: Idempotent-Replayed: true');
is($again->header('Location'), $res->header('Location'), 'replay: same Location');
is(scalar(() = fake_requests()), $n, 'replay: Stripe got nothing');

my $other_body = create({ %body, description => 'December' }, 'Idempotency-Key' => 'create-1');
is($other_body->status, 409, 'same key, another body: 409');
json_check($other_body, <<'EOC', 'same key, another body');
error.type = "invalid_request_error"
error.code = "idempotency_key_reused"
error.message ~ \S
EOC
is(scalar(() = fake_requests()), $n, 'same key, another body: Stripe got nothing');
is(sql_value("SELECT count(*) FROM invoices WHERE stripe_customer_id = " . quote($CUS)),
   1, 'one invoice row for all of that');

# the Stripe keys come from the caller's key: another caller key, other
# Stripe keys; no caller key, a fresh one each time
fake_reset();
my $k2 = create(\%body, 'Idempotency-Key' => 'create-2');
is($k2->status, 201, 'another key, same body: 201');
isnt(($k2->json_or_undef // {})->{id}, $inv->{id}, '... a new invoice');
my ($hex2) = map { $_->{idempotency_key} =~ /^ngxinv-([0-9a-f]{48}):create$/ }
             grep { $_->{path} eq '/v1/invoices' } fake_posts();
ok($hex2 && $hex2 ne $hex, '... with other Stripe keys');

fake_reset();
my @nokey = map { create(\%body) } 1, 2;
is_deeply([map { $_->status } @nokey], [201, 201], 'no key: two identical creates, two 201s');
ok(!defined $nokey[1]->header('Idempotent-Replayed'), 'no key: not a replay');
my @ids = map { ($_->json_or_undef // {})->{id} // '' } @nokey;
isnt($ids[0], $ids[1], 'no key: two invoices');
my @hexes = map { $_->{idempotency_key} =~ /^ngxinv-([0-9a-f]{48}):create$/ }
            grep { $_->{path} eq '/v1/invoices' } fake_posts();
is(scalar @hexes, 2, 'no key: two invoice creations at Stripe');
isnt($hexes[0], $hexes[1], 'no key: a random Stripe key each time');
is(sql_value("SELECT count(*) FROM invoices WHERE stripe_invoice_id IN ("
             . join(',', map { quote($_) } @ids) . ")"), 2, 'no key: two rows');

# a second request while the first still runs: 409 in_use
fake_reset();
fake_config({ latency_ms => 700 });
my %slow = (items => [{ name => 'slow', amount => 100 }], customer => $CUS);
my $first = start_request(POST => '/admin/api/invoices',
                          [@$CT, 'Idempotency-Key' => 'slow-1'], $J->encode(\%slow));
sleep 0.4;
my $twin = create(\%slow, 'Idempotency-Key' => 'slow-1');
($first) = finish_request($first);
is($twin->status, 409, 'while the first runs: 409') or diag $twin->describe;
json_check($twin, <<'EOC', 'while the first runs');
error.type = "invalid_request_error"
error.code = "idempotency_key_in_use"
EOC
cmp_ok($twin->elapsed, '<', 1.0 * time_factor(), '... answered at once, not after the first');
is($first->status, 201, 'the first: 201');
is(scalar(grep { $_->{path} eq '/v1/invoices' } fake_posts()), 1,
   'Stripe: one invoice creation');
my $after = create(\%slow, 'Idempotency-Key' => 'slow-1');
is($after->status, 201, 'after it finished: 201 ...');
is($after->header('Idempotent-Replayed'), 'true', '... replayed');
is($after->body, $first->body, '... the same body');

# concurrent duplicates: one Stripe sequence, at most one invoice
fake_reset();
fake_config({ latency_ms => 300 });
my %dup = (items => [{ name => 'dup', amount => 250 }], customer => $CUS,
           description => 'concurrent');
my @dups = parallel_requests(map { [POST => '/admin/api/invoices',
                                    [@$CT, 'Idempotency-Key' => 'dup-1'],
                                    $J->encode(\%dup)] } 1 .. 5);
my @st = map { $_->status } @dups;
is(scalar(grep { $_ != 201 && $_ != 409 } @st), 0, "5 at once: each 201 or 409 (@st)");
cmp_ok(scalar(grep { $_ == 201 } @st), '>=', 1, '5 at once: at least one 201');
for my $r (grep { $_->status == 409 } @dups) {
    json_check($r, 'error.code = "idempotency_key_in_use"', '5 at once: the 409');
}
my %bodies = map { $_->body => 1 } grep { $_->status == 201 } @dups;
is(scalar keys %bodies, 1, '5 at once: every 201 has the same body');
my @creates = grep { $_->{path} eq '/v1/invoices' && !$_->{replayed} } fake_posts();
is(scalar @creates, 1, '5 at once: one invoice creation at Stripe');
is(sql_value("SELECT count(*) FROM invoices WHERE amount = 250"), 1,
   '5 at once: one invoice row');
fake_reset();

#----------------------------------------------------------------------
# the optional fields

sub params_of_create {
    my ($r) = @_;
    my ($c) = grep { $_->{path} eq '/v1/invoices' } fake_posts();
    return $c ? $c->{params} : {};
}

fake_reset();
$res = create({ items => [{ name => 'n', amount => 5 }], customer => $CUS });
is($res->status, 201, 'only items and customer: 201');
my $p = params_of_create();
ok(!exists $p->{default_payment_method}, '... no default_payment_method sent');
ok(!exists $p->{description}, '... no description sent');
is($p->{currency}, 'eur', '... currency eur (invoices_currency default)');

fake_reset();
$res = create({ items => [{ name => 'n', amount => 5 }], customer => $CUS,
                paymentMethod => undef, description => undef, currency => undef });
is($res->status, 201, 'paymentMethod, description, currency null: 201');
$p = params_of_create();
ok(!exists $p->{default_payment_method} && !exists $p->{description},
   '... nothing sent for them');
is($p->{currency}, 'eur', '... default currency');

fake_reset();
$res = create({ items => [{ name => 'n', amount => 5 }], customer => $CUS, currency => 'USD' });
is($res->status, 201, 'currency USD: 201');
is(params_of_create()->{currency}, 'usd', '... sent to Stripe in lowercase');
is(($res->json_or_undef // {})->{currency}, 'usd', '... the invoice is in usd');
my @lines = grep { $_->{path} eq '/v1/invoiceitems' } fake_posts();
is($lines[0]{params}{currency}, 'usd', '... and so is its line');
$row = api_request(GET => $res->header('Location') // '/x')->json_or_undef // {};
is($row->{currency}, 'usd', '... and the row');

# the largest body passes the checks: 250 items, names of 500 bytes (after
# trimming), amounts up to 99999999, a description of 500 bytes, a key of
# 255 characters (a customer no team has: the 404 comes after the checks)
fake_reset();
my $name500 = "\x{e9}" x 250;    # 500 bytes of UTF-8
my @items = map { { name => " $name500\n", amount => 1 } } 1 .. 249;
push @items, { name => 'last', amount => 99999999 };
$res = create({ items => \@items, customer => 'cus_NoTeamForThis1',
                description => 'd' x 500, paymentMethod => 'pm_' . ('x' x 252),
                currency => 'Eur' },
              'Idempotency-Key' => "\x20" . ('k' x 253) . "\x7e");
is($res->status, 404, 'the largest valid body: past the checks (404 customer)')
    or diag $res->describe;
json_check($res, 'error.param = "customer"', 'the largest valid body');

# a longer create: 12 lines, all at Stripe once, in order
fake_reset();
@items = map { { name => "line $_", amount => 100 * $_ } } 1 .. 12;
$res = create({ items => \@items, customer => $CUS }, 'Idempotency-Key' => 'twelve');
is($res->status, 201, '12 items: 201') or diag $res->describe;
my $big = $res->json_or_undef // {};
is($big->{total}, 7800, '... total is the sum');
is($big->{lines}{total_count}, 12, '... 12 lines');
@lines = grep { $_->{path} eq '/v1/invoiceitems' } fake_posts();
is_deeply([map { $_->{params}{description} } @lines], [map { "line $_" } 1 .. 12],
          '... sent in order');
is_deeply([map { $_->{idempotency_key} =~ /:item:(\d+)$/ } @lines], [0 .. 11],
          '... keys :item:0 to :item:11');
my $utf = create({ items => [{ name => " $name500 ", amount => 3 }], customer => $CUS });
is($utf->status, 201, 'a 500-byte UTF-8 name: 201');
my ($utf_line) = grep { $_->{path} eq '/v1/invoiceitems' } reverse fake_posts();
is($utf_line->{params}{description}, $name500, '... sent trimmed, UTF-8 intact');

#----------------------------------------------------------------------
# a card that will be declined: the create itself succeeds

fake_reset();
$res = create({ items => [{ name => 'declined later', amount => 1200 }],
                customer => $CUS, paymentMethod => 'pm_card_chargeDeclined' });
is($res->status, 201, 'pm_card_chargeDeclined: the create is 201') or diag $res->describe;
my $dec = $res->json_or_undef // {};
is($dec->{status}, 'open', '... status open (Stripe charges later)');
fake_control(POST => '/_fake/advance');
my $later = fake_stripe(GET => "/v1/invoices/$dec->{id}");
is($later->{status}, 'open', 'after the collection: still open at Stripe');
is($later->{attempt_count}, 1, '... attempt_count 1');

#----------------------------------------------------------------------
# the routes around it

my $get = api_request(GET => '/admin/api/invoices?limit=2');
is($get->status, 200, 'GET on the collection: 200');
my $head = api_request(HEAD => '/admin/api/invoices?limit=2');
is($head->status, 200, 'HEAD on the collection: 200');
is($head->raw_body, '', 'HEAD: no body');
is($head->header('ETag'), $get->header('ETag'), 'HEAD: the ETag of GET');

for my $m (qw(PUT DELETE PATCH)) {
    my $r = api_request($m => '/admin/api/invoices', $CT, '{}');
    is($r->status, 405, "$m on the collection: 405");
    is($r->header('Allow'), 'GET, HEAD, POST', "$m on the collection: Allow: GET, HEAD, POST");
}
for my $m (qw(POST PUT PATCH)) {
    my $r = api_request($m => "/admin/api/invoices/$inv->{id}", $CT, '{}');
    is($r->status, 405, "$m on one invoice: 405");
    is($r->header('Allow'), 'GET, HEAD, DELETE', "$m on one invoice: Allow: GET, HEAD, DELETE");
}
# DELETE is an action (t/actions.t): an open invoice is no draft
my $del = api_request(DELETE => "/admin/api/invoices/$inv->{id}");
is($del->status, 409, 'DELETE of an open invoice: 409');
is(($del->json_or_undef // {})->{error}{code}, 'invoice_status_conflict', '... invoice_status_conflict');

# a chunked body over client_max_body_size (nginx's own check): JSON 413
fake_reset();
my $chunk = '{"items":[' . join(',', ($item) x 60) . qq(],"customer":"$CUS"});
my $raw = raw_request("POST /small/api/invoices HTTP/1.1\r\nHost: x\r\n"
                    . "Api-Key: test-key\r\nContent-Type: application/json\r\n"
                    . "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                    . join('', map { sprintf("%x\r\n%s\r\n", length $_, $_) }
                                   $chunk =~ /(.{1,200})/gs)
                    . "0\r\n\r\n");
is($raw->status, 413, 'chunked body over client_max_body_size: 413');
is($raw->header('Content-Type'), 'application/json; charset=utf-8', '... JSON');
json_check($raw, <<'EOC', 'chunked 413');
error.type = "invalid_request_error"
error.code = "body_too_large"
EOC
my $small = api_request(POST => '/small/api/invoices', $CT,
                        $J->encode({ items => [{ name => 'small', amount => 2 }],
                                     customer => $CUS }));
is($small->status, 201, 'a body under the limit there: 201');
is(scalar(grep { $_->{path} eq '/v1/invoices' } fake_posts()), 1,
   '... and only it reached Stripe');

#----------------------------------------------------------------------
# a bad Idempotency-Key: 400 and nothing else (each block has its own
# body, so a request that went on anyway would show at Stripe)

run_blocks(default_headers => $DEFAULTS, blocks => \@key_blocks);
is(sql_value("SELECT count(*) FROM idempotency_keys WHERE key = ''"), 0,
   'no request ran with an empty key');

my @off = kept_counts_off();
is(scalar @off, 0, 'the kept counts (total, per group) agree with the rows')
    or diag join "\n", @off;

done_testing();

__DATA__

=== no Api-Key: 401 before anything else (even a wrong Content-Type)
--- request
POST /admin/api/invoices

{"items":[{{item}}],"customer":"{{cus}}"}
--- no_default_headers
--- more_headers
Content-Type: text/plain
--- error_code: 401
--- json_path
error.type = "authentication_error"
--- db_unchanged
--- stripe_requests: 0

=== a wrong Api-Key: 401
--- request
POST /admin/api/invoices

{"items":[{{item}}],"customer":"{{cus}}"}
--- more_headers
Api-Key: nope
--- error_code: 401
--- stripe_requests: 0

=== Content-Type missing: 415
--- request
POST /admin/api/invoices

{"items":[{{item}}],"customer":"{{cus}}"}
--- no_default_headers
--- more_headers
Api-Key: test-key
--- error_code: 415
--- response_headers
Content-Type: application/json; charset=utf-8
--- json_path
error.type = "invalid_request_error"
error.code = "content_type_unsupported"
error.message ~ \S
--- db_unchanged
--- stripe_requests: 0

=== Content-Type text/plain: 415
--- request
POST /admin/api/invoices

{"items":[{{item}}],"customer":"{{cus}}"}
--- more_headers
Content-Type: text/plain
--- error_code: 415
--- json_path
error.code = "content_type_unsupported"
--- stripe_requests: 0

=== Content-Type application/x-www-form-urlencoded: 415
--- request
POST /admin/api/invoices

items=1
--- more_headers
Content-Type: application/x-www-form-urlencoded
--- error_code: 415
--- json_path
error.code = "content_type_unsupported"

=== Content-Type application/jsonx: 415
--- request
POST /admin/api/invoices

{"items":[{{item}}],"customer":"{{cus}}"}
--- more_headers
Content-Type: application/jsonx
--- error_code: 415
--- json_path
error.code = "content_type_unsupported"

=== Content-Type application/json-patch+json: 415
--- request
POST /admin/api/invoices

{"items":[{{item}}],"customer":"{{cus}}"}
--- more_headers
Content-Type: application/json-patch+json
--- error_code: 415
--- json_path
error.code = "content_type_unsupported"

=== Content-Type with charset=latin1: 415
--- request
POST /admin/api/invoices

{"items":[{{item}}],"customer":"{{cus}}"}
--- more_headers
Content-Type: application/json; charset=latin1
--- error_code: 415
--- json_path
error.code = "content_type_unsupported"
--- stripe_requests: 0

=== Content-Type in capitals is JSON (the body is checked next)
--- request
POST /admin/api/invoices

[]
--- more_headers
Content-Type: APPLICATION/JSON
--- error_code: 400
--- json_path
error.code = "body_invalid"

=== Content-Type with charset=UTF-8 is JSON
--- request
POST /admin/api/invoices

[]
--- more_headers
Content-Type: application/json;charset=UTF-8
--- error_code: 400
--- json_path
error.code = "body_invalid"

=== Content-Type with charset="utf8" is JSON
--- request
POST /admin/api/invoices

[]
--- more_headers
Content-Type: application/json; charset="utf8"
--- error_code: 400
--- json_path
error.code = "body_invalid"

=== Idempotency-Key empty: 400
--- request
POST /admin/api/invoices

{"items":[{"name":"key check","amount":11}],"customer":"{{cus}}"}
--- more_headers
Idempotency-Key:
--- error_code: 400
--- json_path
error.type = "invalid_request_error"
error.code = "parameter_invalid"
error.param = "Idempotency-Key"
--- db_unchanged
--- stripe_requests: 0

=== Idempotency-Key of 256 characters: 400
--- request
POST /admin/api/invoices

{"items":[{"name":"key check","amount":12}],"customer":"{{cus}}"}
--- more_headers
Idempotency-Key: {{s256}}abcd
--- error_code: 400
--- json_path
error.code = "parameter_invalid"
error.param = "Idempotency-Key"
--- stripe_requests: 0
--- db_unchanged

=== Idempotency-Key with a non-ASCII byte: 400
--- request
POST /admin/api/invoices

{"items":[{"name":"key check","amount":13}],"customer":"{{cus}}"}
--- more_headers eval
"Idempotency-Key: caf\xc3\xa9"
--- error_code: 400
--- json_path
error.code = "parameter_invalid"
error.param = "Idempotency-Key"
--- stripe_requests: 0
--- db_unchanged

=== Idempotency-Key with a DEL byte: 400
--- request
POST /admin/api/invoices

{"items":[{"name":"key check","amount":14}],"customer":"{{cus}}"}
--- more_headers eval
"Idempotency-Key: a\x7fb"
--- error_code: 400
--- json_path
error.param = "Idempotency-Key"
--- stripe_requests: 0
--- db_unchanged

=== Idempotency-Key twice: 400
--- request
POST /admin/api/invoices

{"items":[{"name":"key check","amount":15}],"customer":"{{cus}}"}
--- more_headers
Idempotency-Key: one
idempotency-key: two
--- error_code: 400
--- json_path
error.code = "parameter_invalid"
error.param = "Idempotency-Key"
--- db_unchanged
--- stripe_requests: 0

=== empty body: body_invalid
--- request
POST /admin/api/invoices
--- error_code: 400
--- json_path
error.type = "invalid_request_error"
error.code = "body_invalid"
error.message ~ \S
error.param absent
--- db_unchanged
--- stripe_requests: 0

=== not JSON: body_invalid
--- request
POST /admin/api/invoices

{"items":[{{item}}],"customer":"{{cus}}"
--- error_code: 400
--- json_path
error.code = "body_invalid"
error.param absent
--- db_unchanged
--- stripe_requests: 0

=== invalid UTF-8: body_invalid
--- request eval
"POST /admin/api/invoices\n\n{\"items\":[{\"name\":\"caf\xe9\",\"amount\":1}],\"customer\":\"$Invoices::Test::VARS{cus}\"}"
--- error_code: 400
--- json_path
error.code = "body_invalid"
error.param absent
--- db_unchanged
--- stripe_requests: 0

=== duplicate keys: body_invalid
--- request
POST /admin/api/invoices

{"items":[{{item}}],"customer":"{{cus}}","customer":"{{cus}}"}
--- error_code: 400
--- json_path
error.code = "body_invalid"
error.param absent
--- db_unchanged
--- stripe_requests: 0

=== a JSON array: body_invalid
--- request
POST /admin/api/invoices

[{"items":[{{item}}],"customer":"{{cus}}"}]
--- error_code: 400
--- json_path
error.code = "body_invalid"
error.param absent
--- stripe_requests: 0

=== a JSON string: body_invalid
--- request
POST /admin/api/invoices

"items"
--- error_code: 400
--- json_path
error.code = "body_invalid"

=== JSON null: body_invalid
--- request
POST /admin/api/invoices

null
--- error_code: 400
--- json_path
error.code = "body_invalid"

=== an unknown top-level key: parameter_unknown
--- request
POST /admin/api/invoices

{"items":[{{item}}],"customer":"{{cus}}","amount":5}
--- error_code: 400
--- json_path
error.type = "invalid_request_error"
error.code = "parameter_unknown"
error.param = "amount"
--- db_unchanged
--- stripe_requests: 0

=== items missing: parameter_missing
--- request
POST /admin/api/invoices

{"customer":"{{cus}}"}
--- error_code: 400
--- json_path
error.code = "parameter_missing"
error.param = "items"
--- db_unchanged
--- stripe_requests: 0

=== items null: parameter_invalid
--- request
POST /admin/api/invoices

{"items":null,"customer":"{{cus}}"}
--- error_code: 400
--- json_path
error.code = "parameter_invalid"
error.param = "items"

=== items an object: parameter_invalid
--- request
POST /admin/api/invoices

{"items":{{item}},"customer":"{{cus}}"}
--- error_code: 400
--- json_path
error.code = "parameter_invalid"
error.param = "items"
--- stripe_requests: 0

=== items empty: parameter_invalid
--- request
POST /admin/api/invoices

{"items":[],"customer":"{{cus}}"}
--- error_code: 400
--- json_path
error.code = "parameter_invalid"
error.param = "items"
--- db_unchanged
--- stripe_requests: 0

=== 251 items: parameter_invalid
--- request
POST /admin/api/invoices

{"items":[{{n251}}],"customer":"{{cus}}"}
--- error_code: 400
--- json_path
error.code = "parameter_invalid"
error.param = "items"
--- db_unchanged
--- stripe_requests: 0

=== an item that is not an object: items[N]
--- request
POST /admin/api/invoices

{"items":[{{item}},"x"],"customer":"{{cus}}"}
--- error_code: 400
--- json_path
error.code = "parameter_invalid"
error.param = "items[1]"
--- stripe_requests: 0

=== an unknown key in an item: items[N][key]
--- request
POST /admin/api/invoices

{"items":[{{item}},{{item}},{"name":"x","amount":1,"price":"p"}],"customer":"{{cus}}"}
--- error_code: 400
--- json_path
error.code = "parameter_unknown"
error.param = "items[2][price]"
--- db_unchanged
--- stripe_requests: 0

=== name missing: parameter_missing items[0][name]
--- request
POST /admin/api/invoices

{"items":[{"amount":1}],"customer":"{{cus}}"}
--- error_code: 400
--- json_path
error.code = "parameter_missing"
error.param = "items[0][name]"
--- stripe_requests: 0

=== name a number: items[0][name]
--- request
POST /admin/api/invoices

{"items":[{"name":5,"amount":1}],"customer":"{{cus}}"}
--- error_code: 400
--- json_path
error.code = "parameter_invalid"
error.param = "items[0][name]"

=== name null: items[0][name]
--- request
POST /admin/api/invoices

{"items":[{"name":null,"amount":1}],"customer":"{{cus}}"}
--- error_code: 400
--- json_path
error.code = "parameter_invalid"
error.param = "items[0][name]"

=== name empty: items[0][name]
--- request
POST /admin/api/invoices

{"items":[{"name":"","amount":1}],"customer":"{{cus}}"}
--- error_code: 400
--- json_path
error.code = "parameter_invalid"
error.param = "items[0][name]"
--- stripe_requests: 0

=== name only blanks: items[1][name]
--- request
POST /admin/api/invoices

{"items":[{{item}},{"name":" \t\r\n ","amount":1}],"customer":"{{cus}}"}
--- error_code: 400
--- json_path
error.code = "parameter_invalid"
error.param = "items[1][name]"
--- db_unchanged
--- stripe_requests: 0

=== name of 501 bytes after trimming: items[0][name]
--- request
POST /admin/api/invoices

{"items":[{"name":"  {{s501}}  ","amount":1}],"customer":"{{cus}}"}
--- error_code: 400
--- json_path
error.code = "parameter_invalid"
error.param = "items[0][name]"
--- stripe_requests: 0

=== name of 251 two-byte characters (502 bytes): items[0][name]
--- request eval
"POST /admin/api/invoices\n\n{\"items\":[{\"name\":\"" . ("\xc3\xa9" x 251) . "\",\"amount\":1}],\"customer\":\"$Invoices::Test::VARS{cus}\"}"
--- error_code: 400
--- json_path
error.code = "parameter_invalid"
error.param = "items[0][name]"
--- stripe_requests: 0

=== amount missing: parameter_missing items[0][amount]
--- request
POST /admin/api/invoices

{"items":[{"name":"x"}],"customer":"{{cus}}"}
--- error_code: 400
--- json_path
error.code = "parameter_missing"
error.param = "items[0][amount]"
--- db_unchanged
--- stripe_requests: 0

=== amount 1.5: items[0][amount]
--- request
POST /admin/api/invoices

{"items":[{"name":"x","amount":1.5}],"customer":"{{cus}}"}
--- error_code: 400
--- json_path
error.code = "parameter_invalid"
error.param = "items[0][amount]"
--- stripe_requests: 0

=== amount 1e3: items[0][amount]
--- request
POST /admin/api/invoices

{"items":[{"name":"x","amount":1e3}],"customer":"{{cus}}"}
--- error_code: 400
--- json_path
error.param = "items[0][amount]"

=== amount "3300": items[0][amount]
--- request
POST /admin/api/invoices

{"items":[{"name":"x","amount":"3300"}],"customer":"{{cus}}"}
--- error_code: 400
--- json_path
error.code = "parameter_invalid"
error.param = "items[0][amount]"
--- stripe_requests: 0

=== amount true: items[0][amount]
--- request
POST /admin/api/invoices

{"items":[{"name":"x","amount":true}],"customer":"{{cus}}"}
--- error_code: 400
--- json_path
error.param = "items[0][amount]"

=== amount null: items[0][amount]
--- request
POST /admin/api/invoices

{"items":[{"name":"x","amount":null}],"customer":"{{cus}}"}
--- error_code: 400
--- json_path
error.param = "items[0][amount]"

=== amount 0: items[0][amount]
--- request
POST /admin/api/invoices

{"items":[{"name":"x","amount":0}],"customer":"{{cus}}"}
--- error_code: 400
--- json_path
error.code = "parameter_invalid"
error.param = "items[0][amount]"
--- stripe_requests: 0

=== amount -1: items[1][amount]
--- request
POST /admin/api/invoices

{"items":[{{item}},{"name":"x","amount":-1}],"customer":"{{cus}}"}
--- error_code: 400
--- json_path
error.param = "items[1][amount]"

=== amount 100000000: items[0][amount]
--- request
POST /admin/api/invoices

{"items":[{"name":"x","amount":100000000}],"customer":"{{cus}}"}
--- error_code: 400
--- json_path
error.code = "parameter_invalid"
error.param = "items[0][amount]"
--- db_unchanged
--- stripe_requests: 0

=== customer missing: parameter_missing customer
--- request
POST /admin/api/invoices

{"items":[{{item}}]}
--- error_code: 400
--- json_path
error.code = "parameter_missing"
error.param = "customer"
--- db_unchanged
--- stripe_requests: 0

=== customer a number: customer
--- request
POST /admin/api/invoices

{"items":[{{item}}],"customer":5}
--- error_code: 400
--- json_path
error.code = "parameter_invalid"
error.param = "customer"

=== customer "cus_" alone: customer
--- request
POST /admin/api/invoices

{"items":[{{item}}],"customer":"cus_"}
--- error_code: 400
--- json_path
error.code = "parameter_invalid"
error.param = "customer"
--- stripe_requests: 0

=== customer without cus_: customer
--- request
POST /admin/api/invoices

{"items":[{{item}}],"customer":"cu_abcdef"}
--- error_code: 400
--- json_path
error.param = "customer"

=== customer with a dash: customer
--- request
POST /admin/api/invoices

{"items":[{{item}}],"customer":"cus_ab-cd"}
--- error_code: 400
--- json_path
error.param = "customer"
--- stripe_requests: 0

=== customer of 256 characters: customer
--- request
POST /admin/api/invoices

{"items":[{{item}}],"customer":"cus_{{s256}}"}
--- error_code: 400
--- json_path
error.param = "customer"
--- stripe_requests: 0

=== paymentMethod a number: paymentMethod
--- request
POST /admin/api/invoices

{"items":[{{item}}],"customer":"{{cus}}","paymentMethod":5}
--- error_code: 400
--- json_path
error.code = "parameter_invalid"
error.param = "paymentMethod"
--- db_unchanged
--- stripe_requests: 0

=== paymentMethod "pm_" alone: paymentMethod
--- request
POST /admin/api/invoices

{"items":[{{item}}],"customer":"{{cus}}","paymentMethod":"pm_"}
--- error_code: 400
--- json_path
error.param = "paymentMethod"

=== paymentMethod of another kind: paymentMethod
--- request
POST /admin/api/invoices

{"items":[{{item}}],"customer":"{{cus}}","paymentMethod":"tok_visa"}
--- error_code: 400
--- json_path
error.param = "paymentMethod"
--- stripe_requests: 0

=== paymentMethod with a space: paymentMethod
--- request
POST /admin/api/invoices

{"items":[{{item}}],"customer":"{{cus}}","paymentMethod":"pm_a b"}
--- error_code: 400
--- json_path
error.param = "paymentMethod"

=== paymentMethod of 256 characters: paymentMethod
--- request
POST /admin/api/invoices

{"items":[{{item}}],"customer":"{{cus}}","paymentMethod":"pm_x{{s256}}"}
--- error_code: 400
--- json_path
error.param = "paymentMethod"
--- stripe_requests: 0

=== currency of two letters: currency
--- request
POST /admin/api/invoices

{"items":[{{item}}],"customer":"{{cus}}","currency":"eu"}
--- error_code: 400
--- json_path
error.code = "parameter_invalid"
error.param = "currency"
--- db_unchanged
--- stripe_requests: 0

=== currency of four letters: currency
--- request
POST /admin/api/invoices

{"items":[{{item}}],"customer":"{{cus}}","currency":"euro"}
--- error_code: 400
--- json_path
error.param = "currency"

=== currency with a digit: currency
--- request
POST /admin/api/invoices

{"items":[{{item}}],"customer":"{{cus}}","currency":"e1r"}
--- error_code: 400
--- json_path
error.param = "currency"
--- stripe_requests: 0

=== currency a number: currency
--- request
POST /admin/api/invoices

{"items":[{{item}}],"customer":"{{cus}}","currency":978}
--- error_code: 400
--- json_path
error.param = "currency"

=== description a number: description
--- request
POST /admin/api/invoices

{"items":[{{item}}],"customer":"{{cus}}","description":5}
--- error_code: 400
--- json_path
error.code = "parameter_invalid"
error.param = "description"
--- db_unchanged
--- stripe_requests: 0

=== description of 501 bytes: description
--- request
POST /admin/api/invoices

{"items":[{{item}}],"customer":"{{cus}}","description":"{{s501}}"}
--- error_code: 400
--- json_path
error.param = "description"
--- stripe_requests: 0

=== a NUL anywhere (\u0000): the body is refused whole
--- request
POST /admin/api/invoices

{"items":[{{item}}],"customer":"{{cus}}","description":"a\u0000b"}
--- error_code: 400
--- json_path
error.code = "body_invalid"
error.message ~ u0000
--- db_unchanged
--- stripe_requests: 0

=== Idempotency-Key is checked before the body
--- request
POST /admin/api/invoices

[]
--- more_headers
Idempotency-Key:
--- error_code: 400
--- json_path
error.param = "Idempotency-Key"
--- db_unchanged
--- stripe_requests: 0

=== an unknown customer: 404, nothing sent, nothing written
--- request
POST /admin/api/invoices

{"items":[{{item}}],"customer":"cus_NoSuchTeam000"}
--- more_headers
Idempotency-Key: unknown-customer-1
--- error_code: 404
--- response_headers
Content-Type: application/json; charset=utf-8
--- json_path
error.type = "invalid_request_error"
error.code = "resource_missing"
error.param = "customer"
error.message ~ \S
--- db_unchanged
--- stripe_requests: 0

=== a customer Stripe knows but no team is linked to: 404
--- request
POST /admin/api/invoices

{"items":[{{item}}],"customer":"{{unlinked}}"}
--- error_code: 404
--- json_path
error.code = "resource_missing"
error.param = "customer"
--- db_unchanged
--- stripe_requests: 0

=== a body over client_max_body_size: 413 JSON, nothing sent
--- request
POST /small/api/invoices

{{big}}
--- error_code: 413
--- response_headers
Content-Type: application/json; charset=utf-8
--- json_path
error.type = "invalid_request_error"
error.code = "body_too_large"
--- db_unchanged
--- stripe_requests: 0
