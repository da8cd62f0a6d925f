# End to end with the fake Stripe: invoices created through
# POST /admin/api/invoices, collected by Stripe (POST /_fake/advance), and
# the fake's signed webhook deliveries bringing the outcome to the list:
# pm_card_visa ends "paid", pm_card_chargeDeclined stays "open".  Then
# the same with every delivery duplicated and each burst reversed, and
# changes made in Stripe directly (mark uncollectible, pay, void).  The
# webhook itself makes no Stripe call.
#
# The harness starts the fake without a webhook URL; this file points it
# at this nginx with POST /_fake/config {"webhooks": {"url", "secret"}},
# which is what --webhook-url and --webhook-secret set at start.

use strict;
use warnings;
use Test::More;
use JSON::PP ();
use Time::HiRes qw(time sleep);
use Invoices::Test;
use Invoices::Webhook;

my $W = new_whsec();
start_server(stripe => 1,
             server_config => webhook_location(secrets => ['file:' . secret_file($W)]));
default_secret($W);
fake_config({ webhooks => { url => 'http://127.0.0.1:' . server_port() . '/stripe/webhook',
                            secret => $W } });

my $J = JSON::PP->new->utf8->canonical;
my $visa = linked_customer(name => 'Visa team');
my $decl = linked_customer(name => 'Declined team');

sub create {
    my ($cust, $pm, $amount) = @_;
    my $res = api_request(POST => '/admin/api/invoices', ['Content-Type' => 'application/json'],
        $J->encode({ items => [{ name => 'All resources', amount => $amount }],
                     customer => $cust->{customer}, paymentMethod => $pm }));
    is($res->status, 201, "create for $cust->{team}{name} with $pm: 201")
        or diag $res->describe;
    return $res->json_or_undef // {};
}

# the list, by invoiceId
sub listed {
    my $res = api_request(GET => '/admin/api/invoices?limit=100');
    return {} unless $res->status == 200;
    return { map { $_->{invoiceId} => $_ } @{ $res->json->{invoices} } };
}

sub deliveries { return @{ fake_control(GET => '/_fake/webhooks') } }

