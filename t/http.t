# HTTP behaviour of the admin location: methods (405 + Allow), HEAD,
# unknown routes, 413 as JSON, ETag / If-None-Match, Content-Type,
# X-Cache, and a few raw requests.  The admin location here has
# "client_max_body_size 1k;".

use strict;
use warnings;
use Test::More;
use Invoices::Test;

start_server(location_config => '            client_max_body_size 1k;');

my @inv = insert_rows(invoices => map { {
    stripe_invoice_id => "in_http$_",
    status            => 'open',
    amount            => 1000 + $_,
    currency          => 'eur',
    stripe_created_at => "2024-03-0${_}T12:00:00.000Z",
} } 1 .. 3);
block_vars(id => $inv[0]{id}, big => 'x' x 2048, small => 'x' x 100);

run_blocks(default_headers => 'Api-Key: ' . API_KEY);

#----------------------------------------------------------------------
# 405 for every other method, on both routes

for my $path ('/admin/api/invoices', "/admin/api/invoices/$inv[0]{id}",
              '/admin/api/invoices/in_http1') {
    for my $m (qw(POST PUT DELETE PATCH OPTIONS)) {
        my $body = $m =~ /^(POST|PUT|PATCH)$/ ? '{"items":[]}' : undef;
        my @h = defined $body ? ('Content-Type' => 'application/json') : ();
        my $res = api_request($m => $path, \@h, $body);
        subtest "$m $path: 405" => sub {
            is($res->status, 405, 'status 405') or diag $res->describe;
            is($res->header('Allow'), 'GET, HEAD', 'Allow: GET, HEAD');
            is($res->header('Content-Type'), 'application/json; charset=utf-8',
               'JSON content type');
            json_check($res, <<'EOC');
error.type = "invalid_request_error"
error.code = "method_not_allowed"
error.message ~ \S
EOC
        };
    }
}
my $fp = db_fingerprint();
api_request(POST => '/admin/api/invoices', ['Content-Type' => 'application/json'],
            '{"items":[{"name":"x","amount":1}],"customer":"cus_x"}');
api_request(DELETE => "/admin/api/invoices/$inv[0]{id}");
is(db_fingerprint(), $fp, 'POST and DELETE change nothing');
is(sql_value('SELECT count(*) FROM invoices'), 3, '... the invoice is still there');

#----------------------------------------------------------------------
# HEAD: the headers of GET, no body

for my $path ('/admin/api/invoices?limit=2', "/admin/api/invoices/$inv[1]{id}") {
    my $get = api_request(GET => $path);
    my $head = api_request(HEAD => $path);
    subtest "HEAD $path" => sub {
        is($get->status, 200, 'GET: 200');
        is($head->status, $get->status, 'HEAD: same status');
        for my $h (qw(Content-Type ETag X-Cache)) {
            ok(defined $get->header($h), "GET has $h");
            is($head->header($h), $get->header($h), "HEAD: same $h");
        }
        if (defined(my $len = $head->header('Content-Length'))) {
            is($len, length $get->body, 'HEAD: Content-Length of the GET body');
        }
        is($head->raw_body, '', 'HEAD: no body bytes at all');
    };
}

#----------------------------------------------------------------------
# ETag and If-None-Match

