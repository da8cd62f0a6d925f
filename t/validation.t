# Validation of page, limit and {id}: every case of the contract.
# Every block is sent with "Api-Key: test-key" (default_headers below).
# 12 invoices are seeded, so accepted values show their effect.

use strict;
use warnings;
use Test::More;
use Invoices::Test;

start_server();

my @inv = insert_rows(invoices => map { {
    stripe_invoice_id => sprintf('in_val%02d', $_),
    status            => 'paid',
    amount            => 100 * $_,
    currency          => 'eur',
    stripe_created_at => sprintf('2024-01-%02dT10:00:00.000Z', $_),
} } 1 .. 12);
block_vars(id => $inv[0]{id}, a252 => 'a' x 252, a253 => 'a' x 253);

run_blocks(default_headers => 'Api-Key: ' . API_KEY);

# Every rejected value of page and limit, each as its own request, with
# the same assertions: 400, invalid_request_error, parameter_invalid,
# the right param, a message, JSON content type.
my @bad = (
    [limit => 'abc'], [limit => '0'], [limit => '-1'], [limit => '1e3'],
    [limit => '101'], [limit => ''], [limit => '+5'], [limit => '%2B5'],
    [limit => '%205'], [limit => '5%20'], [limit => '5abc'], [limit => '5.0'],
    [limit => '0x10'], [limit => '1000'], [limit => '00000000000000000000101'],
    [limit => '99999999999999999999'], [limit => '18446744073709551617'],
    [limit => '%00'], [limit => '5%00'], [limit => '%'], [limit => '%3'],
    [limit => '%zz'], [limit => '%C2%B5'], [limit => '%EF%BC%95'],
    [page => 'abc'], [page => '0'], [page => '-1'], [page => '1e3'],
    [page => ''], [page => '+1'], [page => '%201'], [page => '1.5'],
    [page => '2147483648'], [page => '4294967297'],
    [page => '99999999999999999999999999'], [page => '0x1'], [page => '%00'],
);
for my $case (@bad) {
    my ($param, $value) = @$case;
    my $other = $param eq 'page' ? 'limit=5' : 'page=1';
    my $res = api_request(GET => "/admin/api/invoices?$other&$param=$value");
    subtest "list: $param=$value is rejected" => sub {
        is($res->status, 400, 'status 400') or diag $res->describe;
        is($res->header('Content-Type'), 'application/json; charset=utf-8',
           'JSON content type');
        json_check($res, <<"EOC");
error.type = "invalid_request_error"
error.code = "parameter_invalid"
error.param = "$param"
error.message ~ \\S
EOC
    };
}

# A parameter given twice is ambiguous: 400, even when both agree.
for my $q ('limit=5&limit=5', 'limit=5&limit=6', 'page=1&page=1',
           'page=1&limit=2&page=2') {
    my ($param) = $q =~ /(\w+)=\d+&(?:.*&)?\1=/;
    my $res = api_request(GET => "/admin/api/invoices?$q");
    is($res->status, 400, "list: $q (twice) is 400") or diag $res->describe;
    json_check($res, qq(error.param = "$param"\nerror.code = "parameter_invalid"),
               "list: $q");
}

# Accepted values and what they do.
my @good = (
    ['limit=1'            => 1,  'in_val12'],
    ['limit=100'          => 12, 'in_val12'],
    ['limit=%35'          => 5,  'in_val12'],   # percent-encoded "5"
    ['limit=%31%30'       => 10, 'in_val12'],
    ['limit=007'          => 7,  'in_val12'],   # digits only: 007 is 7
    ['limit=0100'         => 12, 'in_val12'],   # 100
    ['page=2&limit=5'     => 5,  'in_val07'],
    ['page=%32&limit=5'   => 5,  'in_val07'],
    ['page=3&limit=5'     => 2,  'in_val02'],
    ['page=2'             => 2,  'in_val02'],   # default limit 10
    ['limit=4&'           => 4,  'in_val12'],
    ['&&limit=4'          => 4,  'in_val12'],
    [''                   => 10, 'in_val12'],   # "?" with nothing after it
);
for my $case (@good) {
    my ($q, $n, $first) = @$case;
    my $res = api_request(GET => "/admin/api/invoices?$q");
    subtest "list: ?$q is accepted" => sub {
        is($res->status, 200, 'status 200') or diag $res->describe;
        json_check($res, <<"EOC");
invoices.# = $n
invoices.0.invoiceId = "$first"
count = 12
EOC
    };
}

# An unknown name is a 400 naming it, never ignored: a typo must not list
# everything.  Names are whole names.
my @unknown = (
    ['limit=5&foo=bar'         => 'foo'],
    ['xlimit=abc&limit=3'      => 'xlimit'],
    ['limitx=abc'              => 'limitx'],
    ['limit_=0'                => 'limit_'],
    ['stauts=paid'             => 'stauts'],
    ['Status=paid'             => 'Status'],
    ['created[gte=1'           => 'created[gte'],
    ['created=1'               => 'created'],
    ['format=csv'              => 'format'],     # the export's, not the list's
    ['=5'                      => ''],
    ["a%FF%00b=1"              => 'a%FF%00b'],
);
for my $case (@unknown) {
    my ($q, $param) = @$case;
    my $res = api_request(GET => "/admin/api/invoices?$q");
    subtest "list: ?$q is an unknown parameter" => sub {
        is($res->status, 400, 'status 400') or diag $res->describe;
        json_check($res, <<"EOC");
error.type = "invalid_request_error"
error.code = "parameter_unknown"
error.param = "$param"
EOC
    };
}