# wait until the fake has delivered everything it tried (no attempt
# failing), and at least $min deliveries of $type
sub settle {
    my (%want) = @_;
    return wait_until(sub {
        my @d = deliveries();
        for my $t (keys %want) {
            return 0 if grep({ $_->{type} eq $t && ($_->{status} // 0) == 200 } @d) < $want{$t};
        }
        return \@d;
    }, 10);
}

#----------------------------------------------------------------------
# round 1: in order, once each

my $paid = create($visa, 'pm_card_visa', 3300);
my $open = create($decl, 'pm_card_chargeDeclined', 4100);
is($paid->{status}, 'open', 'the created invoices are open (finalized)');
settle('invoice.finalized' => 2) or fail('the finalized events were delivered');

my $l = listed();
is($l->{ $paid->{id} }{status}, 'open', 'before the collection: listed open');

fake_control(DELETE => '/_fake/requests');
my $adv = fake_control(POST => '/_fake/advance');
is_deeply([sort @{ $adv->{collected} }], [sort $paid->{id}, $open->{id}],
          'Stripe collects both');

my $d = settle('invoice.paid' => 1, 'invoice.payment_failed' => 1);
ok($d, 'paid and payment_failed were delivered with 200, within 10 s');
$l = wait_until(sub { my $x = listed(); ($x->{ $paid->{id} }{status} // '') eq 'paid' && $x }, 10)
    // listed();
subtest 'pm_card_visa: the list shows paid' => sub {
    my $r = $l->{ $paid->{id} } or return fail('listed');
    is($r->{status}, 'paid', 'status paid');
    is($r->{amount}, 3300, 'amount');
    is($r->{invoicePdf}, $paid->{invoice_pdf}, 'invoicePdf');
    is_deeply($r->{user}, { _id => $visa->{team}{id}, name => 'Visa team' }, 'user');
    is($r->{createdAt}, iso_ms($paid->{created}), "createdAt is Stripe's created");
};
subtest 'pm_card_chargeDeclined: the list shows open' => sub {
    my $r = $l->{ $open->{id} } or return fail('listed');
    is($r->{status}, 'open', 'status open');
    is($r->{amount}, 4100, 'amount');
    is_deeply($r->{user}, { _id => $decl->{team}{id}, name => 'Declined team' }, 'user');
};
my @bad = grep { ($_->{status} // 0) != 200 } deliveries();
is(scalar @bad, 0, 'every delivery so far was answered 200 (the signatures verify)')
    or diag explain \@bad;
my @calls = fake_requests();
is(scalar @calls, 0, 'the webhook made no Stripe call while the events arrived')
    or diag join "\n", map { "$_->{method} $_->{path}" } @calls;

my %ids = map { $_->{event_id} => 1 } deliveries();
is(sql_value('SELECT count(*) FROM webhook_events'), scalar keys %ids,
   'one webhook_events row per delivered event');

#----------------------------------------------------------------------
# round 2: every delivery twice, each burst in reverse order

fake_config({ webhooks => { duplicate => 1, reverse_order => JSON::PP::true } });
fake_control(DELETE => '/_fake/webhooks');
my $paid2 = create($visa, 'pm_card_visa', 1500);
settle('invoice.finalized' => 2) or fail('round 2: the finalized event was delivered twice');
fake_control(DELETE => '/_fake/requests');
fake_control(POST => '/_fake/advance');
settle('invoice.paid' => 2, 'invoice.payment_succeeded' => 2)
    or fail('round 2: the payment events were delivered');
$l = wait_until(sub { my $x = listed(); ($x->{ $paid2->{id} }{status} // '') eq 'paid' && $x }, 10)
    // listed();
is($l->{ $paid2->{id} }{status}, 'paid', 'duplicated, reversed deliveries: the list shows paid');
is($l->{ $paid2->{id} }{amount}, 1500, '... with its amount');
my @d2 = deliveries();
@bad = grep { ($_->{status} // 0) != 200 } @d2;
is(scalar @bad, 0, 'round 2: every delivery answered 200') or diag explain \@bad;
my %n;
$n{ $_->{event_id} }++ for @d2;
is(scalar(grep { $_ != 2 } values %n), 0, 'round 2: each event was delivered twice');
my $recorded = sql_value('SELECT count(*) FROM webhook_events WHERE id IN ('
                         . join(',', map { quote($_) } keys %n) . ')');
is($recorded, scalar keys %n, 'round 2: each recorded once');
@calls = fake_requests();
is(scalar @calls, 0, 'round 2: no Stripe call from the webhook');

#----------------------------------------------------------------------
# changes made in Stripe itself reach the list through the webhook

fake_config({ webhooks => { duplicate => 0, reverse_order => JSON::PP::false } });
my ($st) = fake_stripe(POST => "/v1/invoices/$open->{id}/mark_uncollectible");
is($st, 200, 'Stripe: the declined invoice is marked uncollectible');
$l = wait_until(sub { my $x = listed(); ($x->{ $open->{id} }{status} // '') eq 'uncollectible' && $x }, 10);
ok($l, 'the list shows uncollectible');
($st) = fake_stripe(POST => "/v1/invoices/$open->{id}/pay", { payment_method => 'pm_card_visa' });
is($st, 200, 'Stripe: then paid with another card');
$l = wait_until(sub { my $x = listed(); ($x->{ $open->{id} }{status} // '') eq 'paid' && $x }, 10);
ok($l, 'the list shows paid (uncollectible -> paid)');

my $void = create($decl, 'pm_card_chargeDeclined', 900);
($st) = fake_stripe(POST => "/v1/invoices/$void->{id}/void");
is($st, 200, 'Stripe: an open invoice is voided');
$l = wait_until(sub { my $x = listed(); ($x->{ $void->{id} }{status} // '') eq 'void' && $x }, 10);
ok($l, 'the list shows void');
fake_control(POST => '/_fake/advance');    # nothing to collect: it is void
sleep 0.5;
is(listed()->{ $void->{id} }{status}, 'void', '... and it stays void');

@bad = grep { ($_->{status} // 0) != 200 } deliveries();
is(scalar @bad, 0, 'every delivery of the file answered 200') or diag explain \@bad;

done_testing();
