# The contract served and kept.  GET /admin/api/openapi.yaml, from the two
# locations docs/configuration.md shows (taken from it: no Api-Key, and
# behind the key with auth_request), serves docs/openapi.yaml byte for
# byte.  Then real requests to every endpoint and method the API has (the
# list with its filters and cursors, the summary, both exports, one
# invoice, its history, create, every action, DELETE, the sync, the
# webhook, HEAD) and their main errors (400 naming the parameter, 401, 403
# of a read key, 404, 405, 409, 413, 415, 402, 502, 503, 504) are checked
# against the file by Invoices::Test::OpenAPI: the status documented for
# the operation, headers and JSON bodies valid against their schemas
# (closed with additionalProperties: false, so an undocumented key fails),
# a 405's Allow, no undocumented query parameter accepted, no 2xx to a
# body the requestBody schema refuses.  Every operation and every query
# parameter of the file must be reached, every header it documents seen.
# Last, the validator is shown to fail on schemas and answers broken on
# purpose, so a pass means something.

use strict;
use warnings;
use Test::More;
use JSON::PP ();
use Storable qw(dclone);
use Invoices::Test;
use Invoices::Webhook;
use Invoices::Test::OpenAPI;
use Invoices::Test::JSONCheck qw(decode_typed);

my $REPO = $ENV{INVOICES_REPO} // die "run through scripts/test\n";
my $FILE = "$REPO/docs/openapi.yaml";
my $SPEC = "/admin/api/openapi.yaml";
my $I = '/admin/api/invoices';
my $api = Invoices::Test::OpenAPI->load($FILE);

my $KEYS = <<'KEYS';
ops write test-write-key-oas
reader read test-read-key-oas
KEYS
my $WRITE = 'test-write-key-oas';
my $READ = 'test-read-key-oas';

