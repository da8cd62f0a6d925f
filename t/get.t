# GET /admin/api/invoices/{id}: one invoice by _id or by Stripe id.
# The database's default time zone is set to Asia/Kolkata (+05:30) before
# nginx starts, so timestamps must be converted to UTC by the module, not
# taken from the session's text output.

use strict;
use warnings;
use Test::More;
use Invoices::Test;

start_server(before_start => sub {
    sql_do("ALTER DATABASE " . db_name() . " SET timezone TO 'Asia/Kolkata'");
});
is(sql_value('SHOW timezone'), 'Asia/Kolkata', 'sessions of this database default to +05:30');

my $team = insert_team(id => '6548a41138406c14db33b606', name => 'John Doe',
                       stripe_customer_id => 'cus_OxIokju2aarNVm');
my $full = insert_invoice(
    id                 => '65490130ff600e06af2a9694',
    stripe_invoice_id  => 'in_1O9UOhA0ZUrt0vQJoum7M20X',
    stripe_customer_id => 'cus_OxIokju2aarNVm',
    team_id            => $team->{id},
    status             => 'paid',
    amount             => 3300,
    currency           => 'eur',
    invoice_pdf        => 'https://pay.stripe.com/invoice/acct_1NOa/test_YWNjdF8x/pdf?s=ap',
    stripe_created_at  => '2023-11-06T15:07:28.550Z',
    updated_at         => '2023-11-06T15:07:46.295Z',
);
my $bare = insert_invoice(
    id                 => '65490131aa600e06af2a9695',
    stripe_invoice_id  => 'in_Bare_1',
    stripe_customer_id => 'cus_unknown',
    team_id            => undef,
    status             => 'draft',
    amount             => 0,
    currency           => 'usd',
    invoice_pdf        => undef,
    stripe_created_at  => '2000-01-01T00:00:00.005+05:30',
    updated_at         => '2024-02-29T23:59:59.999Z',
);
# Stripe ids may be long and use underscores and digits.
my $long_sid = 'in_' . ('Ab9_' x 63);    # 255 characters in all
my $long = insert_invoice(stripe_invoice_id => $long_sid, amount => 5);

block_vars(full_id => $full->{id}, bare_id => $bare->{id},
           long_sid => $long_sid, long_id => $long->{id});

run_blocks(default_headers => 'Api-Key: ' . API_KEY);

# The same object by either id, and the same as in the list.
my $by_id = api_request(GET => "/admin/api/invoices/$full->{id}");
my $by_sid = api_request(GET => "/admin/api/invoices/$full->{stripe_invoice_id}");
is($by_id->status, 200, 'by _id: 200');
is($by_sid->status, 200, 'by Stripe id: 200');
is_deeply($by_sid->json, $by_id->json, 'by _id and by Stripe id: the same object');
my $list = api_request(GET => '/admin/api/invoices?limit=100');
my ($in_list) = grep { $_->{_id} eq $full->{id} } @{ $list->json->{invoices} };
is_deeply($by_id->json, $in_list, 'the same object as its list element');

# A changed row is served changed at once.
sql_do("UPDATE invoices SET status = 'void', updated_at = '2025-01-02T03:04:05.678Z' "
     . "WHERE id = " . quote($full->{id}));
my $after = api_request(GET => "/admin/api/invoices/$full->{id}");
json_check($after, qq(status = "void"\nupdatedAt = "2025-01-02T03:04:05.678Z"),
           'after an update');

# A deleted row is gone.
sql_do("DELETE FROM invoices WHERE id = " . quote($bare->{id}));
my $gone = api_request(GET => "/admin/api/invoices/$bare->{id}");
is($gone->status, 404, 'a deleted invoice: 404');
json_check($gone, qq(error.code = "resource_missing"), 'a deleted invoice');
$gone = api_request(GET => '/admin/api/invoices/in_Bare_1');
is($gone->status, 404, 'a deleted invoice by Stripe id: 404');

done_testing();

__DATA__

