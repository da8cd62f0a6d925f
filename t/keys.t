# Named and scoped admin keys: a keys file of "<name> <scope> <key>" lines
# and bare keys.  A read key reads (GET, HEAD) and is refused anything else
# with 403 permission_error before any body is read or Stripe is called; a
# write key does everything; a bare key is a write key.  Bad files:
# t/config.t.

use strict;
use warnings;
use Test::More;
use Invoices::Test;

my $KEYS = <<'KEYS';
# admin keys: named, scoped, and one of the old kind
ops-admin write test-write-key-1
  reader	read   test-read-key-1
test-bare-key-1
KEYS

start_server(stripe => 1, keys => $KEYS);

my $main = linked_customer(payment_method => 'pm_card_visa');
my $inv = insert_invoice(stripe_invoice_id => 'in_keys1');
block_vars(id => $inv->{id}, customer => $main->{customer});

run_blocks();

done_testing();

__DATA__

=== a read key lists
--- request
GET /admin/api/invoices
--- more_headers
Api-Key: test-read-key-1
--- error_code: 200
--- json_path
count = 1

=== a read key reads one invoice
--- request
GET /admin/api/invoices/{{id}}
--- more_headers
Api-Key: test-read-key-1
--- error_code: 200
--- json_path
_id = "{{id}}"

=== a read key reads the summary and the export
--- request
GET /admin/api/invoices/summary
--- more_headers
Api-Key: test-read-key-1
--- error_code: 200
--- json_path
count = 1

=== a read key may HEAD
--- request
HEAD /admin/api/invoices
--- more_headers
Api-Key: test-read-key-1
--- error_code: 200

=== a read key may not create: 403 permission_error, Stripe not called
--- request
POST /admin/api/invoices

{"items": [{"name": "x", "amount": 100}], "customer": "{{customer}}"}
--- more_headers
Api-Key: test-read-key-1
Content-Type: application/json
--- error_code: 403
--- response_headers
Content-Type: application/json; charset=utf-8
--- json_path
$.@keys = ["error"]
error.type = "permission_error"
error.code = "api_key_read_only"
error.message ~ read
--- stripe_requests: 0
--- db_unchanged

=== a read key may not sync
--- request
POST /admin/api/invoices/sync
--- more_headers
Api-Key: test-read-key-1
--- error_code: 403
--- json_path
error.type = "permission_error"
--- stripe_requests: 0
--- db_unchanged

=== a read key's DELETE is 403, not 405: the scope comes before the route
--- request
DELETE /admin/api/invoices/{{id}}
--- more_headers
Api-Key: test-read-key-1
--- error_code: 403
--- json_path
error.type = "permission_error"
--- db_unchanged

=== a read key's PUT on an unknown route is 403 too
--- request
PUT /admin/api/invoices/x/y
--- more_headers
Api-Key: test-read-key-1
--- error_code: 403
--- json_path
error.type = "permission_error"

=== a read key's POST with a large body is refused without reading it
--- request eval
"POST /admin/api/invoices\n\n" . ('x' x 200000)
--- more_headers
Api-Key: test-read-key-1
Content-Type: application/json
--- error_code: 403
--- json_path
error.type = "permission_error"

=== the refusal names the key, not the key itself
--- request
POST /admin/api/invoices

{}
--- more_headers
Api-Key: test-read-key-1
Content-Type: application/json
--- error_code: 403
--- error_log
the read key "reader" may not POST
--- no_error_log
test-read-key-1

=== a named write key creates
--- request
POST /admin/api/invoices

{"items": [{"name": "x", "amount": 100}], "customer": "{{customer}}"}
--- more_headers
Api-Key: test-write-key-1
Content-Type: application/json
--- error_code: 201
--- json_path
status = "open"

=== a bare key is a write key: it reaches the route (405 here, not 403)
--- request
PUT /admin/api/invoices/{{id}}
--- more_headers
Api-Key: test-bare-key-1
--- error_code: 405
--- json_path
error.type = "invalid_request_error"

=== the name and the scope are not keys
--- request
GET /admin/api/invoices
--- more_headers
Api-Key: reader
--- error_code: 401
--- json_path
error.code = "api_key_invalid"

=== a whole line is not a key
--- request
GET /admin/api/invoices
--- more_headers
Api-Key: ops-admin write test-write-key-1
--- error_code: 401
--- json_path
error.code = "api_key_invalid"

=== the read key's scope does not leak to a write key: a bare key's POST is not 403
--- request
POST /admin/api/invoices

{}
--- more_headers
Api-Key: test-bare-key-1
Content-Type: application/json
--- error_code: 400
--- json_path
error.type = "invalid_request_error"
