# The invoice details (number, customer, customerEmail, customerName,
# currency, amountDue, amountPaid, amountRemaining, hostedInvoiceUrl,
# dueDate, paidAt, finalizedAt, voidedAt) on the list and the detail,
# taken from Stripe's invoice object wherever one arrives: the create's
# answer, a webhook event, the sync, which also fills in rows written
# before migration 0005.  Forward only as the status: an older view never
# overwrites them, and the facts Stripe never takes back (number, hosted
# page, the status times) survive a view without them.  A wrong-typed or
# hostile value in an event is a 400 that changes nothing.

use strict;
use warnings;
use Test::More;
use JSON::PP ();
use Invoices::Test;
use Invoices::Webhook;

my $W = new_whsec();
start_server(stripe => 1,
             server_config => webhook_location(
                 secrets => ['file:' . secret_file($W)]));
default_secret($W);

# nothing reaches nginx but what a test sends
fake_config({ webhooks => { enabled => JSON::PP::false } });

my @DETAILS = qw(number customer customerEmail customerName currency
                 amountDue amountPaid amountRemaining hostedInvoiceUrl
                 dueDate paidAt finalizedAt voidedAt);

# expected($stripe_invoice) -> the details as the API must show them
sub expected {
    my ($s) = @_;
    my $t = sub { defined $_[0] ? iso_ms($_[0]) : undef };
    my $tr = $s->{status_transitions} || {};
    return {
        number => $s->{number},
        customer => ref $s->{customer} ? $s->{customer}{id} : $s->{customer},
        customerEmail => $s->{customer_email},
        customerName => $s->{customer_name},
        currency => $s->{currency},
        amountDue => $s->{amount_due},
        amountPaid => $s->{amount_paid},
        amountRemaining => $s->{amount_remaining},
        hostedInvoiceUrl => $s->{hosted_invoice_url},
        dueDate => $t->($s->{due_date}),
        paidAt => $t->($tr->{paid_at}),
        finalizedAt => $t->($tr->{finalized_at}),
        voidedAt => $t->($tr->{voided_at}),
    };
}

# details($api_invoice) -> its details; every key must be there
sub details {
    my ($inv, $name) = @_;
    my @missing = grep { !exists $inv->{$_} } @DETAILS;
    is("@missing", '', "$name: every detail key present");
    return { map { $_ => $inv->{$_} } @DETAILS };
}

