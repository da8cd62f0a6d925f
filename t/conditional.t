# Conditional requests, answered by nginx's not-modified filter from the
# ETag the module sets (ngx_http_invoices_read.c): If-Match and
# If-Unmodified-Since preconditions, If-None-Match on one invoice, and
# that the 412 nginx makes by itself comes as the API's JSON error.
# t/http.t has If-None-Match on the list.

use strict;
use warnings;
use Test::More;
use Invoices::Test;

start_server();

my @inv = insert_rows(invoices => map { {
    stripe_invoice_id => "in_cond$_",
    status            => 'open',
    amount            => 500 + $_,
    currency          => 'eur',
    stripe_created_at => "2024-05-0${_}T12:00:00.000Z",
} } 1 .. 2);

for my $path ('/admin/api/invoices?limit=5', "/admin/api/invoices/$inv[0]{id}",
              '/admin/api/invoices/in_cond2') {
    my $first = api_request(GET => $path);
    is($first->status, 200, "$path: 200") or diag $first->describe;
    my $etag = $first->header('ETag');
    like($etag // '', qr/^"[0-9a-f]{16}"$/, "$path: a strong ETag");

    my $res = api_request(GET => $path, ['If-None-Match' => $etag]);
    is($res->status, 304, "$path: If-None-Match with its ETag: 304");
    is($res->raw_body, '', '... no body');
    is($res->header('ETag'), $etag, '... the ETag again');
    ok(!defined $res->header('Content-Length')
       || $res->header('Content-Length') eq '0', '... no length of a body');

    $res = api_request(GET => $path, ['If-Match' => $etag]);
    is($res->status, 200, "$path: If-Match with its ETag: 200");
    is($res->body, $first->body, '... the same body');

    $res = api_request(GET => $path, ['If-Match' => '"0000000000000000"']);
    is($res->status, 412, "$path: If-Match with another ETag: 412")
        or diag $res->describe;
    is($res->header('Content-Type'), 'application/json; charset=utf-8',
       '... as JSON');
    json_check($res, <<'EOC');
error.type = "invalid_request_error"
error.code = "precondition_failed"
error.message ~ If-Match
EOC

    $res = api_request(GET => $path, ['If-Match' => 'W/' . $etag]);
    is($res->status, 412, "$path: If-Match takes no weak ETag: 412");
}

# a change of the invoice changes its ETag: the old one no longer gives 304
my $path = "/admin/api/invoices/$inv[0]{id}";
my $old = api_request(GET => $path)->header('ETag');
sql_do("UPDATE invoices SET amount = amount + 1 WHERE id = '$inv[0]{id}'");
my $res = api_request(GET => $path, ['If-None-Match' => $old]);
is($res->status, 200, 'after a change, the old ETag: 200');
isnt($res->header('ETag'), $old, '... and a new ETag');

done_testing;
