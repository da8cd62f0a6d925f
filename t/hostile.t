# Hostile requests, every endpoint: each one must get a 4xx JSON error
# (docs/openapi.yaml's shape, with the code and param where the contract fixes one)
# and change nothing.  A table of cases, then, after all of them:
#   - the database is byte for byte the same (pg_dump --data-only, and a
#     checksum of every table and sequence after each case),
#   - the nginx worker processes are the same ones (no worker died),
#   - Redis holds the same keys and the same cache generation,
#   - the fake Stripe was sent no request at all,
#   - the error log has no [alert], [crit] or [emerg] (done_testing).
#
# Every create case is a valid create with one thing wrong, against a
# linked customer with a payment method, so that a check that stopped
# working would create an invoice (a 201 and a new row), not pass quietly.
# In the same way, the signed webhook cases are valid events for a new
# invoice with one thing wrong.
#
# A case is { name, method, path, headers, body | raw, status, code,
# param, allow, head, outside, core_5xx, todo }.  "outside": nginx itself
# answers before any location is chosen (request line and header
# parsing), so the module cannot shape the body; only the status and
# "nothing changed" are checked.  "core_5xx": such an answer of nginx's
# that is a 5xx (501 for an unknown Transfer-Encoding, 505 for an unknown
# HTTP version).

use strict;
use warnings;
use Test::More;
use JSON::PP ();
use File::Temp ();
use Time::HiRes qw(time sleep);
use Invoices::Test;
use Invoices::Webhook;
use Invoices::Redis qw(start_redis rcmd cache_http_config cache_gen);

our $TODO;

my $whsec = new_whsec();
my $redis = start_redis();
start_server(stripe => 1, workers => 2,
             http_config => cache_http_config($redis->{port}),
             server_config => webhook_location(
                 secrets => ['file:' . secret_file($whsec)]));
default_secret($whsec);

my $J = JSON::PP->new->utf8->canonical;
my $L = '/admin/api/invoices';
my $W = '/stripe/webhook';
my $KEY = API_KEY;
my $LIMIT = 1024 * 1024;             # nginx's default client_max_body_size

#----------------------------------------------------------------------
# the state the hostile requests must leave alone

my $main = linked_customer(payment_method => 'pm_card_visa');
my $CUS = $main->{customer};

my $seed = api_request(POST => $L,
    ['Content-Type' => 'application/json', 'Idempotency-Key' => 'seed-1'],
    $J->encode({ items => [{ name => 'Seed', amount => 1200 }],
                 customer => $CUS }));
is($seed->status, 201, 'seed: an invoice created through the API')
    or diag $seed->describe;