# The two locations of docs/configuration.md ("The contract"), taken from
# it with the package's path replaced by the checkout's: the plain one in
# the server of the file, the one behind the Api-Key in a second server
# (on its own port) with its own admin location.
my ($OPEN_LOCATION, $KEYED_LOCATION);
{
    open my $fh, '<', "$REPO/docs/configuration.md" or die "configuration.md: $!";
    my $doc = do { local $/; <$fh> };
    for my $block ($doc =~ /^```nginx\n(.*?)^```$/msg) {
        next unless $block =~ /^location = \Q$SPEC\E \{/;
        $block =~ s{^(\s*alias )\S+;}{$1$FILE;}m or die "no alias in:\n$block";
        $block =~ s/^/        /mg;
        if ($block =~ /auth_request/) { $KEYED_LOCATION //= $block }
        else                          { $OPEN_LOCATION //= $block }
    }
    die "docs/configuration.md: no location of $SPEC, with and without auth_request\n"
        unless $OPEN_LOCATION && $KEYED_LOCATION;
}
my $KEYED_PORT = Invoices::Test::Nginx::free_port();

my $W = new_whsec();
# one Stripe attempt, 1 s: a fault answers 502 or 504 at once
my $HANG = 3 * time_factor();
start_server(stripe => { max_retries => 0, timeout => time_factor() . 's' }, keys => $KEYS,
             location_config => '            client_max_body_size 4k;',
             server_config => webhook_location(
                 secrets => ['file:' . secret_file($W)],
                 extra => 'client_max_body_size 64k;') . $OPEN_LOCATION,
             http_config => "    server {\n"
                          . "        listen 127.0.0.1:$KEYED_PORT;\n"
                          . "        location $I {\n"
                          . "            invoices_admin;\n"
                          . "        }\n"
                          . $KEYED_LOCATION
                          . "    }\n");
default_secret($W);

my $J = JSON::PP->new->utf8->canonical;
my $CT = ['Content-Type', 'application/json'];
my @SEEN;       # every [method, path, response] of call(), for the sweep at the end

# call($name, $method, $path, %o) -> the response, checked: the status
# expected (o{status}), as the contract documents it, JSON bodies with
# Content-Type application/json; charset=utf-8.  o: key (the write key;
# undef: none), body (a hashref is encoded), headers, idem.
sub call {
    my ($name, $method, $path, %o) = @_;
    my @h;
    my $key = exists $o{key} ? $o{key} : $WRITE;
    push @h, ['Api-Key', $key] if defined $key;
    push @h, ['Idempotency-Key', $o{idem}] if defined $o{idem};
    my $body = $o{body};
    $body = $J->encode($body) if ref $body;
    push @h, $CT if defined $body && !$o{no_ct};
    push @h, @{ $o{headers} || [] };
    my $res = request($method, $path, \@h, $body);
    push @SEEN, [$method, $path, $res];
    subtest "$name: $method $path" => sub {
        if (defined $o{status}) {
            is($res->status, $o{status}, "status $o{status}")
                or diag $res->describe;
        }
        my @p = $api->check($method, $path, $res, body => $body);
        ok(!@p, 'as docs/openapi.yaml documents it')
            or diag join("\n", @p), "\n", $res->describe;
        my $ct = $res->header('Content-Type') // '';
        if ($ct =~ m{^application/json}i) {
            is($ct, 'application/json; charset=utf-8', 'JSON in UTF-8');
        }
        if ($res->status == 405) {
            ok(defined $res->header('Allow'), '405 with Allow');
        }
        if ($res->status == 503) {
            like($res->header('Retry-After') // '', qr/^\d+$/, '503 with Retry-After');
        }
        if ($res->status >= 400 && defined $o{param}) {
            is((($res->json_or_undef // {})->{error} // {})->{param}, $o{param},
               "param $o{param}");
        }
        if ($res->status >= 400 && defined $o{code}) {
            is((($res->json_or_undef // {})->{error} // {})->{code}, $o{code},
               "code $o{code}");
        }
    };
    return $res;
}

sub json_of { return $_[0]->json_or_undef // {} }

#----------------------------------------------------------------------
# the file itself, served

my @p;
my $text = do {
    open my $fh, '<:raw', $FILE or die "$FILE: $!";
    local $/;
    <$fh>;
};
{
    my $res = request(GET => $SPEC);
    is($res->status, 200, "GET $SPEC with no Api-Key: 200") or diag $res->describe;
    ok($res->body eq $text, 'byte for byte docs/openapi.yaml')
        or diag 'served ' . length($res->body) . ' bytes, the file has ' . length $text;
    is($res->header('Content-Type'), 'application/yaml', 'Content-Type application/yaml');
    @p = $api->check(GET => $SPEC, $res);
    ok(!@p, "$SPEC as the file documents itself") or diag join "\n", @p;
    ok(defined $res->header('ETag'), 'with an ETag (a static file)');

    $res = request(GET => $SPEC, [['If-None-Match', $res->header('ETag')]]);
    is($res->status, 304, 'If-None-Match: 304');
    ok(!$api->check(GET => $SPEC, $res), '304 as documented');

    $res = request(GET => $SPEC, [['Api-Key', $READ]]);
    is($res->status, 200, 'a key does no harm: 200');

    # behind the Api-Key, as docs/configuration.md shows it
    for my $case ([undef, 401], ['not-a-key-at-all', 401], [$READ, 200], [$WRITE, 200]) {
        my ($key, $want) = @$case;
        my $who = defined $key ? ($key eq $READ ? 'a read key' : $key eq $WRITE
                                  ? 'a write key' : 'a wrong key') : 'no key';
        my $r = Invoices::Test::HTTP::request($KEYED_PORT, GET => $SPEC,
                                              [defined $key ? (['Api-Key', $key]) : ()]);
        is($r->status, $want, "behind the key, $who: $want") or diag $r->describe;
        @p = $api->check(GET => $SPEC, $r);
        ok(!@p, "behind the key, $who: as documented") or diag join "\n", @p;
        ok($r->body eq $text, 'the file') if $want == 200;
        is($r->header('Content-Type'), 'application/json; charset=utf-8',
           "the API's JSON error") if $want == 401;
    }

    # the module's own location still answers beside it
    $res = request(GET => "$I/openapi.yaml", [['Api-Key', $READ]]);
    is($res->status, 400, "$I/openapi.yaml is the module's (an id that is not one)")
        or diag $res->describe;
}

#----------------------------------------------------------------------
# data: a linked customer, invoices made through the API and the webhook

my $visa = linked_customer(payment_method => 'pm_card_visa');
my $cus = $visa->{customer};
my $team = $visa->{team}{id} // sql_value('SELECT id FROM teams WHERE stripe_customer_id = '
                                         . quote($cus));

sub create_open {
    my ($name, $amount, %o) = @_;
    my $res = call("create ($name)", POST => $I, body =>
                   { items => [{ name => $name, amount => $amount }],
                     customer => $cus, %{ $o{extra} || {} } },
                   status => 201, idem => $o{idem});
    return json_of($res)->{id} // 'in_none';
}

# an invoice in Stripe only (a draft), brought here by the sync
sub stripe_draft {
    my ($st, $inv) = fake_stripe(POST => '/v1/invoices',
                                 { customer => $cus, auto_advance => 'false' });
    is($st, 200, 'a draft in Stripe') or diag $J->encode($inv);
    ($st) = fake_stripe(POST => '/v1/invoiceitems',
                        { customer => $cus, invoice => $inv->{id}, amount => 700 });
    is($st, 200, 'a line on it');
    return $inv->{id};
}

my $res = call('create', POST => $I, idem => 'oas-create-1', status => 201,
               body => { items => [{ name => 'Contract', amount => 3300 }],
                         customer => $cus, paymentMethod => 'pm_card_visa',
                         description => 'checked against openapi.yaml' });
my $open1 = json_of($res)->{id} // 'in_none';
like($open1, qr/^in_/, 'the create answers a Stripe invoice');
$res = call('create replayed', POST => $I, idem => 'oas-create-1', status => 201,
            body => { items => [{ name => 'Contract', amount => 3300 }],
                      customer => $cus, paymentMethod => 'pm_card_visa',
                      description => 'checked against openapi.yaml' });
is($res->header('Idempotent-Replayed'), 'true', 'replayed');

my $open2 = create_open('Second', 1200);
my $open3 = create_open('Third', 900, extra => { currency => 'usd' });
my $open4 = create_open('Fourth', 4100);
my $open5 = create_open('Fifth', 500);
my $draft1 = stripe_draft();
my $draft2 = stripe_draft();

# an invoice of a customer with no team, from the webhook (user null)
my $lone = stripe_invoice(status => 'paid', customer => new_id('cus'),
                          customer_email => 'lone@example.test');
my $lone_paid = invoice_event('invoice.paid', $lone);
$res = deliver_event($lone_paid);
@p = $api->check(POST => '/stripe/webhook', $res, body => event_body($lone_paid));
is($res->status, 200, 'webhook: 200') or diag $res->describe;
ok(!@p, 'webhook: as documented') or diag join "\n", @p;

# a row stored before migration 0005: the newer fields null
insert_invoice(status => 'void', amount => 2500, stripe_customer_id => 'cus_OldRow0000001',
               stripe_created_at => '2020-01-02 03:04:05.678+00');

#----------------------------------------------------------------------
# the sync: brings the drafts here

$res = call('sync', POST => "$I/sync", status => 200);
cmp_ok(json_of($res)->{inserted} // 0, '>=', 2, 'the sync inserted the drafts');
call('sync since', POST => "$I/sync?since=0", status => 200);
call('sync: go on after', POST => "$I/sync?starting_after=$draft1", status => 200);
call('sync: bad since', POST => "$I/sync?since=abc", status => 400, param => 'since');
call('sync: a read key', POST => "$I/sync", key => $READ, status => 403);
call('sync: no key', POST => "$I/sync", key => undef, status => 401);
call('sync: GET', GET => "$I/sync", status => 405);

#----------------------------------------------------------------------
# the list

$res = call('list', GET => $I, status => 200);
my $list = json_of($res);
cmp_ok(scalar @{ $list->{invoices} || [] }, '>=', 8, 'the invoices are listed');
my ($etag) = $res->header('ETag');
my ($some) = grep { $_->{invoiceId} eq $open2 } @{ $list->{invoices} || [] };
my $id2 = $some->{_id} // '000000000000000000000000';
ok(grep({ !defined $_->{user} } @{ $list->{invoices} || [] }), 'one without a team (user null)');
ok(grep({ !defined $_->{number} } @{ $list->{invoices} || [] }),
   'one with nulls (a draft or an old row)');

call('list: If-None-Match', GET => $I, headers => [['If-None-Match', $etag]], status => 304);
$res = call('list: page 1 of 2', GET => "$I?page=1&limit=2", status => 200);
ok(json_of($res)->{has_more}, 'has_more');
call('list: page 2', GET => "$I?page=2&limit=2", status => 200);
$res = call('list: past the end', GET => "$I?page=99&limit=100", status => 200);
is_deeply(json_of($res)->{invoices}, [], 'past the end: empty');
call('list: filters', GET => "$I?status=open,paid&currency=eur&customer=$cus&team=$team"
     . '&amount%5Bgte%5D=100&amount[lt]=100000&created[gte]=2020-01-01T00:00:00Z'
     . '&created[lte]=4102444800&q=contract', status => 200);
call('list: dueDate', GET => "$I?dueDate[gt]=2020-01-01T00:00:00.000Z&dueDate[lte]=4102444800"
     . '&created[gt]=0&created[lt]=4102444800&amount[gt]=0&amount[lte]=99999999'
     . '&dueDate[gte]=0&dueDate[lt]=4102444800', status => 200);
$res = call('list: starting_after', GET => "$I?limit=2&starting_after=$open2", status => 200);
call('list: ending_before', GET => "$I?limit=2&ending_before=$id2", status => 200);
call('list: a read key', GET => $I, key => $READ, status => 200);
$res = call('list: HEAD', HEAD => "$I?limit=2", status => 200);
is($res->body, '', 'HEAD: no body');
call('get: HEAD', HEAD => "$I/$open1", key => $READ, status => 200);
call('events: HEAD', HEAD => "$I/$open1/events", status => 200);
call('summary: HEAD', HEAD => "$I/summary", status => 200);
call('export: HEAD', HEAD => "$I/export?format=ndjson", status => 200);
call('list: HEAD without a key', HEAD => $I, key => undef, status => 401);

call('list: limit=abc', GET => "$I?limit=abc", status => 400, param => 'limit',
     code => 'parameter_invalid');
call('list: limit=101', GET => "$I?limit=101", status => 400, param => 'limit');
call('list: a typo', GET => "$I?stauts=paid", status => 400, param => 'stauts',
     code => 'parameter_unknown');
call('list: a repeated parameter', GET => "$I?status=paid&status=open", status => 400,
     param => 'status');
call('list: bad status', GET => "$I?status=payed", status => 400, param => 'status');
call('list: bad created', GET => "$I?created[gte]=yesterday", status => 400,
     param => 'created[gte]');
call('list: an unknown cursor', GET => "$I?starting_after=in_NoSuchInvoice0000", status => 400,
     param => 'starting_after');
call('list: both cursors', GET => "$I?starting_after=$open2&ending_before=$open2", status => 400);
call('list: a cursor and page 2', GET => "$I?starting_after=$open2&page=2", status => 400);
call('list: no key', GET => $I, key => undef, status => 401, code => 'api_key_missing');
call('list: a wrong key', GET => $I, key => 'not-a-key-at-all', status => 401,
     code => 'api_key_invalid');
call('list: PUT', PUT => $I, status => 405, body => '{}');
call('list: a body too large', GET => $I, body => 'x' x 8192, no_ct => 1, status => 413);

#----------------------------------------------------------------------
# the summary

$res = call('summary', GET => "$I/summary", status => 200);
call('summary: If-None-Match', GET => "$I/summary",
     headers => [['If-None-Match', $res->header('ETag')]], status => 304);
call('summary: filters', GET => "$I/summary?status=open&currency=eur&q=e"
     . '&created[gte]=2020-01-01T00:00:00Z', status => 200);
call('summary: every filter', GET => "$I/summary?status=open,paid&currency=eur&customer=$cus"
     . "&team=$team&q=e&amount[gte]=1&amount[gt]=0&amount[lte]=99999999&amount[lt]=99999999"
     . '&created[gte]=2020-01-01T00:00:00Z&created[gt]=0&created[lte]=4102444800'
     . '&created[lt]=4102444800&dueDate[gte]=0&dueDate[gt]=0&dueDate[lte]=4102444800'
     . '&dueDate[lt]=4102444800', status => 200);
call('summary: page', GET => "$I/summary?page=1", status => 400, param => 'page',
     code => 'parameter_unknown');
call('summary: no key', GET => "$I/summary", key => undef, status => 401);
call('summary: POST', POST => "$I/summary", body => '{}', status => 405);

#----------------------------------------------------------------------
# the export

$res = call('export csv', GET => "$I/export?format=csv", status => 200);
is($res->header('Content-Type'), 'text/csv; charset=utf-8', 'CSV: text/csv; charset=utf-8');
like($res->header('Content-Disposition') // '', qr/^attachment; filename="invoices-\d{8}\.csv"$/,
     'CSV: an attachment named invoices-<date>.csv');
{
    my ($header) = split /\r\n/, $res->body;
    my ($columns) = $api->doc->{paths}{"$I/export"}{get}{description}
                    =~ /Columns: `([^`]+)`/;
    $columns =~ s/\s+//g;
    is($header, $columns, 'CSV: the header row is the documented column list');
}
call('export: default format', GET => "$I/export", status => 200);
call('export: every filter', GET => "$I/export?format=csv&status=open,paid&currency=eur"
     . "&customer=$cus&team=$team&q=e&amount[gte]=1&amount[gt]=0&amount[lte]=99999999"
     . '&amount[lt]=99999999&created[gte]=2020-01-01T00:00:00Z&created[gt]=0'
     . '&created[lte]=4102444800&created[lt]=4102444800&dueDate[gte]=0&dueDate[gt]=0'
     . '&dueDate[lte]=4102444800&dueDate[lt]=4102444800', status => 200);
$res = call('export ndjson',
            GET => "$I/export?format=ndjson&status=open,paid,draft,void,uncollectible",
            status => 200);
like($res->header('Content-Type') // '', qr{^application/x-ndjson(;|$)},
     'NDJSON: application/x-ndjson');
{
    my @lines = split /\n/, $res->body, -1;
    is(pop @lines, '', 'NDJSON: every line ends in \n');
    cmp_ok(scalar @lines, '>=', 8, 'NDJSON: the invoices');
    my @bad;
    for my $i (0 .. $#lines) {
        my $node = eval { decode_typed($lines[$i], "line $i") };
        push(@bad, "line $i: $@"), next unless $node;
        push @bad, $api->validate($api->schema('Invoice'), $node, "line $i");
    }
    ok(!@bad, 'NDJSON: each line is an Invoice of the contract') or diag join "\n", @bad;
}
call('export: bad format', GET => "$I/export?format=xml", status => 400, param => 'format');
call('export: a cursor', GET => "$I/export?starting_after=$open2", status => 400,
     param => 'starting_after');
call('export: no key', GET => "$I/export", key => undef, status => 401);
call('export: POST', POST => "$I/export", body => '{}', status => 405);

#----------------------------------------------------------------------
# one invoice, its history

$res = call('get by _id', GET => "$I/$id2", status => 200);
call('get: If-None-Match', GET => "$I/$id2", headers => [['If-None-Match', $res->header('ETag')]],
     status => 304);
call('get by Stripe id', GET => "$I/$open1", key => $READ, status => 200);
call('get: page and limit ignored', GET => "$I/$open1?page=2&limit=1", status => 200);
call('get the row without a team', GET => "$I/$lone->{id}", status => 200);
call('get: unknown', GET => "$I/in_NoSuchInvoice0000", status => 404);
call('get: unknown _id', GET => "$I/000000000000000000000000", status => 404);
call('get: malformed', GET => "$I/not-an-id", status => 400);
call('get: no key', GET => "$I/$id2", key => undef, status => 401);
call('get: PUT', PUT => "$I/$id2", body => '{}', status => 405);
call('get: a body too large', GET => "$I/$id2", body => 'x' x 8192, no_ct => 1, status => 413);

call('events', GET => "$I/$open1/events", status => 200);
call('events by _id', GET => "$I/$id2/events", key => $READ, status => 200);
call('events of a webhook invoice', GET => "$I/$lone->{id}/events", status => 200);
call('events: unknown', GET => "$I/in_NoSuchInvoice0000/events", status => 404);
call('events: malformed', GET => "$I/not-an-id/events", status => 400);
call('events: no key', GET => "$I/$open1/events", key => undef, status => 401);
call('events: POST', POST => "$I/$open1/events", status => 405);

#----------------------------------------------------------------------
# create: its errors

call('create: no items', POST => $I, body => { items => [], customer => $cus },
     status => 400, param => 'items');
call('create: unknown key', POST => $I, body => { items => [{ name => 'x', amount => 1 }],
                                                   customer => $cus, colour => 'red' },
     status => 400);
call('create: unknown customer', POST => $I, status => 404, param => 'customer',
     body => { items => [{ name => 'x', amount => 100 }], customer => 'cus_NoSuchTeam00000' });
call('create: not JSON', POST => $I, no_ct => 1, status => 415,
     headers => [['Content-Type', 'text/plain']], body => 'items=1');
call('create: too large', POST => $I, status => 413,
     body => { items => [{ name => 'y' x 5000, amount => 1 }], customer => $cus });
call('create: a read key', POST => $I, key => $READ, status => 403,
     body => { items => [{ name => 'x', amount => 100 }], customer => $cus },
     code => 'api_key_read_only');
call('create: no key', POST => $I, key => undef, status => 401,
     body => { items => [{ name => 'x', amount => 100 }], customer => $cus });
call('create: the key reused with another body', POST => $I, idem => 'oas-create-1',
     body => { items => [{ name => 'Other', amount => 1 }], customer => $cus },
     status => 409, code => 'idempotency_key_reused');
call('create: a bad payment method', POST => $I, status => 400,
     body => { items => [{ name => 'x', amount => 100 }], customer => $cus,
               paymentMethod => 'pm_NoSuchMethod000' });

fake_config({ faults => [{ path => 'POST /v1/invoices', status => 500, count => 1 }] });
call('create: Stripe fails', POST => $I, status => 502,
     body => { items => [{ name => 'x', amount => 100 }], customer => $cus });
fake_config({ faults => [{ path => 'POST /v1/invoices', hang_seconds => $HANG, count => 1 }] });
call('create: Stripe too slow', POST => $I, status => 504,
     body => { items => [{ name => 'x', amount => 100 }], customer => $cus });
fake_config({ faults => [] });

#----------------------------------------------------------------------
# the actions and DELETE

$res = call('finalize', POST => "$I/$draft1/finalize", idem => 'oas-fin-1', status => 200);
is(json_of($res)->{status}, 'open', 'finalized: open');
call('finalize replayed', POST => "$I/$draft1/finalize", idem => 'oas-fin-1', status => 200);
call('finalize: not a draft', POST => "$I/$open1/finalize", status => 409,
     code => 'invoice_status_conflict');
call('send', POST => "$I/$open1/send", status => 400);        # charge_automatically
call('mark_uncollectible', POST => "$I/$open2/mark_uncollectible", status => 200);
call('pay: declined', POST => "$I/$open2/pay", status => 402,
     body => { paymentMethod => 'pm_card_chargeDeclined' });
call('pay', POST => "$I/$open2/pay", status => 200, body => {});
call('void', POST => "$I/$open4/void", status => 200);
call('void: void already', POST => "$I/$open4/void", status => 409,
     code => 'invoice_status_conflict');
call('void: the key reused elsewhere', POST => "$I/$open5/void", idem => 'oas-fin-1',
     status => 409);
call('void: unknown invoice', POST => "$I/in_NoSuchInvoice0000/void", status => 404,
     code => 'resource_missing', param => 'id');
{
    # a row Stripe does not know: Stripe's 404, passed on
    my $row = insert_invoice(status => 'open', stripe_customer_id => $cus);
    call('void: Stripe does not know it', POST => "$I/$row->{stripe_invoice_id}/void",
         status => 404, code => 'stripe_request_refused');
}
call('void: unknown body key', POST => "$I/$open5/void", body => { reason => 'x' },
     status => 400);
call('void: not JSON', POST => "$I/$open5/void", no_ct => 1, status => 415,
     headers => [['Content-Type', 'text/plain']], body => 'x');
call('void: too large', POST => "$I/$open5/void", status => 413,
     body => { x => 'y' x 5000 });
call('void: a read key', POST => "$I/$open5/void", key => $READ, status => 403);
call('void: no key', POST => "$I/$open5/void", key => undef, status => 401);
call('void: GET', GET => "$I/$open5/void", status => 405);
fake_config({ faults => [{ path => "POST /v1/invoices/$open5/void", status => 500, count => 1 }] });
call('void: Stripe fails', POST => "$I/$open5/void", status => 502);
fake_config({ faults => [{ path => "POST /v1/invoices/$open5/void", hang_seconds => $HANG,
                           count => 1 }] });
call('void: Stripe too slow', POST => "$I/$open5/void", status => 504);
fake_config({ faults => [] });

call('delete: not a draft', DELETE => "$I/$open3", status => 409,
     code => 'invoice_status_conflict');
call('delete', DELETE => "$I/$draft2", idem => 'oas-del-1', status => 200);
$res = call('delete replayed', DELETE => "$I/$draft2", idem => 'oas-del-1', status => 200);
is($res->header('Idempotent-Replayed'), 'true', 'replayed');
call('delete: gone', DELETE => "$I/$draft2", status => 404);
call('delete: a read key', DELETE => "$I/$open3", key => $READ, status => 403);
call('events of a deleted invoice', GET => "$I/$draft2/events", status => 200);

#----------------------------------------------------------------------
# the webhook's errors

{
    $res = deliver_event($lone_paid);
    is(result_of($res), 'duplicate', 'webhook: a repeat is a duplicate');
    ok(!$api->check(POST => '/stripe/webhook', $res, body => event_body($lone_paid)),
       'webhook duplicate: as documented');

    $res = deliver(event_body(invoice_event('invoice.paid', $lone)),
                   signature => 't=1,v1=00');
    is($res->status, 400, 'webhook: a bad signature: 400');
    my @p = $api->check(POST => '/stripe/webhook', $res);
    ok(!@p, 'webhook 400: as documented') or diag join "\n", @p;

    $res = request(GET => '/stripe/webhook');
    is($res->status, 405, 'webhook: GET: 405');
    @p = $api->check(GET => '/stripe/webhook', $res);
    ok(!@p, 'webhook 405: as documented') or diag join "\n", @p;

    $res = deliver('{"x":"' . ('z' x 70000) . '"}');
    is($res->status, 413, 'webhook: too large: 413');
    @p = $api->check(POST => '/stripe/webhook', $res);
    ok(!@p, 'webhook 413: as documented') or diag join "\n", @p;
}

#----------------------------------------------------------------------
# PostgreSQL down: 503

pg_stop();
call('list: PostgreSQL down', GET => $I, status => 503);
call('summary: PostgreSQL down', GET => "$I/summary", status => 503);
call('get: PostgreSQL down', GET => "$I/$open1", status => 503);
call('events: PostgreSQL down', GET => "$I/$open1/events", status => 503);
call('export: PostgreSQL down', GET => "$I/export", status => 503);
call('create: PostgreSQL down', POST => $I, status => 503,
     body => { items => [{ name => 'x', amount => 100 }], customer => $cus });
call('void: PostgreSQL down', POST => "$I/$open5/void", status => 503);
call('delete: PostgreSQL down', DELETE => "$I/$open3", status => 503);
call('sync: PostgreSQL down', POST => "$I/sync", status => 503);
{
    my $ev = invoice_event('invoice.paid', $lone);
    my $r = deliver_event($ev);
    is($r->status, 503, 'webhook: PostgreSQL down: 503 (Stripe retries)');
    @p = $api->check(POST => '/stripe/webhook', $r, body => event_body($ev));
    ok(!@p, 'webhook 503: as documented') or diag join "\n", @p;
}
pg_start();
wait_until(sub { request(GET => "$I?limit=1", [['Api-Key', $READ]])->status == 200 }, 20);

#----------------------------------------------------------------------
# every operation reached

my @never = $api->unexercised;
ok(!@never, 'every operation of docs/openapi.yaml was exercised')
    or diag 'never exercised: ' . join ', ', @never;
{
    my $seen = $api->exercised;
    for my $op ($api->operations) {
        note("$op: " . join ' ', map { "$_ x$seen->{$op}{$_}" } sort keys %{ $seen->{$op} || {} });
    }
}
@never = $api->unsent_headers;
ok(!@never, 'every header documented for a status answered came with it at least once')
    or diag 'never sent: ' . join ', ', @never;
@never = $api->unexercised_parameters;
ok(!@never, 'every query parameter of docs/openapi.yaml was given to a 2xx answer')
    or diag 'never: ' . join ', ', @never;
ok(scalar $api->check(GET => "$I?colour=red", Invoices::Test::Response->parse(
       "HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n\r\n"
       . '{"invoices":[],"count":0,"has_more":false}')),
   'an undocumented query parameter that is not refused is a problem');
ok(scalar $api->check(POST => '/admin/api/nothing/here', Invoices::Test::Response->parse(
       "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")),
   'a request to no documented path is a problem');

#----------------------------------------------------------------------
# the validator is honest: a schema broken on purpose fails real answers

{
    my $inv = decode_typed(request(GET => "$I/$open1", [['Api-Key', $READ]])->body);
    my $schema = $api->schema('Invoice');
    is_deeply([$api->validate($schema, $inv)], [], 'a real invoice passes');

    my $renamed = dclone($schema);
    $_ = $_ eq 'invoiceId' ? 'invoiceNumber' : $_ for @{ $renamed->{required} };
    $renamed->{properties}{invoiceNumber} = delete $renamed->{properties}{invoiceId};
    my @e = $api->validate($renamed, $inv);
    ok((grep { /required property invoiceNumber is absent/ } @e),
       'a required field renamed: fails') or diag join "\n", @e;
    ok((grep { /property invoiceId is not in the schema/ } @e),
       '... and the real field is undocumented') or diag join "\n", @e;

    my $retyped = dclone($schema);
    $retyped->{properties}{amount} = { type => 'string' };
    @e = $api->validate($retyped, $inv);
    ok((grep { /^\$\.amount: is integer/ } @e), 'amount typed string: fails')
        or diag join "\n", @e;

    my $extra = dclone($inv);
    $extra->{v}{surprise} = { t => 'string', v => 'undocumented' };
    @e = $api->validate($schema, $extra);
    ok((grep { /property surprise is not in the schema/ } @e),
       'an undocumented property: fails (additionalProperties: false)')
        or diag join "\n", @e;

    my $nulled = dclone($inv);
    $nulled->{v}{createdAt} = { t => 'null' };
    ok(scalar $api->validate($schema, $nulled), 'createdAt null: fails');
    $nulled = dclone($inv);
    $nulled->{v}{user} = { t => 'object', v => { name => { t => 'string', v => 'x' } } };
    ok(scalar $api->validate($schema, $nulled), 'a user without _id: fails (oneOf)');
    $nulled = dclone($inv);
    $nulled->{v}{status} = { t => 'string', v => 'refunded' };
    ok(scalar $api->validate($schema, $nulled), 'a status not in the enum: fails');
    $nulled = dclone($inv);
    $nulled->{v}{_id} = { t => 'string', v => 'ABC' };
    ok(scalar $api->validate($schema, $nulled), 'an _id not an ObjectId: fails ($ref, pattern)');

    # a whole copy of the contract, broken: a real list no longer passes
    my $res = request(GET => "$I?limit=3", [['Api-Key', $READ]]);
    ok(!$api->check(GET => "$I?limit=3", $res), 'a real list passes the contract');
    my $broken = $api->copy;
    $broken->doc->{components}{schemas}{Invoice}{properties}{amount}{type} = 'string';
    @e = $broken->check(GET => "$I?limit=3", $res);
    ok(scalar @e, 'the contract with amount a string: the real list fails') or diag $res->describe;
    $broken = $api->copy;
    delete $broken->doc->{paths}{$I}{get}{responses}{200};
    @e = $broken->check(GET => "$I?limit=3", $res);
    ok((grep { /status 200 is not documented/ } @e), 'the contract without 200: fails');
    $broken = $api->copy;
    $broken->doc->{paths}{$I}{get}{responses}{200}{headers}{'X-Never'} = { schema => {} };
    $broken->check(GET => "$I?limit=3", $res);
    ok((grep { /^GET \Q$I\E 200: X-Never$/ } $broken->unsent_headers),
       'a header documented but never sent: named');
    $broken = $api->copy;
    push @{ $broken->doc->{components}{schemas}{InvoiceList}{required} }, 'total';
    ok(scalar $broken->check(GET => "$I?limit=3", $res), 'a required total added: fails');

    # every JSON object answered, with a key added: undocumented, so it
    # fails, except where the contract leaves the object open (Stripe's
    # invoice as Stripe returned it: the create's 201, an action's 200)
    my ($closed, $open) = (0, 0);
    my @passed;
    for my $seen (@SEEN) {
        my ($method, $path, $real) = @$seen;
        next unless ($real->header('Content-Type') // '') =~ m{^application/json}
                    && ($real->body // '') =~ /^\{/;
        my $op = $api->operation($method, $path);
        my $stripe_object = $op && ($real->status == 201
            || ($real->status == 200 && $op->{template} =~ m{/\{action\}$}));
        (my $raw = $real->raw) =~ s/\r\n\r\n\{/\r\n\r\n{"zzUndocumented":1,/;
        $raw =~ s/^(Content-Length:) \d+/$1 0/mi;      # parse() reads to the end
        my @e = $api->check($method, $path, Invoices::Test::Response->parse($raw));
        if ($stripe_object) {
            $open++;
            push @passed, "$method $path (a Stripe object): @e" if @e;
        } else {
            $closed++;
            push @passed, "$method $path -> " . $real->status if !@e;
        }
    }
    ok(!@passed, "a key added to each of $closed JSON answers fails, "
                 . "to each of $open Stripe objects passes")
        or diag join "\n", @passed;

    # a create the code would accept with a key the contract does not have
    my ($created) = grep { $_->[0] eq 'POST' && $_->[1] eq $I && $_->[2]->status == 201 } @SEEN;
    my $colour = $J->encode({ items => [{ name => 'x', amount => 1 }],
                              customer => $cus, colour => 'red' });
    @e = $api->check(POST => $I, $created->[2], body => $colour);
    ok((grep { /request body the contract refuses: request: property colour/ } @e),
       'a 201 to a body with an undocumented key: fails') or diag join "\n", @e;

    my $allow = Invoices::Test::Response->parse(
        "HTTP/1.1 405 Not Allowed\r\nContent-Type: application/json; charset=utf-8\r\n"
        . "Allow: GET, HEAD\r\n\r\n{\"error\":{\"type\":\"invalid_request_error\","
        . "\"code\":\"method_not_allowed\",\"message\":\"m\"}}");
    ok((grep { /Allow: GET, HEAD, but the path documents GET, HEAD, POST/ }
        $api->check(PUT => $I, $allow)), 'an Allow without POST on the collection: fails');

    my $teapot = Invoices::Test::Response->parse(
        "HTTP/1.1 418 I'm a teapot\r\nContent-Type: application/json; charset=utf-8\r\n"
        . "\r\n{\"error\":{\"type\":\"api_error\",\"message\":\"tea\"}}");
    ok(scalar $api->check(GET => $I, $teapot), 'an undocumented status: fails');
    my $html = Invoices::Test::Response->parse(
        "HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\n\r\n<html></html>");
    ok(scalar $api->check(GET => "$I/in_x", $html), 'an HTML error page: fails');
    my $bad_code = Invoices::Test::Response->parse(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json; charset=utf-8\r\n"
        . "\r\n{\"error\":{\"type\":\"invalid_request_error\",\"code\":\"no_such_code\","
        . "\"message\":\"m\"}}");
    ok(scalar $api->check(GET => $I, $bad_code), 'an error code the contract does not list: fails');
    my $bad_cache = Invoices::Test::Response->parse(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\nX-Cache: WARM\r\n"
        . "\r\n{\"invoices\":[],\"count\":0,\"has_more\":false}");
    ok(scalar $api->check(GET => $I, $bad_cache), 'an X-Cache value not in its enum: fails');
}

done_testing();
