# POST /admin/api/invoices: what an interrupted create leaves at Stripe,
# and what its retry does there.
#
# 1. Only a finished create collects.  The draft is created with
#    auto_advance=false, so Stripe never finalizes (and charges) it by
#    itself while the admin holds an error; the finalize call turns
#    auto_advance on.  The fake finalizes an auto_advance=true draft
#    auto_finalize_delay_ms after its creation, as Stripe does after about
#    an hour: here 300 ms.
# 2. A retry finds the lines already attached by their own identity
#    (metadata[ngx_invoices_line]), not by the optional lines.total_count:
#    the fake leaves total_count out, and forgets its Idempotency-Keys
#    (Stripe forgets them after 24 hours), so a line sent twice would be
#    there twice.
#
# /admin/api/invoices    the harness's settings (timeout 2s, 2 retries)
# /r0/api/invoices       no retries: one fault, one failed create

use strict;
use warnings;
use Test::More;
use JSON::PP ();
use Time::HiRes qw(time sleep);
use Invoices::Test;

start_server(
    stripe => 1,
    server_config => <<"CONF");
        location /r0/api/invoices {
            invoices_admin;
            invoices_stripe_max_retries 0;
        }
CONF

my $DELAY_MS = 300;
my $PAST = 4 * $DELAY_MS / 1000 * time_factor();    # seconds: well past it



sub stripe_invoice_now { scalar fake_stripe(GET => "/v1/invoices/$_[0]") }

# every line of a Stripe invoice, through its own paginated list
sub stripe_lines {
    my ($id) = @_;
    my (@all, $after);
    for (1 .. 20) {
        my $l = fake_stripe(GET => "/v1/invoices/$id/lines?limit=10"
                                   . ($after ? "&starting_after=$after" : ''));
        push @all, @{ $l->{data} || [] };
        last unless $l->{has_more} && @{ $l->{data} || [] };
        $after = $l->{data}[-1]{id};
    }
    return @all;
}