# The largest page is valid and simply past the end.
my $res = api_request(GET => '/admin/api/invoices?page=2147483647&limit=100');
is($res->status, 200, 'page=2147483647 is accepted') or diag $res->describe;
json_check($res, "invoices = []\ncount = 12", 'page=2147483647');

# Query parameters on the single-invoice route are ignored, even invalid ones.
for my $q ('limit=abc&page=0', 'limit=1000', 'page=-1', 'limit=5&limit=6',
           "page=1'%20OR%201=1") {
    my $res = api_request(GET => "/admin/api/invoices/$inv[0]{id}?$q");
    is($res->status, 200, "one invoice: ?$q ignored") or diag $res->describe;
    json_check($res, qq(_id = "$inv[0]{id}"), "one invoice: ?$q");
}

done_testing();

__DATA__

=== id: 24 lowercase hex is valid (known id: 200)
--- request
GET /admin/api/invoices/{{id}}
--- error_code: 200
--- json_path
_id = "{{id}}"

=== id: 24 hex digits that name nothing: 404 resource_missing
--- request
GET /admin/api/invoices/000000000000000000000000
--- error_code: 404
--- response_headers
Content-Type: application/json; charset=utf-8
--- json_path
error.type = "invalid_request_error"
error.code = "resource_missing"

=== id: uppercase hex is malformed
--- request
GET /admin/api/invoices/65490130FF600E06AF2A9694
--- error_code: 400
--- response_headers
Content-Type: application/json; charset=utf-8
--- json_path
error.type = "invalid_request_error"
error.code = "parameter_invalid"
error.param = "id"
error.message ~ \S

=== id: mixed case hex is malformed
--- request
GET /admin/api/invoices/65490130fF600e06af2a9694
--- error_code: 400
--- json_path
error.param = "id"
error.code = "parameter_invalid"

=== id: 23 hex characters
--- request
GET /admin/api/invoices/65490130ff600e06af2a969
--- error_code: 400
--- json_path
error.param = "id"
error.code = "parameter_invalid"

=== id: 25 hex characters
--- request
GET /admin/api/invoices/65490130ff600e06af2a96940
--- error_code: 400
--- json_path
error.param = "id"
error.code = "parameter_invalid"

=== id: 24 characters, not all hex
--- request
GET /admin/api/invoices/65490130ff600e06af2a969g
--- error_code: 400
--- json_path
error.param = "id"
error.code = "parameter_invalid"

=== id: in_ alone
--- request
GET /admin/api/invoices/in_
--- error_code: 400
--- json_path
error.param = "id"
error.code = "parameter_invalid"

=== id: in_ with a dash
--- request
GET /admin/api/invoices/in_a-b
--- error_code: 400
--- json_path
error.param = "id"
error.code = "parameter_invalid"

=== id: in_ with a dot
--- request
GET /admin/api/invoices/in_a.b
--- error_code: 400
--- json_path
error.param = "id"

=== id: in_ with a percent-encoded space
--- request
GET /admin/api/invoices/in_a%20b
--- error_code: 400
--- json_path
error.param = "id"

=== id: in_ with a non-ASCII letter
--- request
GET /admin/api/invoices/in_caf%C3%A9
--- error_code: 400
--- json_path
error.param = "id"

=== id: IN_ in upper case is not the prefix
--- request
GET /admin/api/invoices/IN_abc
--- error_code: 400
--- json_path
error.param = "id"

=== id: a Stripe id of 255 characters in all is valid (unknown: 404)
--- request
GET /admin/api/invoices/in_{{a252}}
--- error_code: 404
--- json_path
error.code = "resource_missing"

=== id: a Stripe id of 256 characters in all is too long
--- request
GET /admin/api/invoices/in_{{a253}}
--- error_code: 400
--- json_path
error.param = "id"
error.code = "parameter_invalid"

=== id: a valid but unknown Stripe id: 404
--- request
GET /admin/api/invoices/in_doesNotExist_123
--- error_code: 404
--- json_path
error.type = "invalid_request_error"
error.code = "resource_missing"

=== id: a known Stripe id: 200
--- request
GET /admin/api/invoices/in_val03
--- error_code: 200
--- json_path
invoiceId = "in_val03"
amount = 300

=== id: something else entirely
--- request
GET /admin/api/invoices/hello
--- error_code: 400
--- json_path
error.param = "id"

=== injection: quote in an id
--- request
GET /admin/api/invoices/in_x'%20OR%20'1'='1
--- error_code: 400
--- json_path
error.param = "id"
--- db_unchanged

=== injection: statement in an id
--- request
GET /admin/api/invoices/in_x;DELETE%20FROM%20invoices;--
--- error_code: 400
--- json_path
error.param = "id"
--- db_unchanged

=== injection: hex-looking id with a quote
--- request
GET /admin/api/invoices/65490130ff600e06af2a96'--
--- error_code: 400
--- json_path
error.param = "id"
--- db_unchanged

=== injection: statement in limit
--- request
GET /admin/api/invoices?limit=1;DELETE%20FROM%20invoices
--- error_code: 400
--- json_path
error.param = "limit"
--- db_unchanged

=== injection: quote in page
--- request
GET /admin/api/invoices?page=1'%20OR%20'1'='1
--- error_code: 400
--- json_path
error.param = "page"
--- db_unchanged

=== injection: a subquery in limit
--- request
GET /admin/api/invoices?limit=(SELECT%20100)
--- error_code: 400
--- json_path
error.param = "limit"
--- db_unchanged

=== injection: the tables are still there afterwards
--- request
GET /admin/api/invoices?limit=100
--- error_code: 200
--- json_path
count = 12
invoices.# = 12