my $SEED_IN = ($seed->json_or_undef // {})->{id} // 'in_none';

my $ev = deliver_event(invoice_event('customer.updated', { id => $CUS }));
is($ev->status, 200, 'seed: a webhook event recorded') or diag $ev->describe;

my $list = api_request(GET => "$L?limit=5");
is($list->status, 200, 'seed: the list answers (and is cached)');
my $ID = ((($list->json_or_undef // {})->{invoices} // [])->[0] // {})->{_id}
    // '000000000000000000000000';

fake_reset();

#----------------------------------------------------------------------
# how "nothing changed" is measured

# (invoices_leases is the background work's: its leases are renewed by the
# clock, whatever the requests do; pg_dump_data leaves it out too)
my @TABLES = map { $_->[0] } sql(
    "SELECT table_name FROM information_schema.tables "
  . "WHERE table_schema = 'public' AND table_type = 'BASE TABLE' "
  . "AND table_name <> 'invoices_leases' ORDER BY table_name");
my @SEQS = map { $_->[0] } sql(
    "SELECT sequence_name FROM information_schema.sequences "
  . "WHERE sequence_schema = 'public' ORDER BY sequence_name");
ok(scalar(grep { $_ eq 'invoices' } @TABLES)
   && scalar(grep { $_ eq 'webhook_events' } @TABLES)
   && scalar(grep { $_ eq 'idempotency_keys' } @TABLES),
   'the checksum covers invoices, webhook_events, idempotency_keys')
    or diag "@TABLES";

my $FP_SQL = 'SELECT concat_ws(\'|\', '
    . join(', ',
        (map { "(SELECT md5(coalesce(string_agg(x::text, ',' ORDER BY x::text), '')) FROM $_ x)" } @TABLES),
        (map { "(SELECT last_value || ':' || is_called FROM $_)" } @SEQS))
    . ')';

# One psql kept open for the checksum after every case (a new psql per
# case would make this file several times slower).
my ($PSQL_IN, $PSQL_OUT, $PSQL_PID);
sub fingerprint {
    if (!$PSQL_PID) {
        require IPC::Open2;
        $PSQL_PID = IPC::Open2::open2($PSQL_OUT, $PSQL_IN, 'psql', '-X', '-q',
            '-A', '-t', '-v', 'ON_ERROR_STOP=1',
            '-h', $ENV{INVOICES_TEST_PGHOST}, '-p', $ENV{INVOICES_TEST_PGPORT},
            '-U', $ENV{INVOICES_TEST_PGUSER}, '-d', db_name());
    }
    print $PSQL_IN "$FP_SQL;\n\\echo __end__\n";
    $PSQL_IN->flush;
    my $fp = '';
    while (defined(my $line = <$PSQL_OUT>)) {
        last if $line eq "__end__\n";
        $fp .= $line;
    }
    chomp $fp;
    die "psql: no checksum" unless length $fp;
    return $fp;
}
END {
    if ($PSQL_PID) {
        close $PSQL_IN;
        waitpid $PSQL_PID, 0;
    }
}

sub pg_dump_data {
    my ($st, $out, $err) = Invoices::Test::run_cmd(
        ['pg_dump', '--data-only', '--no-owner', '--no-privileges',
         '--exclude-table-data=invoices_leases',
         '-h', $ENV{INVOICES_TEST_PGHOST}, '-p', $ENV{INVOICES_TEST_PGPORT},
         '-U', $ENV{INVOICES_TEST_PGUSER}, '-d', db_name()]);
    die "pg_dump failed: $err" if $st;
    # pg_dump 15.14+ frames its output with a random \restrict token
    $out =~ s/^\\(?:un)?restrict .*\n//mg;
    return $out;
}

# the worker processes of this file's nginx (children of the master)
sub _diff {
    my ($a, $b) = @_;
    my $dir = File::Temp::tempdir('invoices-hostile-XXXXXX', TMPDIR => 1,
                                  CLEANUP => 1);
    for (['before', $a], ['after', $b]) {
        open my $fh, '>', "$dir/$_->[0]" or die "$dir: $!";
        print $fh $_->[1];
        close $fh;
    }
    my (undef, $out) = Invoices::Test::run_cmd(['diff', '-u', "$dir/before",
                                                "$dir/after"]);
    return $out;
}

# every key of the cache (list pages may expire meanwhile, so the keys
# after must be among those before; the generation: cache_gen)
sub redis_keys { return sort @{ rcmd($redis, 'KEYS', '*') // [] } }

#----------------------------------------------------------------------
# building blocks of the cases

my @CASES;
sub case { my ($name, %c) = @_; push @CASES, { name => $name, %c } }

my $ITEM = '[{"name":"Hostile","amount":100}]';

# cbody(key => raw JSON text, ...): a valid create body with fields
# replaced (undef: left out); "extra" is raw text appended inside.
sub cbody {
    my (%o) = @_;
    my %f = (items => $ITEM, customer => qq("$CUS"),
             paymentMethod => '"pm_card_visa"');
    my $extra = delete $o{extra};
    $f{$_} = $o{$_} for keys %o;
    my @parts = map { qq("$_":$f{$_}) }
                grep { defined $f{$_} }
                qw(items customer paymentMethod currency description);
    push @parts, $extra if defined $extra;
    return '{' . join(',', @parts) . '}';
}

# an items array of one item with raw name and amount
sub item {
    my (%o) = @_;
    my $name = exists $o{name} ? $o{name} : '"Hostile"';
    my $amount = exists $o{amount} ? $o{amount} : '100';
    my @p;
    push @p, qq("name":$name) if defined $name;
    push @p, qq("amount":$amount) if defined $amount;
    push @p, $o{extra} if defined $o{extra};
    return '[{' . join(',', @p) . '}]';
}

# a create request: POST with the key and JSON content type unless told
sub create_case {
    my ($name, $body, %c) = @_;
    my @h = (['Content-Type', 'application/json']);
    @h = () if $c{no_ct};
    push @h, @{ delete $c{headers} || [] };
    case("create: $name", method => 'POST', path => $L, headers => \@h,
         body => $body, %c);
}

# a webhook event for a new invoice that, were it accepted, would insert
# a row; $mod changes it (a hashref) before it is encoded.
sub event {
    my ($mod) = @_;
    my $inv = stripe_invoice(status => 'open', customer => $CUS);
    my $e = invoice_event('invoice.finalized', $inv);
    $mod->($e) if $mod;
    return $e;
}

sub signed_case {
    my ($name, $body, %c) = @_;
    my @h = (['Content-Type', 'application/json'],
             ['Stripe-Signature', signature_header($body)]);
    case("webhook signed: $name", method => 'POST', path => $W,
         headers => \@h, body => $body, auth => 0, status => 400, %c);
}

sub unsigned_case {
    my ($name, $sig, %c) = @_;
    my $body = delete $c{body} // event_body(event());
    my @h = (['Content-Type', 'application/json']);
    push @h, map { ['Stripe-Signature', $_] } @$sig;
    case("webhook unsigned: $name", method => 'POST', path => $W,
         headers => \@h, body => $body, auth => 0, status => 400,
         code => 'signature_invalid', %c);
}

#----------------------------------------------------------------------
# GET /admin/api/invoices?page&limit

for my $p (qw(limit page)) {
    for my $v ('1e400', '99999999999999999999999', '-0', '1.5', '1e2',
               '1%3BDROP%20TABLE%20invoices', "1'%20OR%20'1'%3D'1",
               "1%27%20OR%201%3D1--", '%7B%22a%22%3A1%7D', '%5B1%5D',
               '%00', '5%00', '%C0%AF', '%ED%A0%80', '%FF', '9' x 3000,
               '%22%2C%22count%22%3A0')
    {
        my $other = $p eq 'page' ? 'limit=5' : 'page=1';
        case("list: $p=" . (length $v > 40 ? substr($v, 0, 20) . '...' : $v),
             method => 'GET', path => "$L?$other&$p=$v",
             status => 400, code => 'parameter_invalid', param => $p);
    }
}

#----------------------------------------------------------------------
# the filters, on the list, the summary and the export

for my $route ('', '/summary', '/export') {
    for my $pv (['status', "paid'%20OR%20'1'%3D'1"], ['status', 'paid%00'],
                ['team', "$ID'--"], ['customer', 'cus_x%3BDROP%20TABLE%20invoices'],
                ['currency', '%C0%AF%C0%AF%C0%AF'], ['q', '%00'], ['q', 'x' x 101],
                ['q', '%ED%A0%80'], ['q', '%FF%FE'], ['q', 'a%0D%0Ab'],
                ['created[gte]', "2026-01-01T00:00:00Z'%3B--"], ['amount[lt]', '1e400'],
                ['dueDate[gt]', '9' x 20], ['created%5Blte%5D', '%7B%7D'])
    {
        my ($p, $v) = @$pv;
        (my $param = $p) =~ s/%5B/[/;
        $param =~ s/%5D/]/;
        case("filters$route: $p=" . (length $v > 40 ? substr($v, 0, 20) . '...' : $v),
             method => 'GET', path => "$L$route?$p=$v",
             status => 400, code => 'parameter_invalid', param => $param);
    }
    case("filters$route: a misspelt name", method => 'GET', path => "$L$route?stauts=paid",
         status => 400, code => 'parameter_unknown', param => 'stauts');
    case("filters$route: status twice", method => 'GET',
         path => "$L$route?status=paid&status=open",
         status => 400, code => 'parameter_invalid', param => 'status');
}
case('list: a cursor that does not exist', method => 'GET',
     path => "$L?starting_after=000000000000000000000000",
     status => 400, code => 'resource_missing', param => 'starting_after');
case('list: both cursors', method => 'GET',
     path => "$L?starting_after=$ID&ending_before=$ID",
     status => 400, code => 'parameter_invalid', param => 'ending_before');

#----------------------------------------------------------------------
# GET /admin/api/invoices/{id}

for my $id ("in_x'%20OR%20'1'%3D'1", '1%20OR%201%3D1', "$ID'--",
            "in_x%3BDROP%20TABLE%20invoices", '%7B%22_id%22%3A1%7D',
            'in_' . ('A' x 5000), 'a' x 3000, 'in_abc.json', "$ID.json",
            "$ID%20", "%20$ID", 'in_%C3%A9', 'in_%ED%A0%80', 'in_%FF',
            'in_', '..in_x', 'in_x%09', uc $ID, 'SYNC',
            'in_x%22%7D', 'in_x%5C')
{
    case('get: id ' . (length $id > 40 ? substr($id, 0, 20) . '...' : $id),
         method => 'GET', path => "$L/$id",
         status => 400, code => 'parameter_invalid', param => 'id');
}

# path tricks: what nginx leaves of the path after decoding and
# normalising is still checked by the router
for my $p ("$L/$ID/", "$L/$ID%2F", "$L/in_x%2Fy", "$L/$ID//x", "$L/a/b",
           "$L/$ID/x/", "${L}X", "$L.json", "$L/sync/", "$L/sync%2F",
           "$L/in_x/../in_y/z", "$L%2F$ID%2Fx")
{
    case("route: $p", method => 'GET', path => $p,
         status => 404, code => 'route_missing');
}
case('route: /./ and /../ are normalised into a bad id',
     method => 'GET', path => "$L/./in_x/../zz.z",
     status => 400, code => 'parameter_invalid', param => 'id');
case('route: %2e%2e is normalised into a bad id',
     method => 'GET', path => "$L/in_x/%2e%2e/zz.z",
     status => 400, code => 'parameter_invalid', param => 'id');
case('route: NUL byte encoded in the path (%00)',
     method => 'GET', path => "$L/in_x%00",
     status => 400, outside => 'nginx refuses %00 in the path');

#----------------------------------------------------------------------
# methods

for my $m (qw(PUT DELETE PATCH OPTIONS PROPFIND FOO BREW)) {
    my @b = $m =~ /^(PUT|PATCH)$/
        ? (headers => [['Content-Type', 'application/json']], body => cbody())
        : ();
    case("method: $m collection", method => $m, path => $L, @b,
         status => 405, code => 'method_not_allowed',
         allow => 'GET, HEAD, POST');
    # DELETE is an action (t/actions.t): an open invoice is no draft, so
    # it is refused before Stripe, changing nothing
    case("method: $m one invoice", method => $m, path => "$L/$ID", @b,
         $m eq 'DELETE'
         ? (status => 409, code => 'invoice_status_conflict')
         : (status => 405, code => 'method_not_allowed',
            allow => 'GET, HEAD, DELETE'));
    case("method: $m sync", method => $m, path => "$L/sync",
         status => 405, code => 'method_not_allowed', allow => 'POST');
    case("method: $m webhook", method => $m, path => $W, auth => 0,
         status => 405, code => 'method_not_allowed', allow => 'POST');
}
case('method: POST one invoice', method => 'POST', path => "$L/$ID",
     headers => [['Content-Type', 'application/json']], body => cbody(),
     status => 405, code => 'method_not_allowed', allow => 'GET, HEAD, DELETE');
case('method: GET sync', method => 'GET', path => "$L/sync",
     status => 405, code => 'method_not_allowed', allow => 'POST');
case('method: GET webhook', method => 'GET', path => $W, auth => 0,
     status => 405, code => 'method_not_allowed', allow => 'POST');
case('method: HEAD sync', method => 'HEAD', path => "$L/sync",
     status => 405, allow => 'POST', head => 1);
case('method: HEAD webhook', method => 'HEAD', path => $W, auth => 0,
     status => 405, allow => 'POST', head => 1);
case('method: HEAD list with limit=abc', method => 'HEAD',
     path => "$L?limit=abc", status => 400, head => 1);
case('method: HEAD one invoice with a bad id', method => 'HEAD',
     path => "$L/in_x'", status => 400, head => 1);
case('method: TRACE collection', method => 'TRACE', path => $L,
     status => 405, outside => 'nginx refuses TRACE before the location');
case('method: lowercase get', method => 'get', path => $L,
     status => 400, outside => 'nginx refuses the request line');
case('method: lowercase post on the webhook', method => 'post', path => $W,
     auth => 0, status => 400, outside => 'nginx refuses the request line');

#----------------------------------------------------------------------
# Api-Key, on every admin endpoint

my %admin = (
    list   => [GET  => "$L?limit=5"],
    get    => [GET  => "$L/$ID"],
    create => [POST => $L, [['Content-Type', 'application/json']], cbody()],
    sync   => [POST => "$L/sync"],
);
for my $ep (sort keys %admin) {
    my ($m, $path, $h, $body) = @{ $admin{$ep} };
    my @keys = (
        ['missing',               [],                              'api_key_missing'],
        ['empty',                 [['Api-Key', '']],               'api_key_missing'],
        ['wrong',                 [['Api-Key', 'nope']],           'api_key_invalid'],
        ['SQL injection',         [['Api-Key', "' OR '1'='1"]],    'api_key_invalid'],
        ['JSON injection',        [['Api-Key', '","admin":true}']], 'api_key_invalid'],
        ['a prefix of the key',   [['Api-Key', substr($KEY, 0, -1)]], 'api_key_invalid'],
        ['the key and more',      [['Api-Key', "${KEY}x"]],        'api_key_invalid'],
        ['the key twice',         [['Api-Key', $KEY], ['Api-Key', $KEY]], 'api_key_invalid'],
        ['good then bad',         [['Api-Key', $KEY], ['Api-Key', 'nope']], 'api_key_invalid'],
        ['bad then good',         [['Api-Key', 'nope'], ['API-KEY', $KEY]], 'api_key_invalid'],
        ['both keys at once',     [['Api-Key', "$KEY, " . API_KEY_2]], 'api_key_invalid'],
        ['6000 bytes',            [['Api-Key', 'k' x 6000]],       'api_key_invalid'],
        ['control bytes',         [['Api-Key', "\x01\x02$KEY"]],   'api_key_invalid'],
        ['high bytes',            [['Api-Key', "$KEY\xff\xfe"]],   'api_key_invalid'],
        ['in the query string',   [],                              'api_key_missing',
                                  ($path =~ /\?/ ? '&' : '?') . "api_key=$KEY&Api-Key=$KEY"],
        ['as Authorization',      [['Authorization', "Bearer $KEY"]], 'api_key_missing'],
    );
    for my $k (@keys) {
        my ($what, $kh, $code, $q) = @$k;
        case("auth: $ep, Api-Key $what", method => $m,
             path => $path . ($q // ''), auth => 0,
             headers => [@{ $h || [] }, @$kh], body => $body,
             status => 401, type => 'authentication_error', code => $code);
    }
}
case('auth: NUL byte in the Api-Key', method => 'GET', path => "$L?limit=5",
     auth => 0, headers => [['Api-Key', "$KEY\0"]],
     status => 400, outside => 'nginx refuses the header line');

#----------------------------------------------------------------------
# POST /admin/api/invoices: the body

my $INJ_SQL = q{x'); DROP TABLE invoices; --};
my $INJ_JSON = q{x\",\"status\":\"paid};

# not JSON, or not an object
for my $b ('', ' ', '{', '}', '{"items":', 'null', 'true', '1', '"x"', '[]',
           "[" . cbody() . "]", cbody() . ' x', cbody() . cbody(),
           "{'items':1}", '{items:1}', '/*x*/' . cbody(),
           cbody(items => item(amount => 'NaN')),
           cbody(items => item(amount => 'Infinity')),
           cbody(items => item(amount => '0x10')),
           cbody(items => item(amount => '+1')),
           cbody(items => item(amount => '01')),
           cbody(items => item(name => "'single'")),
           cbody(items => item(name => qq("tab\tinside"))),
           cbody(items => item(name => qq("line\nbreak"))),
           cbody(items => item(name => '"bad \x escape"')),
           cbody(items => item(name => '"\u12"')),
           substr(cbody(), 0, -1))
{
    my $n = length $b > 40 ? substr($b, 0, 37) . '...' : $b;
    $n =~ s/([^\x20-\x7e])/sprintf '\\x%02x', ord $1/ge;
    create_case("not a JSON object: '$n'", $b,
                status => 400, code => 'body_invalid');
}

# deep nesting, 10,000 levels
my $deep_a = '[' x 10000 . ']' x 10000;
my $deep_o = '{"a":' x 10000 . '1' . '}' x 10000;
create_case('10,000 levels of [', $deep_a, status => 400, code => 'body_invalid');
create_case('10,000 levels of {', $deep_o, status => 400,
            code => qr/^(?:body_invalid|parameter_unknown)$/);
create_case('10,000 levels of [ unclosed', '[' x 10000,
            status => 400, code => 'body_invalid');
create_case('10,000 levels of { unclosed', '{"a":' x 10000,
            status => 400, code => 'body_invalid');
create_case('10,000 levels of [ in items', cbody(items => $deep_a),
            status => 400, code => qr/^(?:body_invalid|parameter_invalid)$/);
create_case('10,000 levels of { in customer', cbody(customer => $deep_o),
            status => 400, code => qr/^(?:body_invalid|parameter_invalid)$/);
create_case('10,000 levels of [ in an amount',
            cbody(items => item(amount => $deep_a)),
            status => 400, code => qr/^(?:body_invalid|parameter_invalid)$/);

# numbers
for my $a ('1e400', '-1e400', '99999999999999999999999',
           '18446744073709551616', '-99999999999999999999999') {
    create_case("amount $a", cbody(items => item(amount => $a)),
                status => 400, code => 'body_invalid');
}
for my $a ('-0', '0', '-1', '1.5', '1.0', '1e2', '0.0000001', '100000000',
           '9223372036854775807', '-9223372036854775808', '"100"', 'true',
           'false', 'null', '[]', '{}', '[100]', '{"amount":100}', '""') {
    create_case("amount $a", cbody(items => item(amount => $a)),
                status => 400, code => 'parameter_invalid',
                param => 'items[0][amount]');
}
create_case('amount missing', cbody(items => item(amount => undef)),
            status => 400, code => 'parameter_missing',
            param => 'items[0][amount]');

# wrong types and values, every field
for my $v ('"x"', '1', '1.5', '{}', 'null', 'true', '[]', '[1]', '["x"]',
           '[null]', '[[]]', '[true]', '"[]"',
           '[' . join(',', ('{"name":"x","amount":1}') x 251) . ']') {
    my $first_bad = $v =~ /^\[(?:1|"x"|null|\[\]|true)\]$/;
    create_case('items ' . (length $v > 30 ? '251 items' : $v),
                cbody(items => $v), status => 400, code => 'parameter_invalid',
                param => $first_bad ? 'items[0]' : 'items');
}
create_case('items missing', cbody(items => undef),
            status => 400, code => 'parameter_missing', param => 'items');
create_case('second item bad', cbody(items =>
                '[{"name":"ok","amount":1},{"name":"bad","amount":-5}]'),
            status => 400, code => 'parameter_invalid',
            param => 'items[1][amount]');
for my $v ('1', 'null', 'true', '[]', '{}', '""', qq("  \\t\\n\\r "),
           '["x"]', '"' . ('n' x 501) . '"') {
    create_case('name ' . (length $v > 30 ? '501 bytes' : $v),
                cbody(items => item(name => $v)),
                status => 400, code => 'parameter_invalid',
                param => 'items[0][name]');
}
create_case('name missing', cbody(items => item(name => undef)),
            status => 400, code => 'parameter_missing',
            param => 'items[0][name]');
create_case('unknown item key', cbody(items => item(extra => '"price":1')),
            status => 400, code => 'parameter_unknown',
            param => 'items[0][price]');
create_case('unknown item key, SQL injection',
            cbody(items => item(extra => qq("$INJ_SQL":1))),
            status => 400, code => 'parameter_unknown',
            param => "items[0][$INJ_SQL]");

for my $v ('1', 'null', 'true', '[]', '{}', '""', '"cus_"', '"CUS_abc"',
           '"cus abc"', '"cus_abc def"', '"cus_a-b"', '"cus_a.b"',
           qq("cus_x' OR '1'='1"), qq("cus_x;DROP TABLE invoices;--"),
           qq("$INJ_JSON"), '"cus_x\\"}"', '"cus_' . ('a' x 252) . '"',
           qq("cus_\xc3\xa9"), '"cus_x\\n"', '["cus_x"]', qq("$CUS ")) {
    my $n = length $v > 40 ? 'cus_ + 252 bytes' : $v;
    create_case("customer $n", cbody(customer => $v),
                status => 400, code => 'parameter_invalid', param => 'customer');
}
create_case('customer missing', cbody(customer => undef),
            status => 400, code => 'parameter_missing', param => 'customer');
create_case('customer unknown, SQL injection in the name',
            cbody(customer => '"cus_NoSuchTeam0001"',
                  items => item(name => qq("$INJ_SQL"))),
            status => 404, param => 'customer');
create_case('customer unknown, JSON injection in the description',
            cbody(customer => '"cus_NoSuchTeam0002"',
                  description => qq("$INJ_JSON")),
            status => 404, param => 'customer');

for my $v ('1', 'true', '[]', '{}', '""', '"pm_"', '"tok_visa"', '"pm card"',
           qq("pm_x' OR 1=1--"), qq("$INJ_JSON"), '"pm_' . ('a' x 253) . '"',
           qq("pm_\xc3\xa9"), '["pm_card_visa"]') {
    my $n = length $v > 40 ? 'pm_ + 253 bytes' : $v;
    create_case("paymentMethod $n", cbody(paymentMethod => $v),
                status => 400, code => 'parameter_invalid',
                param => 'paymentMethod');
}
for my $v ('1', 'true', '[]', '{}', '""', '"eu"', '"euro"', '"e1r"',
           qq("\xe2\x82\xac"), qq("e'r"), '"eu "', '["eur"]') {
    create_case("currency $v", cbody(currency => $v),
                status => 400, code => 'parameter_invalid', param => 'currency');
}
for my $v ('1', 'true', '[]', '{}', '"' . ('d' x 501) . '"') {
    create_case('description ' . (length $v > 30 ? '501 bytes' : $v),
                cbody(description => $v),
                status => 400, code => 'parameter_invalid',
                param => 'description');
}
for my $k ('status', 'amount', '__proto__', 'items ', 'Items', '',
           $INJ_SQL, 'customer\u0041') {
    (my $param = $k) =~ s/\\u0041/A/;
    create_case("unknown key '$k'", cbody(extra => qq("$k":1)),
                status => 400, code => 'parameter_unknown', param => $param);
}
# an unknown key names itself in param, cut at a character boundary
create_case('unknown key of 62 bytes + a 2-byte character',
            cbody(extra => '"' . ('a' x 62) . qq(\xc3\xa9":1)),
            status => 400, code => 'parameter_unknown',
            param => qr/^a{62}(?:\x{e9})?$/);
create_case('unknown item key of 53 bytes + a 2-byte character',
            cbody(items => item(extra => '"' . ('b' x 53) . qq(\xc3\xa9":1))),
            status => 400, code => 'parameter_unknown',
            param => qr/^items\[0\]\[b{53}/);

# duplicate keys
for my $d (['items', cbody(extra => qq("items":$ITEM))],
           ['customer', cbody(extra => qq("customer":"$CUS"))],
           ['customer, escaped', cbody(extra => qq("cust\\u006fmer":"$CUS"))],
           ['paymentMethod', cbody(extra => '"paymentMethod":"pm_card_visa"')],
           ['item name', cbody(items => item(extra => '"name":"Other"'))],
           ['item amount', cbody(items => item(extra => '"amount":100'))]) {
    create_case("duplicate key: $d->[0]", $d->[1],
                status => 400, code => 'body_invalid');
}

# NUL bytes and invalid UTF-8
for my $s (["raw NUL in the name", qq("Hos\0tile")],
           ["\\u0000 in the name", '"Hos\u0000tile"'],
           ["raw \\xff", qq("Hos\xfftile")],
           ["overlong \\xc0\\xaf", qq("Hos\xc0\xaftile")],
           ["UTF-8 encoded surrogate", qq("Hos\xed\xa0\x80tile")],
           ["beyond U+10FFFF", qq("Hos\xf4\x90\x80\x80tile")],
           ["truncated sequence", qq("Hos\xe2\x82")],
           ["lone \\ud800", '"Hos\ud800tile"'],
           ["lone \\udc00", '"Hos\udc00tile"'],
           ["\\ud800 then \\u0041", '"Hos\ud800\u0041"'],
           ["\\ud800 at the end", '"Hostile\ud800"']) {
    create_case("name: $s->[0]", cbody(items => item(name => $s->[1])),
                status => 400, code => 'body_invalid');
}
create_case('customer: \\u0000', cbody(customer => qq("$CUS\\u0000")),
            status => 400, code => 'body_invalid');
create_case('description: raw NUL', cbody(description => qq("a\0b")),
            status => 400, code => 'body_invalid');
create_case('key: \\u0000', cbody(extra => '"a\u0000b":1'),
            status => 400, code => 'body_invalid');
create_case('key: lone \\ud800', cbody(extra => '"\ud800":1'),
            status => 400, code => 'body_invalid');
create_case('raw NUL between tokens', cbody() =~ s/,/,\0/r,
            status => 400, code => 'body_invalid');
create_case('UTF-16 body', join('', map { "$_\0" } split //, cbody()),
            status => 400, code => 'body_invalid');

# huge strings, within and beyond the body limit
my $big = 900_000;
create_case('name of 900 kB', cbody(items => item(name => '"' . ('n' x $big) . '"')),
            status => 400, code => 'parameter_invalid', param => 'items[0][name]');
create_case('customer of 900 kB', cbody(customer => '"cus_' . ('c' x $big) . '"'),
            status => 400, code => 'parameter_invalid', param => 'customer');
create_case('description of 900 kB', cbody(description => '"' . ('d' x $big) . '"'),
            status => 400, code => 'parameter_invalid', param => 'description');
create_case('a key of 900 kB', cbody(extra => '"' . ('k' x $big) . '":1'),
            status => 400, code => 'parameter_unknown', param => qr/^k+$/);
create_case('100,000 items', cbody(items => '[' . join(',', ('{"name":"x","amount":1}') x 40_000) . ']'),
            status => 400, code => 'parameter_invalid', param => 'items');
create_case('body over the limit (Content-Length)',
            cbody(description => '"' . ('d' x ($LIMIT + 10)) . '"'),
            status => 413, code => 'body_too_large');

# Content-Type
for my $ct ([], ['text/plain'], ['application/x-www-form-urlencoded'],
            ['multipart/form-data; boundary=x'], ['application/json; charset=latin1'],
            ['application/json; charset=utf-16'], ['application/jsonx'],
            ['application/json-patch+json'], ['text/json'], ['json'],
            ['application/json; boundary=x'], ['application/json, text/plain'],
            ['application/json', 'text/plain'],
            ['application/json', 'application/json']) {
    create_case('Content-Type ' . (@$ct ? join(' + ', @$ct) : 'missing'),
                cbody(), no_ct => 1,
                headers => [map { ['Content-Type', $_] } @$ct],
                status => 415, code => 'content_type_unsupported');
}

# Idempotency-Key
for my $k (['256 characters', ['k' x 256]], ['8,000 characters', ['k' x 8000]],
           ['empty', ['']], ['a control byte', ["a\x01b"]], ['DEL', ["a\x7f"]],
           ['a tab inside', ["a\tb"]], ['UTF-8', ["cl\xc3\xa9"]],
           ['high bytes', ["\xff\xfe"]], ['twice, same value', ['dup-1', 'dup-1']],
           ['twice, different', ['dup-2', 'dup-3']]) {
    create_case("Idempotency-Key $k->[0]", cbody(),
                headers => [map { ['Idempotency-Key', $_] } @{ $k->[1] }],
                status => 400, code => 'parameter_invalid',
                param => 'Idempotency-Key');
}
create_case('Idempotency-Key of 10,000 characters', cbody(),
            headers => [['Idempotency-Key', 'k' x 10000]], status => 400,
            outside => 'nginx refuses a header over its buffers');
create_case('Idempotency-Key of the seed with another body', cbody(),
            headers => [['Idempotency-Key', 'seed-1']],
            status => 409, code => 'idempotency_key_reused');

#----------------------------------------------------------------------
# POST /admin/api/invoices/sync

for my $q ('since=abc', 'since=-1', 'since=1.5', 'since=1e3', 'since=',
           'since=9999999999999', 'since=%00', 'since=1%00', "since=1'",
           'since=1%27%20OR%201%3D1', 'since=1;DROP', 'since=%31',
           'since=1&since=abc', 'since=' . ('9' x 3000)) {
    case("sync: $q" =~ s/9{20,}/9.../r, method => 'POST', path => "$L/sync?$q",
         status => 400, code => 'parameter_invalid', param => 'since');
}
for my $q ('starting_after=', 'starting_after=cus_x', 'starting_after=in_',
           'starting_after=in_x%27%20OR%201%3D1', "starting_after=in_x'",
           'starting_after=in_' . ('a' x 300), 'starting_after=in_x%00',
           'starting_after=in_a.b', 'starting_after=in_%C3%A9',
           'starting_after=%7B%7D', 'starting_after=in_a&starting_after=x') {
    case("sync: $q" =~ s/a{20,}/a.../r, method => 'POST', path => "$L/sync?$q",
         status => 400, code => 'parameter_invalid', param => 'starting_after');
}
case('sync: body over the limit', method => 'POST', path => "$L/sync",
     headers => [['Content-Type', 'application/json']],
     body => 'x' x ($LIMIT + 10), status => 413, code => 'body_too_large');

#----------------------------------------------------------------------
# POST /stripe/webhook, unsigned or wrongly signed

my $good = event_body(event());
my $t = time;
my $right = sign($whsec, int $t, $good);
unsigned_case('no Stripe-Signature', [], body => $good);
unsigned_case('empty Stripe-Signature', [''], body => $good);
unsigned_case('t only', ['t=' . int $t], body => $good);
unsigned_case('v1 only', ["v1=$right"], body => $good);
unsigned_case('t not a number', ["t=abc,v1=$right"], body => $good);
unsigned_case('t=1e3', ["t=1e3,v1=$right"], body => $good);
unsigned_case('t negative', ["t=-1,v1=$right"], body => $good);
unsigned_case('t huge', ["t=99999999999999999999999,v1=$right"], body => $good);
unsigned_case('t an hour old', [signature_header($good, t => $t - 3600)], body => $good);
unsigned_case('t an hour ahead', [signature_header($good, t => $t + 3600)], body => $good);
unsigned_case('v1 of another t', ['t=' . (int($t) - 1) . ",v1=$right"], body => $good);
unsigned_case('v1 in uppercase', ['t=' . int($t) . ',v1=' . uc $right], body => $good);
unsigned_case('v1 cut short', ['t=' . int($t) . ',v1=' . substr($right, 0, 63)], body => $good);
unsigned_case('v1 and more', ['t=' . int($t) . ",v1=${right}00"], body => $good);
unsigned_case('only a v0', ['t=' . int($t) . ",v0=$right"], body => $good);
unsigned_case('another secret', [signature_header($good, secret => new_whsec())], body => $good);
unsigned_case('the secret without whsec_', [signature_header($good, secret => substr($whsec, 6))], body => $good);
unsigned_case('two headers, good then bad', [signature_header($good), 't=1,v1=00'], body => $good);
unsigned_case('two headers, bad then good', ['t=1,v1=00', signature_header($good)], body => $good);
unsigned_case('signed, then the body changed',
              [signature_header($good)], body => "$good ");
unsigned_case('6 kB of v1', ['t=' . int($t) . (',v1=' . ('0' x 64)) x 90], body => $good);
unsigned_case('SQL injection in the header', ["t=1' OR '1'='1,v1=x"], body => $good);
unsigned_case('SQL injection body', [signature_header($good)],
              body => q[{"id":"evt_x'); DROP TABLE invoices; --"}]);
unsigned_case('deep nesting', [], body => $deep_a);
unsigned_case('invalid UTF-8 body', [], body => "{\"id\":\"\xff\"}");
unsigned_case('900 kB body', [], body => '{"x":"' . ('x' x $big) . '"}');
unsigned_case('empty body', [], body => '');
case('webhook: body over the limit', method => 'POST', path => $W, auth => 0,
     headers => [['Content-Type', 'application/json'],
                 ['Stripe-Signature', 't=1,v1=00']],
     body => 'x' x ($LIMIT + 10), status => 413, code => 'body_too_large');

#----------------------------------------------------------------------
# POST /stripe/webhook, signed with our secret, but not a Stripe event

my $EV = qr/^event_invalid$/;
signed_case('empty body', '', code => $EV);
signed_case('not JSON', '{"id":', code => $EV);
signed_case('a JSON array', '[' . event_body(event()) . ']', code => $EV);
signed_case('a JSON string', '"evt_x"', code => $EV);
signed_case('10,000 levels of [', $deep_a, code => $EV);
signed_case('10,000 levels of {', $deep_o, code => $EV);
signed_case('10,000 levels of { in data.object',
            event_body(event()) =~ s/"data" : \{/"data" : {"deep":$deep_o,/r,
            code => $EV);
signed_case('id missing', event_body(event(sub { delete $_[0]{id} })), code => $EV);
signed_case('id a number', event_body(event(sub { $_[0]{id} = 1 })), code => $EV);
signed_case('id not evt_', event_body(event(sub { $_[0]{id} = "x' OR '1'='1" })), code => $EV);
signed_case('id of 300 bytes', event_body(event(sub { $_[0]{id} = 'evt_' . 'a' x 300 })), code => $EV);
signed_case('type missing', event_body(event(sub { delete $_[0]{type} })), code => $EV);
signed_case('type an object', event_body(event(sub { $_[0]{type} = {} })), code => $EV);
signed_case('type of 300 bytes', event_body(event(sub { $_[0]{type} = 'invoice.' . 'x' x 300 })), code => $EV);
signed_case('created a string', event_body(event(sub { $_[0]{created} = "$t" })), code => $EV);
signed_case('created 1.5', event_body(event()) =~ s/"created" : (\d+),\n   "data"/"created" : 1.5,\n   "data"/r, code => $EV);
signed_case('created 1e400', event_body(event()) =~ s/"created" : (\d+),\n   "data"/"created" : 1e400,\n   "data"/r, code => $EV);
signed_case('created 99999999999999999999999', event_body(event()) =~ s/"created" : (\d+),\n   "data"/"created" : 99999999999999999999999,\n   "data"/r, code => $EV);
for my $c ('9223372036854775807', '-9223372036854775808', '-1',
           '253402300800') {
    signed_case("created $c", event_body(event()) =~ s/"created" : (\d+),\n   "data"/"created" : $c,\n   "data"/r, code => $EV);
}
signed_case('invoice created 9223372036854775807',
            event_body(event(sub { $_[0]{data}{object}{created} = 7 })) =~ s/"created" : 7\b/"created" : 9223372036854775807/r,
            code => $EV);
for my $c (['invoice id "in_" alone', sub { $_[0]{data}{object}{id} = 'in_' }],
           ['invoice id of 5000 bytes', sub { $_[0]{data}{object}{id} = 'in_' . 'a' x 5000 }],
           ['invoice id with a dot', sub { $_[0]{data}{object}{id} = 'in_a.b' }],
           ['invoice currency empty', sub { $_[0]{data}{object}{currency} = '' }],
           ['invoice currency of 10 letters', sub { $_[0]{data}{object}{currency} = 'eurxxxxxxx' }],
           ['invoice currency in capitals', sub { $_[0]{data}{object}{currency} = 'EUR' }],
           ['invoice customer empty', sub { $_[0]{data}{object}{customer} = '' }],
           ['invoice customer of 5000 bytes', sub { $_[0]{data}{object}{customer} = 'cus_' . 'a' x 5000 }],
           ['invoice customer not cus_', sub { $_[0]{data}{object}{customer} = 'acct_1' }],
           ['invoice invoice_pdf javascript:', sub { $_[0]{data}{object}{invoice_pdf} = 'javascript:alert(1)' }],
           ['invoice invoice_pdf http:', sub { $_[0]{data}{object}{invoice_pdf} = 'http://pay.stripe.com/x' }],
           ['invoice invoice_pdf of 5000 bytes', sub { $_[0]{data}{object}{invoice_pdf} = 'https://x/' . 'a' x 5000 }],
           ['invoice created -1', sub { $_[0]{data}{object}{created} = -1 }],
           ['invoice paid_at past year 9999', sub { $_[0]{data}{object}{status_transitions}{paid_at} = 253402300800 }]) {
    signed_case($c->[0], event_body(event($c->[1])), code => $EV);
}
signed_case('data.object missing', event_body(event(sub { delete $_[0]{data}{object} })), code => $EV);
signed_case('data.object an array', event_body(event(sub { $_[0]{data}{object} = [] })), code => $EV);
signed_case('data a string', event_body(event(sub { $_[0]{data} = 'x' })), code => $EV);
signed_case('invoice without id', event_body(event(sub { delete $_[0]{data}{object}{id} })), code => $EV);
signed_case('invoice id not in_', event_body(event(sub { $_[0]{data}{object}{id} = "in'); DROP TABLE invoices; --" })), code => $EV);
signed_case('invoice status made up', event_body(event(sub { $_[0]{data}{object}{status} = 'hacked' })), code => $EV);
signed_case('invoice status a number', event_body(event(sub { $_[0]{data}{object}{status} = 1 })), code => $EV);
signed_case('invoice total a string', event_body(event(sub { $_[0]{data}{object}{total} = '3300' })), code => $EV);
signed_case('invoice total 1.5', event_body(event(sub { $_[0]{data}{object}{total} = 1.5 })), code => $EV);
signed_case('invoice total 1e400', event_body(event(sub { $_[0]{data}{object}{total} = 1 })) =~ s/"total" : 1\b/"total" : 1e400/r, code => $EV);
signed_case('invoice customer missing', event_body(event(sub { delete $_[0]{data}{object}{customer} })), code => $EV);
signed_case('invoice currency a number', event_body(event(sub { $_[0]{data}{object}{currency} = 978 })), code => $EV);
signed_case('invoice invoice_pdf a number', event_body(event(sub { $_[0]{data}{object}{invoice_pdf} = 1 })), code => $EV);
signed_case('invoice status_transitions a string', event_body(event(sub { $_[0]{data}{object}{status_transitions} = 'x' })), code => $EV);
signed_case('invoice status_transitions with a string', event_body(event(sub { $_[0]{data}{object}{status_transitions}{paid_at} = 'now' })), code => $EV);
signed_case('\\u0000 in the id', event_body(event(sub { $_[0]{id} = "evt_a\0b" })), code => $EV);
signed_case('raw NUL in the id', event_body(event(sub { $_[0]{id} = 'evt_aNULb' })) =~ s/NUL/\0/r, code => $EV);
signed_case('lone \\ud800 in the type', event_body(event(sub { $_[0]{type} = 'invoice.paidSURR' })) =~ s/SURR/\\ud800/r, code => $EV);
signed_case('raw \\xff in the id', event_body(event(sub { $_[0]{id} = 'evt_aFFb' })) =~ s/FF/\xff/r, code => $EV);
signed_case('duplicate key: type', event_body(event()) =~ s/\{/{"type":"invoice.voided",/r, code => $EV);
signed_case('duplicate key: id', event_body(event()) =~ s/\{/{"id":"evt_1Duplicate",/r, code => $EV);
signed_case('duplicate key: data.object.status',
            event_body(event()) =~ s/"object" : \{/"object" : {"status":"paid",/r, code => $EV);

#----------------------------------------------------------------------
# raw requests: broken chunked bodies, framing

sub raw_case {
    my ($name, $bytes, %c) = @_;
    case("raw: $name", raw => $bytes, %c);
}
my $H = "Host: 127.0.0.1\r\nConnection: close\r\n";
my $AK = "Api-Key: $KEY\r\nContent-Type: application/json\r\n";
raw_case('create, bad chunk size',
         "POST $L HTTP/1.1\r\n$H$AK" . "Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
         status => 400, code => 'request_malformed');
raw_case('webhook, bad chunk size',
         "POST $W HTTP/1.1\r\n$H" . "Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
         status => 400, code => 'request_malformed');
raw_case('create, chunked over the limit',
         "POST $L HTTP/1.1\r\n$H$AK" . "Transfer-Encoding: chunked\r\n\r\n"
         . join('', map { sprintf("%x\r\n%s\r\n", 65536, 'x' x 65536) } 1 .. 17)
         . "0\r\n\r\n",
         status => 413, code => 'body_too_large');
raw_case('webhook, chunked over the limit',
         "POST $W HTTP/1.1\r\n$H" . "Transfer-Encoding: chunked\r\n\r\n"
         . join('', map { sprintf("%x\r\n%s\r\n", 65536, 'x' x 65536) } 1 .. 17)
         . "0\r\n\r\n",
         status => 413, code => 'body_too_large');
raw_case('create, chunk size overflows',
         "POST $L HTTP/1.1\r\n$H$AK" . "Transfer-Encoding: chunked\r\n\r\n"
         . "ffffffffffffffffffff\r\nx\r\n0\r\n\r\n",
         status => qr/^(?:400|413)$/);
raw_case('create, over the limit, Expect: 100-continue',
         "POST $L HTTP/1.1\r\n$H$AK" . "Expect: 100-continue\r\n"
         . 'Content-Length: ' . ($LIMIT + 1) . "\r\n\r\n",
         status => 413, code => 'body_too_large');
raw_case('create, HTTP/1.0 body without Content-Length',
         "POST $L HTTP/1.0\r\n$H$AK\r\n" . cbody(),
         status => 400, code => 'body_invalid');
raw_case('collection, PUT without a length',
         "PUT $L HTTP/1.1\r\n$H$AK\r\n",
         status => 405, code => 'method_not_allowed', allow => 'GET, HEAD, POST');
raw_case('create, Content-Length and chunked',
         "POST $L HTTP/1.1\r\n$H$AK" . "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
         status => 400, outside => 'nginx refuses the headers');
raw_case('create, two Content-Lengths',
         "POST $L HTTP/1.1\r\n$H$AK" . "Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
         status => 400, outside => 'nginx refuses the headers');
raw_case('create, negative Content-Length',
         "POST $L HTTP/1.1\r\n$H$AK" . "Content-Length: -1\r\n\r\n",
         status => 400, outside => 'nginx refuses the headers');
raw_case('list, header line of 10 kB',
         "GET $L HTTP/1.1\r\n$H$AK" . "X-Big: " . ('x' x 10240) . "\r\n\r\n",
         status => 400, outside => 'nginx refuses the header before the location');
raw_case('list, request line of 10 kB',
         "GET $L?limit=5&x=" . ('x' x 10240) . " HTTP/1.1\r\n$H$AK\r\n",
         status => 414, outside => 'nginx refuses the request line before the location');
raw_case('webhook, header line of 10 kB',
         "POST $W HTTP/1.1\r\n$H" . "Stripe-Signature: t=1," . ('v1=' . '0' x 64 . ',') x 150 . "\r\nContent-Length: 2\r\n\r\n{}",
         status => 400, outside => 'nginx refuses the header before the location');
raw_case('list, absolute URI of another host',
         "GET http://evil.example$L?limit=x HTTP/1.1\r\n$H$AK\r\n",
         status => 400, code => 'parameter_invalid', param => 'limit');
raw_case('list, Host twice',
         "GET $L HTTP/1.1\r\n$H$AK" . "Host: evil.example\r\n\r\n",
         status => 400, outside => 'nginx refuses the headers');
raw_case('list, HTTP/1.1 without Host',
         "GET $L HTTP/1.1\r\nConnection: close\r\n$AK\r\n",
         status => 400, outside => 'nginx refuses the headers');
raw_case('list, Content-Length: abc',
         "GET $L HTTP/1.1\r\n$H$AK" . "Content-Length: abc\r\n\r\n",
         status => 400, outside => 'nginx refuses the headers');
raw_case('create, Transfer-Encoding: gzip, chunked',
         "POST $L HTTP/1.1\r\n$H$AK" . "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
         status => 501, core_5xx => 1,
         outside => 'nginx answers 501 to an unknown Transfer-Encoding');
raw_case('webhook, Transfer-Encoding: identity',
         "POST $W HTTP/1.1\r\n$H" . "Transfer-Encoding: identity\r\n\r\n",
         status => 501, core_5xx => 1,
         outside => 'nginx answers 501 to an unknown Transfer-Encoding');
raw_case('list, HTTP/9.9',
         "GET $L HTTP/9.9\r\n$H$AK\r\n",
         status => 505, core_5xx => 1,
         outside => 'nginx answers 505 to an HTTP version it does not know');
raw_case('list, NUL in the request line',
         "GET $L?limit=5\0 HTTP/1.1\r\n$H$AK\r\n",
         status => 400, outside => 'nginx refuses the request line');

#----------------------------------------------------------------------
# run them

my %TYPES = (400 => 'invalid_request_error', 401 => 'authentication_error');

my $fp0 = fingerprint();
my $dump0 = pg_dump_data();
my @pids0 = worker_processes();
my $gen0 = cache_gen($redis);
my %keys0 = map { $_ => 1 } redis_keys();
ok($gen0 =~ /^\d+$/, "Redis: a cache generation ($gen0)");
my @fake0 = fake_requests();
is(scalar @fake0, 0, 'the fake Stripe starts with no recorded request');
ok(length $dump0 > 100, 'pg_dump sees the data') or diag $dump0;

my %outside;
for my $c (@CASES) {
    my $res;
    if (defined $c->{raw}) {
        $res = raw_request($c->{raw}, method => ($c->{raw} =~ /^(\S+)/)[0],
                           timeout => 20 * time_factor());
    } else {
        my @h = @{ $c->{headers} || [] };
        unshift @h, ['Api-Key', $KEY] if $c->{auth} // 1;
        $res = request($c->{method}, $c->{path}, \@h, $c->{body},
                       timeout => 20 * time_factor());
    }

    $TODO = $c->{todo};
    subtest $c->{name} => sub {
        my $want = $c->{status};
        if (ref $want) {
            like($res->status, $want, "status $want") or diag $res->describe;
        } else {
            is($res->status, $want, "status $want") or diag $res->describe;
        }
        cmp_ok($res->status, '>=', 400, 'an error status');
        # (nginx's own 501 and 505, before any location, are the only 5xx)
        cmp_ok($res->status, '<', 500, '... a 4xx, not a 5xx')
            unless $c->{core_5xx};

        if ($c->{outside}) {
            $outside{ $c->{name} } = $c->{outside};
        } else {
            is($res->header('Content-Type'), 'application/json; charset=utf-8',
               'JSON content type') or diag $res->describe;
        }
        if ($c->{allow}) {
            is($res->header('Allow'), $c->{allow}, "Allow: $c->{allow}");
        }
        if ($c->{head}) {
            is($res->raw_body, '', 'HEAD: no body bytes');
        } elsif (!$c->{outside}) {
            my $j = $res->json_or_undef;
            ok(ref $j eq 'HASH' && ref $j->{error} eq 'HASH',
               'body is {"error": {...}}') or diag $res->describe;
            my $e = ref $j eq 'HASH' && ref $j->{error} eq 'HASH' ? $j->{error} : {};
            my $type = $c->{type} // $TYPES{ $res->status } // 'invalid_request_error';
            is($e->{type}, $type, "error.type $type");
            ok(defined $e->{message} && !ref $e->{message}
               && length $e->{message}, 'error.message');
            if (defined(my $code = $c->{code})) {
                if (ref $code) {
                    like($e->{code} // '', $code, "error.code $code");
                } else {
                    is($e->{code}, $code, "error.code $code");
                }
            }
            if (exists $c->{param}) {
                my $p = $c->{param};
                if (ref $p) {
                    like($e->{param} // '<absent>', $p, "error.param $p");
                } else {
                    is($e->{param}, $p, "error.param $p");
                }
            }
            unlike($res->body, qr/<html|nginx\//i, 'no HTML page');
        }
        is(fingerprint(), $fp0, 'the database is unchanged');
        is(scalar(fake_requests()), 0, 'Stripe was not called');
    };
    $TODO = undef;
}

#----------------------------------------------------------------------
# after all of them

my $dump1 = pg_dump_data();
ok($dump1 eq $dump0, 'pg_dump --data-only: byte for byte the same')
    or diag _diff($dump0, $dump1);
is(fingerprint(), $fp0, 'checksum of every table and sequence: the same');
is(fingerprint(), sql_value($FP_SQL), '... as a fresh psql sees it');
is_deeply([worker_processes()], \@pids0,
          'the same nginx worker processes (none crashed): @pids0');
is(cache_gen($redis), $gen0, 'Redis: the same cache generation');
is_deeply([grep { !$keys0{$_} } redis_keys()], [], 'Redis: no new key');
my @fake1 = fake_requests();
is(scalar @fake1, 0, 'the fake Stripe got no request at all')
    or diag join "\n", map { "$_->{method} $_->{path}" } @fake1;
my @bad = grep { /\[(?:alert|crit|emerg)\]|exited on signal/ }
          split /\n/, error_log_text();
is_deeply(\@bad, [], 'the error log: no [alert], [crit], [emerg], no worker '
                    . 'exited on a signal');
my $after = api_request(GET => "$L/$SEED_IN");
is($after->status, 200, 'the API still answers: the seeded invoice');
diag scalar(@CASES) . ' cases; answered by nginx before the location: '
     . scalar(keys %outside);

done_testing();