# shown_as($stripe_invoice, $name): the detail and the list show it
sub shown_as {
    my ($s, $name) = @_;
    my $want = expected($s);
    my $get = api_request(GET => "/admin/api/invoices/$s->{id}");
    is($get->status, 200, "$name: GET 200") or diag $get->describe;
    is_deeply(details($get->json_or_undef // {}, "$name: detail"), $want,
              "$name: the detail shows Stripe's values");
    my $list = api_request(GET => '/admin/api/invoices?limit=100');
    my $row = listed_invoice($list, $s->{id});
    ok($row, "$name: listed") or return;
    is_deeply(details($row, "$name: list"), $want,
              "$name: the list shows Stripe's values");
}

sub stripe_ok {
    my ($method, $path, $form) = @_;
    my ($st, $obj) = fake_stripe($method, $path, $form);
    is($st, 200, "Stripe: $method $path") or diag explain $obj;
    return $obj;
}

#----------------------------------------------------------------------
# the create: the finalized invoice Stripe answered, at once

my $C = linked_customer(payment_method => 'pm_card_visa',
                        name => 'Details Team');
fake_control(POST => '/_fake/customers',
             { id => $C->{customer}, email => 'billing@details.example',
               name => 'Details GmbH' });

my $res = create_invoice(admin => create_body($C->{customer}, 3300, 700),
                         'details-create-1');
is($res->status, 201, 'create: 201') or diag $res->describe;
my $created = $res->json_or_undef // {};
ok(defined $created->{number} && defined $created->{hosted_invoice_url},
   'create: Stripe gave the finalized invoice a number and a hosted page');
is($created->{customer_email}, 'billing@details.example',
   "create: Stripe printed the customer's email on it");
shown_as($created, 'after the create');

json_check(api_request(GET => "/admin/api/invoices/$created->{id}"), <<'CHECK', 'types');
number : string
customer ~ ^cus_
customerEmail = "billing@details.example"
customerName = "Details GmbH"
currency = "eur"
amountDue = 4000
amountPaid = 0
amountRemaining = 4000
hostedInvoiceUrl ~ ^https://
dueDate : null
paidAt : null
finalizedAt ~ ^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$
voidedAt : null
CHECK

#----------------------------------------------------------------------
# the sync: Stripe collected it meanwhile (no webhook arrived)

my $collected = fake_control(POST => '/_fake/advance');
ok(grep({ $_ eq $created->{id} } @{ $collected->{collected} || [] }),
   'the fake collected the invoice');
my $paid = stripe_ok(GET => "/v1/invoices/$created->{id}");
is($paid->{status}, 'paid', 'Stripe: paid');
$res = api_request(POST => '/admin/api/invoices/sync');
is($res->status, 200, 'sync: 200') or diag $res->describe;
shown_as($paid, 'after the sync');
is(api_invoice($created->{id})->{amountPaid}, 4000, 'amountPaid 4000');
is(api_invoice($created->{id})->{amountRemaining}, 0, 'amountRemaining 0');

#----------------------------------------------------------------------
# the backfill: a row from before migration 0005 has no details; the
# API shows them as null, and a sync fills them in

my $void = stripe_ok(POST => '/v1/invoices', {
    customer => $C->{customer}, currency => 'eur', auto_advance => 'false',
    collection_method => 'send_invoice', days_until_due => 30,
    pending_invoice_items_behavior => 'exclude' });
stripe_ok(POST => '/v1/invoiceitems', {
    customer => $C->{customer}, invoice => $void->{id}, amount => 1200,
    currency => 'eur', description => 'Backfill item' });
stripe_ok(POST => "/v1/invoices/$void->{id}/finalize");
$void = stripe_ok(POST => "/v1/invoices/$void->{id}/void");
ok(defined $void->{due_date} && defined $void->{status_transitions}{voided_at},
   'Stripe: a voided send_invoice invoice has a due date and a void time');

insert_invoice(stripe_invoice_id => $void->{id},
               stripe_customer_id => $C->{customer}, team_id => $C->{team}{id},
               status => 'void', amount => 1200,
               stripe_created_at => \"to_timestamp($void->{created})");
my $old = api_invoice($void->{id});
is_deeply(details($old, 'an old row'),
          { (map { $_ => undef } @DETAILS),
            customer => $C->{customer}, currency => 'eur' },
          'an old row: its details are null (customer and currency were kept before)');

$res = api_request(POST => '/admin/api/invoices/sync');
is($res->status, 200, 'backfill sync: 200') or diag $res->describe;
shown_as($void, 'after the backfill');
like(api_invoice($void->{id})->{dueDate}, qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/,
     'dueDate in the ISO form');

$res = api_request(POST => '/admin/api/invoices/sync');
is(($res->json_or_undef // {})->{updated}, 0,
   'a second sync changes nothing') or diag $res->describe;

#----------------------------------------------------------------------
# webhook events: the newest view decides, facts stay

my $cus = new_id('cus');
my $t0 = time - 3600;
my $inv = stripe_invoice(status => 'open', customer => $cus, created => $t0,
                         total => 5000, customer_email => 'a@x.example',
                         customer_name => 'First name', due_date => $t0 + 86400,
                         number => 'WEB-0001');
is(result_of(deliver_event(invoice_event('invoice.finalized', $inv,
                                         created => $t0 + 60))),
   'inserted', 'webhook: inserted');
shown_as($inv, 'webhook insert');

# a newer view of the same status: new email and name, no number (never
# taken back)
my $newer = { %$inv, customer_email => 'b@x.example',
              customer_name => 'Second name', number => undef,
              hosted_invoice_url => undef };
is(result_of(deliver_event(invoice_event('invoice.updated', $newer,
                                         created => $t0 + 120))),
   'updated', 'webhook: a newer view updates');
my $now = api_invoice($inv->{id});
is($now->{customerEmail}, 'b@x.example', 'newer view: the email follows');
is($now->{customerName}, 'Second name', 'newer view: the name follows');
is($now->{number}, 'WEB-0001', 'newer view without a number keeps it');
is($now->{hostedInvoiceUrl}, $inv->{hosted_invoice_url},
   'newer view without a hosted page keeps it');

# an older view changes nothing
my $older = { %$inv, customer_email => 'old@x.example', amount_due => 1 };
is(result_of(deliver_event(invoice_event('invoice.updated', $older,
                                         created => $t0 + 90))),
   'unchanged', 'webhook: an older view is unchanged');
is(api_invoice($inv->{id})->{customerEmail}, 'b@x.example',
   'older view: the email stays');

# paid: the amounts and paidAt move
my $pd = stripe_invoice(id => $inv->{id}, status => 'paid', customer => $cus,
                        created => $t0, total => 5000,
                        customer_email => 'b@x.example',
                        customer_name => 'Second name', number => 'WEB-0001',
                        due_date => $t0 + 86400);
is(result_of(deliver_event(invoice_event('invoice.paid', $pd,
                                         created => $t0 + 180))),
   'updated', 'webhook: paid');
shown_as($pd, 'webhook paid');

# a late finalized (open, no paidAt) does not take them back
is(result_of(deliver_event(invoice_event('invoice.finalized', $inv,
                                         created => $t0 + 200))),
   'unchanged', 'webhook: a late open view is unchanged');
shown_as($pd, 'after the late event');

# fields Stripe may leave out: null, not an error
my $bare = stripe_invoice(status => 'open', customer => $cus,
                          delete => [qw(number customer_email customer_name
                                        amount_due amount_paid amount_remaining
                                        hosted_invoice_url due_date)]);
is(result_of(deliver_event(invoice_event('invoice.finalized', $bare))),
   'inserted', 'webhook: an invoice without the details is stored');
is_deeply(details(api_invoice($bare->{id}), 'bare'),
          { (map { $_ => undef } @DETAILS), customer => $cus,
            currency => 'eur',
            finalizedAt => iso_ms($bare->{status_transitions}{finalized_at}) },
          'bare: the missing details are null');

#----------------------------------------------------------------------
# wrong-typed and hostile values: 400, nothing stored

my @bad = (
    [number => 42],
    [number => 'N' x 256],
    [number => "WEB\x{0}0001"],
    [customer_email => { a => 1 }],
    [customer_name => ['x']],
    [customer_name => 'n' x 1025],
    [amount_due => '3300'],
    [amount_paid => 1.5],
    [amount_remaining => JSON::PP::true],
    [hosted_invoice_url => 'http://invoice.stripe.com/i/x'],
    [hosted_invoice_url => 'javascript:alert(1)'],
    [hosted_invoice_url => 'https://' . ('h' x 2041)],
    [due_date => 253402300800],          # 10000-01-01
    [due_date => -1],
    [due_date => '1700000000'],
    [status_transitions => { finalized_at => 1700000000, paid_at => '1700000000',
                             voided_at => undef }],
    [status_transitions => { finalized_at => 1700000000, paid_at => undef,
                             voided_at => 253402300800 }],
);
for my $b (@bad) {
    my ($key, $value) = @$b;
    my $h = stripe_invoice(status => 'open', customer => $cus, $key => $value);
    my $before = db_state();
    my $r = deliver_event(invoice_event('invoice.finalized', $h));
    my $shown = JSON::PP->new->allow_nonref->canonical->encode($value);
    $shown = substr($shown, 0, 40) . '...' if length $shown > 43;
    is($r->status, 400, "$key = $shown: 400") or diag $r->describe;
    is(($r->json_or_undef // {})->{error}{code}, 'event_invalid',
       "$key = $shown: event_invalid");
    is(db_state(), $before, "$key = $shown: nothing stored");
}

# the longest accepted values are stored whole, and UTF-8 is kept
my $long = stripe_invoice(status => 'open', customer => $cus,
                          number => 'N' x 255,
                          customer_name => "\x{e9}" x 512,
                          customer_email => '<img src=x onerror=alert(1)>@x');
is(result_of(deliver_event(invoice_event('invoice.finalized', $long))),
   'inserted', 'the longest values: stored');
shown_as($long, 'the longest values');

done_testing();