=== by _id: the whole object
--- request
GET /admin/api/invoices/{{full_id}}
--- error_code: 200
--- response_headers
Content-Type: application/json; charset=utf-8
--- json_path
$ : object
_id = "65490130ff600e06af2a9694"
invoiceId = "in_1O9UOhA0ZUrt0vQJoum7M20X"
user = {"_id":"6548a41138406c14db33b606","name":"John Doe"}
status = "paid"
amount = 3300
amount : integer
currency = "eur"
invoicePdf = "https://pay.stripe.com/invoice/acct_1NOa/test_YWNjdF8x/pdf?s=ap"
createdAt = "2023-11-06T15:07:28.550Z"
updatedAt = "2023-11-06T15:07:46.295Z"
invoices absent
error absent

=== by Stripe id: the same invoice
--- request
GET /admin/api/invoices/in_1O9UOhA0ZUrt0vQJoum7M20X
--- error_code: 200
--- json_path
_id = "65490130ff600e06af2a9694"
invoiceId = "in_1O9UOhA0ZUrt0vQJoum7M20X"
user._id = "6548a41138406c14db33b606"
amount = 3300

=== no team: user is null, no PDF: invoicePdf is null
--- request
GET /admin/api/invoices/{{bare_id}}
--- error_code: 200
--- json_path
_id = "65490131aa600e06af2a9695"
invoiceId = "in_Bare_1"
user = null
invoicePdf = null
status = "draft"
amount = 0
amount : integer
currency = "usd"

=== timestamps are UTC with three digits, whatever the session time zone
--- request
GET /admin/api/invoices/{{bare_id}}
--- error_code: 200
--- json_path
createdAt = "1999-12-31T18:30:00.005Z"
updatedAt = "2024-02-29T23:59:59.999Z"

=== a long Stripe id (255 characters in all)
--- request
GET /admin/api/invoices/{{long_sid}}
--- error_code: 200
--- json_path
_id = "{{long_id}}"
invoiceId = "{{long_sid}}"

=== an invoice added by the block's setup is found at once
--- setup
INSERT INTO invoices (stripe_invoice_id, status, amount, currency, stripe_created_at)
VALUES ('in_fromSetup', 'open', 77, 'eur', '2024-01-01T00:00:00Z');
--- request
GET /admin/api/invoices/in_fromSetup
--- error_code: 200
--- json_path
invoiceId = "in_fromSetup"
amount = 77
status = "open"
createdAt = "2024-01-01T00:00:00.000Z"

=== unknown _id: 404 resource_missing
--- request
GET /admin/api/invoices/65490130ff600e06af2a9699
--- error_code: 404
--- response_headers
Content-Type: application/json; charset=utf-8
--- json_path
$.@keys = ["error"]
error.type = "invalid_request_error"
error.code = "resource_missing"
error.message ~ \S

=== unknown Stripe id: 404 resource_missing
--- request
GET /admin/api/invoices/in_1O9UOhA0ZUrt0vQJoum7M20Y
--- error_code: 404
--- json_path
error.type = "invalid_request_error"
error.code = "resource_missing"

=== a Stripe id is not looked up as an _id and vice versa
--- request
GET /admin/api/invoices/in_65490130ff600e06af2a9694
--- error_code: 404
--- json_path
error.code = "resource_missing"

=== query parameters are ignored on this route
--- request
GET /admin/api/invoices/{{full_id}}?page=0&limit=abc&foo=bar
--- error_code: 200
--- json_path
_id = "{{full_id}}"

=== HEAD: headers of the GET, no body
--- request
HEAD /admin/api/invoices/{{full_id}}
--- error_code: 200
--- response_headers
Content-Type: application/json; charset=utf-8
X-Cache: BYPASS
--- response_headers_like
ETag: ^"[^"]+"$
--- response_body

=== HEAD of an unknown invoice: 404, no body
--- request
HEAD /admin/api/invoices/65490130ff600e06af2a9699
--- error_code: 404
--- response_headers
Content-Type: application/json; charset=utf-8
--- response_body

=== 200 carries X-Cache: BYPASS and a strong ETag
--- request
GET /admin/api/invoices/{{full_id}}
--- error_code: 200
--- response_headers
X-Cache: BYPASS
--- response_headers_like
ETag: ^"[^"]+"$