my $r1 = api_request(GET => '/admin/api/invoices?limit=2');
my $etag = $r1->header('ETag');
like($etag // '', qr/^"[\x21\x23-\x7e]+"$/, 'list: a quoted strong ETag (no W/)');
is(api_request(GET => '/admin/api/invoices?limit=2')->header('ETag'), $etag,
   'same data, same ETag');

my $nm = api_request(GET => '/admin/api/invoices?limit=2', ['If-None-Match' => $etag]);
is($nm->status, 304, 'If-None-Match with the ETag: 304') or diag $nm->describe;
is($nm->raw_body, '', '304: no body');
is($nm->header('ETag'), $etag, '304 carries the ETag (RFC 9110 15.4.5)');

$nm = api_request(GET => '/admin/api/invoices?limit=2',
                  ['If-None-Match' => qq("nope", $etag, "other")]);
is($nm->status, 304, 'If-None-Match with the ETag in a list: 304');
is($nm->raw_body, '', '... no body');

$nm = api_request(GET => '/admin/api/invoices?limit=2', ['If-None-Match' => '*']);
is($nm->status, 304, 'If-None-Match: * gives 304');
is($nm->raw_body, '', '... no body');

$nm = api_request(GET => '/admin/api/invoices?limit=2', ['If-None-Match' => "W/$etag"]);
is($nm->status, 304, 'If-None-Match: W/ + ETag gives 304 (weak comparison, RFC 9110 13.1.2)');

$nm = api_request(GET => '/admin/api/invoices?limit=2', ['If-None-Match' => '"nope"']);
is($nm->status, 200, 'If-None-Match with another ETag: 200');
is($nm->body, $r1->body, '... with the full body');

$nm = api_request(HEAD => '/admin/api/invoices?limit=2', ['If-None-Match' => $etag]);
is($nm->status, 304, 'HEAD with If-None-Match: 304');

$nm = request(GET => '/admin/api/invoices?limit=2', ['If-None-Match' => $etag]);
is($nm->status, 401, 'If-None-Match does not skip auth: 401 without a key');

my $p2 = api_request(GET => '/admin/api/invoices?limit=2&page=2')->header('ETag');
ok(defined $p2 && $p2 ne $etag, 'another page, another ETag');
my $l1 = api_request(GET => '/admin/api/invoices?limit=1')->header('ETag');
ok(defined $l1 && $l1 ne $etag, 'another limit, another ETag');

# a change in the data changes the ETag
sql_do("UPDATE invoices SET status = 'paid', updated_at = now() "
     . "WHERE stripe_invoice_id = 'in_http3'");
my $r2 = api_request(GET => '/admin/api/invoices?limit=2');
isnt($r2->header('ETag'), $etag, 'list: an updated invoice changes the ETag');
is(api_request(GET => '/admin/api/invoices?limit=2', ['If-None-Match' => $etag])->status,
   200, 'the old ETag no longer matches: 200');
my $etag2 = $r2->header('ETag');
sql_do("UPDATE invoices SET amount = amount + 1 WHERE stripe_invoice_id = 'in_http3'");
isnt(api_request(GET => '/admin/api/invoices?limit=2')->header('ETag'), $etag2,
     'list: a changed amount alone changes the ETag');

my $etag3 = api_request(GET => '/admin/api/invoices?limit=2')->header('ETag');
insert_invoice(stripe_invoice_id => 'in_http_old', stripe_created_at => '2001-01-01T00:00:00Z');
isnt(api_request(GET => '/admin/api/invoices?limit=2')->header('ETag'), $etag3,
     'list: a new invoice (count changes, page does not) changes the ETag');

# one invoice
my $path = "/admin/api/invoices/$inv[0]{id}";
my $g1 = api_request(GET => $path);
my $ie = $g1->header('ETag');
like($ie // '', qr/^"[\x21\x23-\x7e]+"$/, 'one invoice: a quoted strong ETag');
isnt($ie, api_request(GET => "/admin/api/invoices/$inv[1]{id}")->header('ETag'),
     'two invoices, two ETags');
is(api_request(GET => '/admin/api/invoices/in_http1')->header('ETag'), $ie,
   'the same invoice by Stripe id: the same ETag');
my $g304 = api_request(GET => $path, ['If-None-Match' => $ie]);
is($g304->status, 304, 'one invoice: If-None-Match gives 304');
is($g304->raw_body, '', '... no body');
sql_do("UPDATE invoices SET invoice_pdf = 'https://x/pdf', updated_at = now() "
     . "WHERE id = " . quote($inv[0]{id}));
my $g2 = api_request(GET => $path, ['If-None-Match' => $ie]);
is($g2->status, 200, 'one invoice: after a change the old ETag gives 200');
isnt($g2->header('ETag'), $ie, '... and a new ETag');

#----------------------------------------------------------------------
# raw requests

my $res = raw_request("GET /admin/api/invoices?limit=1 HTTP/1.0\r\nApi-Key: test-key\r\n\r\n");
is($res->status, 200, 'HTTP/1.0 without Host: 200');
json_check($res, 'invoices.# = 1', 'HTTP/1.0');
is($res->header('Content-Type'), 'application/json; charset=utf-8', 'HTTP/1.0: JSON');

$res = raw_request("GET /admin/api/%69nvoices?limit=1 HTTP/1.1\r\nHost: x\r\n"
                 . "Api-Key: test-key\r\nConnection: close\r\n\r\n");
is($res->status, 200, 'percent-encoded path: decoded by nginx, 200');

$res = raw_request("GET /admin/api/x/../invoices?limit=1 HTTP/1.1\r\nHost: x\r\n"
                 . "Api-Key: test-key\r\nConnection: close\r\n\r\n");
is($res->status, 200, 'dot segments are resolved: 200');

# two requests on one keep-alive connection (pipelined)
$res = raw_request("GET /admin/api/invoices?limit=1 HTTP/1.1\r\nHost: x\r\n"
                 . "Api-Key: test-key\r\n\r\n"
                 . "GET /admin/api/invoices/$inv[2]{id} HTTP/1.1\r\nHost: x\r\n"
                 . "Api-Key: test-key\r\nConnection: close\r\n\r\n");
my @statuses = $res->raw =~ m{HTTP/1\.1 (\d{3}) }g;
is_deeply(\@statuses, [200, 200], 'keep-alive: two pipelined requests, two 200s');
like($res->raw, qr/"_id":"$inv[2]{id}"/, '... the second answered with its invoice');

# a 404 then a 200 on one connection: error responses keep the
# connection usable
$res = raw_request("GET /admin/api/invoices/x/y HTTP/1.1\r\nHost: x\r\n"
                 . "Api-Key: test-key\r\n\r\n"
                 . "GET /admin/api/invoices?limit=1 HTTP/1.1\r\nHost: x\r\n"
                 . "Api-Key: test-key\r\nConnection: close\r\n\r\n");
@statuses = $res->raw =~ m{HTTP/1\.1 (\d{3}) }g;
is_deeply(\@statuses, [404, 200], 'keep-alive: 404 then 200 on one connection');

# an unknown route with a body: the body is read and dropped, so the next
# request on the connection is understood
$res = raw_request("POST /admin/api/invoicesX HTTP/1.1\r\nHost: x\r\n"
                 . "Api-Key: test-key\r\nContent-Length: 11\r\n\r\n"
                 . "hello world"
                 . "GET /admin/api/invoices?limit=1 HTTP/1.1\r\nHost: x\r\n"
                 . "Api-Key: test-key\r\nConnection: close\r\n\r\n");
@statuses = $res->raw =~ m{HTTP/1\.1 (\d{3}) }g;
is_deeply(\@statuses, [404, 200], 'keep-alive: 404 with a body, then 200');

# a body nginx itself refuses under the API's location is JSON too, and
# the connection is closed (what follows is not a request).  (A chunked
# body over the limit on an endpoint that reads bodies: t/create.t.)
$res = raw_request("GET /admin/api/invoices HTTP/1.1\r\nHost: x\r\n"
                 . "Api-Key: test-key\r\nTransfer-Encoding: chunked\r\n\r\n"
                 . "zz\r\nnot a chunk\r\n");
is($res->status, 400, 'malformed chunked body: 400');
is($res->header('Content-Type'), 'application/json; charset=utf-8', '... JSON');
json_check($res, 'error.code = "request_malformed"', 'malformed chunked body');
@statuses = $res->raw =~ m{HTTP/1\.1 (\d{3}) }g;
is_deeply(\@statuses, [400], '... one answer only, no HTML page after it');

done_testing();

__DATA__

=== 405 carries Allow and JSON
--- request
POST /admin/api/invoices
--- error_code: 405
--- response_headers
Allow: GET, HEAD
Content-Type: application/json; charset=utf-8
--- json_path
error.type = "invalid_request_error"
error.code = "method_not_allowed"

=== HEAD of an error: status and headers, no body
--- request
HEAD /admin/api/invoices?limit=abc
--- error_code: 400
--- response_headers
Content-Type: application/json; charset=utf-8
--- response_body

=== list 200: content type, X-Cache, ETag
--- request
GET /admin/api/invoices
--- error_code: 200
--- response_headers
Content-Type: application/json; charset=utf-8
X-Cache: BYPASS
--- response_headers_like
ETag: ^"[^"]+"$
--- json_path
count = 3

=== a deeper path is route_missing
--- request
GET /admin/api/invoices/x/y
--- error_code: 404
--- response_headers
Content-Type: application/json; charset=utf-8
--- json_path
error.type = "invalid_request_error"
error.code = "route_missing"
error.message ~ \S

=== a deeper path under a valid id is route_missing
--- request
GET /admin/api/invoices/{{id}}/lines
--- error_code: 404
--- json_path
error.code = "route_missing"

=== a sibling of the prefix is route_missing
--- request
GET /admin/api/invoicesX
--- error_code: 404
--- response_headers
Content-Type: application/json; charset=utf-8
--- json_path
error.type = "invalid_request_error"
error.code = "route_missing"

=== another sibling (invoices_all) is route_missing
--- request
GET /admin/api/invoices_all?limit=1
--- error_code: 404
--- json_path
error.code = "route_missing"

=== HEAD of a missing route: 404, no body
--- request
HEAD /admin/api/invoices/x/y
--- error_code: 404
--- response_body

=== 413: POST body over client_max_body_size, as JSON
--- request
POST /admin/api/invoices
--- more_headers
Content-Type: application/json
--- request_body: {{big}}
--- error_code: 413
--- response_headers
Content-Type: application/json; charset=utf-8
--- response_body_unlike: (?i)<html
--- json_path
error.type = "invalid_request_error"
error.code = "body_too_large"
error.message ~ \S

=== 413: GET with a body over client_max_body_size, as JSON
--- request
GET /admin/api/invoices
--- request_body: {{big}}
--- error_code: 413
--- response_headers
Content-Type: application/json; charset=utf-8
--- json_path
error.code = "body_too_large"

=== 413: PUT on one invoice with a large body, as JSON
--- request
PUT /admin/api/invoices/{{id}}
--- request_body: {{big}}
--- error_code: 413
--- json_path
error.code = "body_too_large"

=== a body under the limit is not 413 (POST: 405)
--- request
POST /admin/api/invoices
--- request_body: {{small}}
--- error_code: 405
--- response_headers
Allow: GET, HEAD

=== a 400 is JSON
--- request
GET /admin/api/invoices?limit=0
--- error_code: 400
--- response_headers
Content-Type: application/json; charset=utf-8
--- json_path
$.@keys = ["error"]
error.param = "limit"
