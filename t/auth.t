# Authentication: the Api-Key header, checked before routing and methods.
# The keys file written by the harness holds a comment line, "test-key",
# a blank line and "test-key-2".

use strict;
use warnings;
use Test::More;
use Invoices::Test;

start_server();
my $inv = insert_invoice(stripe_invoice_id => 'in_auth1');
block_vars(id => $inv->{id});

run_blocks();

done_testing();

__DATA__

=== no Api-Key header: 401 api_key_missing
--- request
GET /admin/api/invoices
--- error_code: 401
--- response_headers
Content-Type: application/json; charset=utf-8
--- json_path
$.@keys = ["error"]
error.type = "authentication_error"
error.code = "api_key_missing"
error.message : string
error.message ~ \S

=== wrong key: 401 api_key_invalid
--- request
GET /admin/api/invoices
--- more_headers
Api-Key: wrong-key
--- error_code: 401
--- response_headers
Content-Type: application/json; charset=utf-8
--- json_path
error.type = "authentication_error"
error.code = "api_key_invalid"
error.message ~ \S

=== the wrong key is not echoed back
--- request
GET /admin/api/invoices
--- more_headers
Api-Key: sEcReT-guess-1234
--- error_code: 401
--- response_body_unlike: sEcReT-guess-1234

=== no configured key appears in a 401 body
--- request
GET /admin/api/invoices
--- more_headers
Api-Key: test-ke
--- error_code: 401
--- response_body_unlike: test-key

=== first key of the file works
--- request
GET /admin/api/invoices
--- more_headers
Api-Key: test-key
--- error_code: 200
--- json_path
count = 1

=== second key of the file works (rotation)
--- request
GET /admin/api/invoices
--- more_headers
Api-Key: test-key-2
--- error_code: 200
--- json_path
count = 1

=== header name is case-insensitive (lower case)
--- request
GET /admin/api/invoices
--- more_headers
api-key: test-key
--- error_code: 200
--- json_path
invoices.# = 1

=== header name is case-insensitive (upper case)
--- request
GET /admin/api/invoices
--- more_headers
API-KEY: test-key-2
--- error_code: 200
--- json_path
invoices.# = 1

=== empty key: 401
--- request
GET /admin/api/invoices
--- more_headers
Api-Key:
--- error_code: 401
--- response_headers
Content-Type: application/json; charset=utf-8
--- json_path
error.type = "authentication_error"
error.code ~ ^api_key_(missing|invalid)$

=== key values are case-sensitive
--- request
GET /admin/api/invoices
--- more_headers
Api-Key: TEST-KEY
--- error_code: 401
--- json_path
error.code = "api_key_invalid"

=== a prefix of a key is not a key
--- request
GET /admin/api/invoices
--- more_headers
Api-Key: test-
--- error_code: 401
--- json_path
error.code = "api_key_invalid"

=== a key with extra characters is not a key
--- request
GET /admin/api/invoices
--- more_headers
Api-Key: test-key-22
--- error_code: 401
--- json_path
error.code = "api_key_invalid"

=== two keys glued together are not a key
--- request
GET /admin/api/invoices
--- more_headers
Api-Key: test-keytest-key-2
--- error_code: 401
--- json_path
error.code = "api_key_invalid"

=== the comment line of the keys file is not a key
--- request
GET /admin/api/invoices
--- more_headers
Api-Key: # admin API keys, one a line (two during a rotation)
--- error_code: 401
--- json_path
error.code = "api_key_invalid"

=== the key in another header does not count
--- request
GET /admin/api/invoices
--- more_headers
Authorization: Bearer test-key
X-Api-Key: test-key
--- error_code: 401
--- json_path
error.code = "api_key_missing"

=== the key in the query string does not count
--- request
GET /admin/api/invoices?Api-Key=test-key&api_key=test-key
--- error_code: 401
--- json_path
error.code = "api_key_missing"

=== auth before routing: one invoice without a key is 401
--- request
GET /admin/api/invoices/{{id}}
--- error_code: 401
--- json_path
error.code = "api_key_missing"

=== auth before routing: unknown route without a key is 401, not 404
--- request
GET /admin/api/invoices/x/y
--- error_code: 401
--- json_path
error.type = "authentication_error"

=== auth before routing: sibling path with a wrong key is 401, not 404
--- request
GET /admin/api/invoicesX
--- more_headers
Api-Key: nope
--- error_code: 401
--- json_path
error.code = "api_key_invalid"

=== auth before method: POST without a key is 401, not 405
--- request
POST /admin/api/invoices
--- error_code: 401
--- response_headers
Content-Type: application/json; charset=utf-8
--- json_path
error.code = "api_key_missing"

=== auth before method: DELETE with a wrong key is 401, not 405
--- request
DELETE /admin/api/invoices/{{id}}
--- more_headers
Api-Key: nope
--- error_code: 401
--- json_path
error.code = "api_key_invalid"

=== auth before validation: a bad limit without a key is 401, not 400
--- request
GET /admin/api/invoices?limit=abc
--- error_code: 401
--- json_path
error.code = "api_key_missing"

=== auth before validation: a malformed id with a wrong key is 401, not 400
--- request
GET /admin/api/invoices/NOT-AN-ID
--- more_headers
Api-Key: nope
--- error_code: 401
--- json_path
error.code = "api_key_invalid"

=== HEAD without a key: 401 and no body
--- request
HEAD /admin/api/invoices
--- error_code: 401
--- response_headers
Content-Type: application/json; charset=utf-8
--- response_body

=== a 401 writes nothing to the database
--- request
GET /admin/api/invoices/{{id}}
--- more_headers
Api-Key: wrong
--- error_code: 401
--- db_unchanged

=== the key is not written to the error log
--- request
GET /admin/api/invoices
--- more_headers
Api-Key: leaked-guess-987
--- error_code: 401
--- no_error_log
leaked-guess-987
test-key