# line index (our metadata) => how many lines carry it
sub line_census {
    my %n;
    $n{ ($_->{metadata} // {})->{ngx_invoices_line} // 'none' }++ for @_;
    return \%n;
}

sub error_invoice_id {
    my ($res) = @_;
    return ((($res->json_or_undef // {})->{error} // {})->{invoiceId}) // '';
}

sub advance { fake_control(POST => '/_fake/advance', {}) }

#----------------------------------------------------------------------
# 1. auto_advance

fake_reset();
fake_config({ auto_finalize_delay_ms => $DELAY_MS, collect_delay_ms => 0 });
my $C = linked_customer(payment_method => 'pm_card_visa');

# the fake does model it: a draft made with Stripe's default finalizes
# by itself (if this fails, the checks below prove nothing)
my (undef, $plain) = fake_stripe(POST => '/v1/invoices',
                                 { customer => $C->{customer} });
ok($plain->{auto_advance}, "the fake: a draft has Stripe's default auto_advance=true");
sleep $PAST;
advance();
isnt(stripe_invoice_now($plain->{id})->{status}, 'draft',
   'the fake: that draft was finalized by itself after the delay');

# finalize fails: the draft is left behind
fake_control(DELETE => '/_fake/requests');
fake_config({ faults => [{ path => 'POST /v1/invoices/in_\w+/finalize', status => 500 }] });
my $body = create_body($C->{customer}, 1500, 2500);
my $res = create_invoice(r0 => $body, 'safety-finalize-fails');
is($res->status, 502, 'finalize fails: 502') or diag $res->describe;
my $left = error_invoice_id($res);
like($left, qr/^in_\w+$/, 'the error names the draft left at Stripe');
fake_config({ faults => [] });

my ($draft_post) = grep { !$_->{replayed} } fake_requests(qr{^POST /v1/invoices$});
is(($draft_post->{params} // {})->{auto_advance}, 'false',
   'the draft was asked for with auto_advance=false');
my $at = stripe_invoice_now($left);
is($at->{status}, 'draft', 'read back from Stripe: a draft');
ok(JSON::PP::is_bool($at->{auto_advance}) && !$at->{auto_advance},
   'read back from Stripe: auto_advance false');

sleep $PAST;
my $adv = advance();
ok(!grep({ $_ eq $left } @{ $adv->{finalized} || [] }),
   'Stripe finalized nothing of ours by itself');
$at = stripe_invoice_now($left);
is($at->{status}, 'draft', 'past the automatic finalization: still a draft');
is($at->{amount_paid}, 0, '... nothing charged');
is(sql_value('SELECT status FROM invoices WHERE stripe_invoice_id = ' . quote($left)),
   'draft', '... and our row says draft');

# the retry finishes it, and only then does Stripe collect
my $retry = create_invoice(r0 => $body, 'safety-finalize-fails');
is($retry->status, 201, 'the retry with the same key: 201') or diag $retry->describe;
is(($retry->json_or_undef // {})->{id}, $left, '... the same invoice');
my @fin = fake_requests(qr{^POST /v1/invoices/\Q$left\E/finalize$});
is(($fin[-1]{params} // {})->{auto_advance}, 'true', '... finalized with auto_advance=true');
ok(wait_until(sub { advance(); stripe_invoice_now($left)->{status} eq 'paid' },
              5 * time_factor()), '... and then Stripe collects it: paid');

# an uninterrupted create: finalized, collecting, paid
fake_reset();
fake_config({ auto_finalize_delay_ms => $DELAY_MS, collect_delay_ms => 0 });
$res = create_invoice(admin => create_body($C->{customer}, 4200));
is($res->status, 201, 'a normal create: 201') or diag $res->describe;
my $got = $res->json_or_undef // {};
is($got->{status}, 'open', '... finalized (open)');
ok($got->{auto_advance}, '... collecting (auto_advance true)');
ok(wait_until(sub { advance(); stripe_invoice_now($got->{id} // 'x')->{status} eq 'paid' },
              5 * time_factor()), '... paid by Stripe');

#----------------------------------------------------------------------
# 2. lines found by identity, with no total_count and no memory of keys

fake_reset();
fake_config({ omit_total_count => JSON::PP::true() });
my $D = linked_customer(payment_method => 'pm_card_visa');
my @amounts = (1100, 2200, 3300, 4400);
$body = create_body($D->{customer}, @amounts);
my $KEY = 'safety-lines';

# each attempt: one more line made at Stripe, its answer lost
my $id = '';
for my $n (1, 2) {
    fake_config({ faults => [{ path => 'POST /v1/invoiceitems', status => 500,
                               when => 'after', count => 1 }] });
    $res = create_invoice(r0 => $body, $KEY);
    is($res->status, 502, "attempt $n: line " . ($n - 1) . "'s answer lost: 502")
        or diag $res->describe;
    $id ||= error_invoice_id($res);
    is(error_invoice_id($res), $id, "attempt $n: the same draft");
    is(scalar(stripe_lines($id)), $n, "attempt $n: $n line(s) at Stripe");
}
fake_config({ faults => [] });
ok(!exists stripe_invoice_now($id)->{lines}{total_count},
   "Stripe's invoice carries no lines.total_count");
my $forgot = fake_control(POST => '/_fake/forget-idempotency', {});
cmp_ok($forgot->{forgotten}, '>=', 3, "Stripe forgot its keys ($forgot->{forgotten})");

fake_control(DELETE => '/_fake/requests');
$retry = create_invoice(r0 => $body, $KEY);
is($retry->status, 201, 'the retry: 201') or diag $retry->describe;
is(($retry->json_or_undef // {})->{id}, $id, '... the same invoice');
my @lines = stripe_lines($id);
is(scalar @lines, scalar @amounts, 'at Stripe: ' . scalar(@lines) . ' lines for '
   . scalar(@amounts) . ' items');
is_deeply(line_census(@lines), { map { $_ => 1 } 0 .. $#amounts },
          '... each item exactly once, none missing');
is(stripe_invoice_now($id)->{total}, 11000, '... total = the sum of the items');
is(scalar(fake_requests(qr{^POST /v1/invoiceitems$})), 2,
   '... the retry sent only the two lines Stripe lacked');
ok(scalar(fake_requests(qr{^GET /v1/invoices/\Q$id\E/lines$})),
   "... after reading the draft's lines");
is(sql_value('SELECT amount FROM invoices WHERE stripe_invoice_id = ' . quote($id)),
   11000, 'our row has the total');

# a line added to the draft by someone else is not ours to count
fake_reset();
fake_config({ omit_total_count => JSON::PP::true() });
my $E = linked_customer(payment_method => 'pm_card_visa');
$body = create_body($E->{customer}, 500, 600);
fake_config({ faults => [{ path => 'POST /v1/invoiceitems', status => 500,
                           when => 'after', count => 1 }] });
$res = create_invoice(r0 => $body, 'safety-foreign');
my $fid = error_invoice_id($res);
like($fid, qr/^in_\w+$/, 'a draft with one line left');
fake_config({ faults => [] });
my ($hs, $hand) = fake_stripe(POST => '/v1/invoiceitems',
                              { customer => $E->{customer}, invoice => $fid, amount => 99,
                                description => 'added by hand' });
is($hs, 200, 'someone adds a line to the draft by hand') or diag explain $hand;
fake_control(POST => '/_fake/forget-idempotency', {});
$retry = create_invoice(r0 => $body, 'safety-foreign');
is($retry->status, 201, 'a line added by hand meanwhile: the retry still completes')
    or diag $retry->describe;
is_deeply(line_census(stripe_lines($fid)), { 0 => 1, 1 => 1, none => 1 },
          '... our two items once each, the foreign line left alone');

done_testing();
