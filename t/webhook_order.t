# What a verified Stripe event does to the invoices: out-of-order
# deliveries never move a status back (draft -> open -> paid | void |
# uncollectible; uncollectible -> paid | void; paid and void are final),
# among equal statuses the newer event decides (event `created`, then the
# latest status transition) and an older one changes nothing, a null PDF
# never erases a known one, an unknown customer is linked when its team
# appears, duplicates (also 20 at once) change nothing, other event types
# are recorded and ignored, and a deleted draft stays deleted.  The fake
# Stripe runs beside nginx: the webhook never calls it.
#
# Each step: one signed delivery, its "result", then the row.  "unchanged"
# and "duplicate" must leave updated_at alone.

use strict;
use warnings;
use Test::More;
use Time::HiRes qw(time sleep);
use Invoices::Test;
use Invoices::Webhook;

my $W = new_whsec();
start_server(stripe => 1,
             server_config => webhook_location(secrets => ['file:' . secret_file($W)]));
default_secret($W);

my $TEAM = insert_team(name => 'Order team', stripe_customer_id => 'cus_OrderTeam0001');
my $T = int(time) - 86400;    # event times: a day ago, then later
my $C = $T - 600;             # the invoices' own created

# versions($status_independent_fields) -> a sub making versions of ONE
# invoice (same id, customer, created) with the given changes
sub invoice_versions {
    my (%base) = @_;
    my $id = new_id('in');
    return sub {
        my (%f) = @_;
        return stripe_invoice(id => $id, customer => 'cus_OrderTeam0001',
                              created => $C, %base, %f);
    };
}

# the row as the last step left it (psql is slow: one query a step)
my %LAST;
sub row_now { my ($id) = @_; return $LAST{$id} = invoice_row($id) }

# step($name, $type, $invoice, created => $event_created, result => $r,
#      row => { field => value }, gone => 1)
sub step {
    my ($name, $type, $inv, %o) = @_;
    my $ev = invoice_event($type, $inv, created => $o{created} // $T,
                           ($o{id} ? (id => $o{id}) : ()));
    my $before = exists $LAST{ $inv->{id} } ? $LAST{ $inv->{id} } : row_now($inv->{id});
    my $res = deliver_event($ev);
    my $after = row_now($inv->{id});
    subtest $name => sub {
        is($res->status, 200, 'status 200') or diag $res->describe;
        is(result_of($res), $o{result}, "result $o{result}");
        if ($o{gone}) {
            ok(!$after, 'no row') or diag explain $after;
            return;
        }
        ok($after, 'the row exists') or return;
        for my $k (sort keys %{ $o{row} || {} }) {
            is($after->{$k}, $o{row}{$k}, "row $k = " . ($o{row}{$k} // 'NULL'));
        }
        if ($o{result} =~ /^(unchanged|duplicate)$/ && $before) {
            is($after->{updated_at}, $before->{updated_at}, 'updated_at unchanged');
        }
        if ($o{result} eq 'updated' && $before) {
            isnt($after->{updated_at}, $before->{updated_at}, 'updated_at changed');
        }
    };
    return ($res, $ev);
}

#----------------------------------------------------------------------
# payment_failed after paid stays paid

{
    my $v = invoice_versions(total => 3300);
    my $pdf = $v->(status => 'open')->{invoice_pdf};
    my %open = (status => 'open', invoice_pdf => $pdf);
    step('paid/failed: finalized (open) is stored', 'invoice.finalized', $v->(%open),
         created => $T, result => 'inserted',
         row => { status => 'open', amount => 3300, currency => 'eur',
                  invoice_pdf => $pdf, created => $C, team_id => $TEAM->{id},
                  stripe_customer_id => 'cus_OrderTeam0001' });
    step('paid/failed: paid moves it to paid', 'invoice.paid',
         $v->(status => 'paid', invoice_pdf => $pdf), created => $T + 10,
         result => 'updated', row => { status => 'paid' });
    step('paid/failed: an older payment_failed (open) leaves it paid',
         'invoice.payment_failed', $v->(%open), created => $T + 5,
         result => 'unchanged', row => { status => 'paid' });
    step('paid/failed: even a NEWER payment_failed (open) leaves it paid',
         'invoice.payment_failed', $v->(%open, total => 9999), created => $T + 20,
         result => 'unchanged', row => { status => 'paid', amount => 3300 });
    step('paid/failed: a newer updated (open) leaves it paid',
         'invoice.updated', $v->(%open), created => $T + 30,
         result => 'unchanged', row => { status => 'paid' });
    step('paid/failed: a newer created (draft) leaves it paid',
         'invoice.created', $v->(status => 'draft', total => 0), created => $T + 40,
         result => 'unchanged', row => { status => 'paid', amount => 3300,
                                         invoice_pdf => $pdf });
}

#----------------------------------------------------------------------
# created (draft) after finalized stays open

{
    my $v = invoice_versions(total => 5000);
    my $open = $v->(status => 'open');
    step('created/finalized: finalized first (open)', 'invoice.finalized', $open,
         created => $T + 1, result => 'inserted', row => { status => 'open' });
    step('created/finalized: the late created (draft, no PDF, total 0) changes nothing',
         'invoice.created', $v->(status => 'draft', total => 0), created => $T,
         result => 'unchanged',
         row => { status => 'open', amount => 5000, invoice_pdf => $open->{invoice_pdf} });
    step('created/finalized: a newer updated (draft) does not move it back',
         'invoice.updated', $v->(status => 'draft', total => 7000), created => $T + 2,
         result => 'unchanged', row => { status => 'open', amount => 5000 });
}

# and in order: draft, then open
{
    my $v = invoice_versions(total => 1200);
    step('draft then open: created (draft) is stored with no PDF', 'invoice.created',
         $v->(status => 'draft'), created => $T, result => 'inserted',
         row => { status => 'draft', invoice_pdf => undef });
    my $open = $v->(status => 'open');
    step('draft then open: finalized moves it to open and brings the PDF',
         'invoice.finalized', $open, created => $T + 1, result => 'updated',
         row => { status => 'open', invoice_pdf => $open->{invoice_pdf} });
}

#----------------------------------------------------------------------
# updated (open) after voided stays void; paid after void stays void

{
    my $v = invoice_versions();
    my %open = (status => 'open');
    step('void: finalized (open)', 'invoice.finalized', $v->(%open), created => $T,
         result => 'inserted', row => { status => 'open' });
    step('void: voided', 'invoice.voided', $v->(status => 'void'), created => $T + 10,
         result => 'updated', row => { status => 'void' });
    step('void: an older updated (open) leaves it void', 'invoice.updated',
         $v->(%open), created => $T + 5, result => 'unchanged', row => { status => 'void' });
    step('void: a newer updated (open) leaves it void', 'invoice.updated',
         $v->(%open), created => $T + 20, result => 'unchanged', row => { status => 'void' });
    step('void: a newer paid leaves it void (void is final)', 'invoice.paid',
         $v->(status => 'paid'), created => $T + 30, result => 'unchanged',
         row => { status => 'void' });
    step('void: a newer marked_uncollectible leaves it void', 'invoice.marked_uncollectible',
         $v->(status => 'uncollectible'), created => $T + 40, result => 'unchanged',
         row => { status => 'void' });
}

#----------------------------------------------------------------------
# marked_uncollectible then paid -> paid (and uncollectible -> void)

{
    my $v = invoice_versions();
    step('uncollectible: finalized (open)', 'invoice.finalized', $v->(status => 'open'),
         created => $T, result => 'inserted', row => { status => 'open' });
    step('uncollectible: marked_uncollectible', 'invoice.marked_uncollectible',
         $v->(status => 'uncollectible'), created => $T + 10, result => 'updated',
         row => { status => 'uncollectible' });
    step('uncollectible: a newer payment_failed (open) does not move it back',
         'invoice.payment_failed', $v->(status => 'open'), created => $T + 15,
         result => 'unchanged', row => { status => 'uncollectible' });
    step('uncollectible: then paid -> paid', 'invoice.paid', $v->(status => 'paid'),
         created => $T + 20, result => 'updated', row => { status => 'paid' });
    step('uncollectible: a late marked_uncollectible leaves it paid',
         'invoice.marked_uncollectible', $v->(status => 'uncollectible'),
         created => $T + 25, result => 'unchanged', row => { status => 'paid' });
}
{
    my $v = invoice_versions();
    step('uncollectible/void: marked_uncollectible first', 'invoice.marked_uncollectible',
         $v->(status => 'uncollectible'), created => $T, result => 'inserted',
         row => { status => 'uncollectible' });
    step('uncollectible/void: then voided -> void', 'invoice.voided',
         $v->(status => 'void'), created => $T + 10, result => 'updated',
         row => { status => 'void' });
}
{
    my $v = invoice_versions();
    step('reversed: paid arrives first', 'invoice.paid', $v->(status => 'paid'),
         created => $T + 20, result => 'inserted', row => { status => 'paid' });
    step('reversed: then the older marked_uncollectible', 'invoice.marked_uncollectible',
         $v->(status => 'uncollectible'), created => $T + 10, result => 'unchanged',
         row => { status => 'paid' });
    step('reversed: then the older finalized', 'invoice.finalized',
         $v->(status => 'open'), created => $T, result => 'unchanged',
         row => { status => 'paid' });
}

#----------------------------------------------------------------------
# paid then voided stays paid; a forward status wins even from an older event

{
    my $v = invoice_versions();
    step('paid/void: paid', 'invoice.paid', $v->(status => 'paid'), created => $T,
         result => 'inserted', row => { status => 'paid' });
    step('paid/void: a newer voided leaves it paid (paid is final)', 'invoice.voided',
         $v->(status => 'void'), created => $T + 10, result => 'unchanged',
         row => { status => 'paid' });
}
{
    my $v = invoice_versions();
    step('forward: updated (open) with a late event time', 'invoice.updated',
         $v->(status => 'open'), created => $T + 50, result => 'inserted',
         row => { status => 'open' });
    step('forward: paid from an OLDER event still moves it forward', 'invoice.paid',
         $v->(status => 'paid'), created => $T + 10, result => 'updated',
         row => { status => 'paid' });
}

#----------------------------------------------------------------------
# ties: the same status; the newer event decides the other fields

{
    my $v = invoice_versions();
    my $pdf = sub { "https://pay.stripe.com/invoice/acct_1X/test_$_[0]/pdf?s=ap" };
    my %tr = (finalized_at => $C + 60);
    step('ties: open, 1000, pdf 1', 'invoice.updated',
         $v->(status => 'open', total => 1000, invoice_pdf => $pdf->(1), transitions => {%tr}),
         created => $T, result => 'inserted',
         row => { amount => 1000, invoice_pdf => $pdf->(1) });
    step('ties: a newer event (open, 2000, pdf 2) wins', 'invoice.updated',
         $v->(status => 'open', total => 2000, invoice_pdf => $pdf->(2), transitions => {%tr}),
         created => $T + 10, result => 'updated',
         row => { amount => 2000, invoice_pdf => $pdf->(2) });
    step('ties: an older event (open, 3000, pdf 3) changes nothing', 'invoice.updated',
         $v->(status => 'open', total => 3000, invoice_pdf => $pdf->(3), transitions => {%tr}),
         created => $T + 5, result => 'unchanged',
         row => { amount => 2000, invoice_pdf => $pdf->(2) });
    step('ties: the same event time, an earlier transition: changes nothing',
         'invoice.updated',
         $v->(status => 'open', total => 4000, invoice_pdf => $pdf->(4),
              transitions => { finalized_at => $C + 30 }),
         created => $T + 10, result => 'unchanged',
         row => { amount => 2000, invoice_pdf => $pdf->(2) });
    step('ties: the same event time, a later transition: wins', 'invoice.updated',
         $v->(status => 'open', total => 5000, invoice_pdf => $pdf->(5),
              transitions => { finalized_at => $C + 90 }),
         created => $T + 10, result => 'updated',
         row => { amount => 5000, invoice_pdf => $pdf->(5) });
    step('ties: a newer event with invoice_pdf null keeps the known PDF',
         'invoice.updated',
         $v->(status => 'open', total => 6000, invoice_pdf => undef,
              transitions => { finalized_at => $C + 90 }),
         created => $T + 20, result => 'updated',
         row => { amount => 6000, invoice_pdf => $pdf->(5) });
    step('ties: a newer event that says what the row says: unchanged',
         'invoice.updated',
         $v->(status => 'open', total => 6000, invoice_pdf => $pdf->(5),
              transitions => { finalized_at => $C + 90 }),
         created => $T + 30, result => 'unchanged',
         row => { amount => 6000, invoice_pdf => $pdf->(5) });
    step('ties: paid (pdf 6)', 'invoice.paid',
         $v->(status => 'paid', total => 6000, invoice_pdf => $pdf->(6)),
         created => $T + 40, result => 'updated',
         row => { status => 'paid', invoice_pdf => $pdf->(6) });
    step('ties: an older paid event (pdf 7) changes nothing', 'invoice.payment_succeeded',
         $v->(status => 'paid', total => 7000, invoice_pdf => $pdf->(7)),
         created => $T + 35, result => 'unchanged',
         row => { status => 'paid', amount => 6000, invoice_pdf => $pdf->(6) });
    step('ties: a newer paid event (pdf 8, eur -> usd) updates the paid invoice',
         'invoice.payment_succeeded',
         $v->(status => 'paid', total => 6000, invoice_pdf => $pdf->(8), currency => 'usd'),
         created => $T + 50, result => 'updated',
         row => { status => 'paid', invoice_pdf => $pdf->(8), currency => 'usd' });
}

#----------------------------------------------------------------------
# an unknown customer, linked later

{
    my $v = invoice_versions(customer => 'cus_LaterLinked01');
    my $inv = $v->(status => 'open', total => 4400);
    step('link: an invoice of a customer no team has', 'invoice.finalized', $inv,
         created => $T, result => 'inserted',
         row => { team_id => undef, stripe_customer_id => 'cus_LaterLinked01' });
    my $api = api_invoice($inv->{id});
    is_deeply($api && [exists $api->{user}, $api->{user}], [1, undef],
              'link: the API shows "user": null');
    my $before = row_now($inv->{id});
    my $team = insert_team(name => 'Linked later', stripe_customer_id => 'cus_LaterLinked01');
    my $after = row_now($inv->{id});
    is($after->{team_id}, $team->{id}, 'link: INSERT of a team with that customer fills the team at once');
    isnt($after->{updated_at}, $before->{updated_at}, '... and updated_at');
    $api = api_invoice($inv->{id}) // {};
    is_deeply($api->{user}, { _id => $team->{id}, name => 'Linked later' },
              'link: the API shows the user');
    is($api->{createdAt}, iso_ms($C), "link: createdAt is the invoice's created");
    is($api->{amount}, 4400, 'link: amount');
    is($api->{status}, 'open', 'link: status');
    is($api->{invoicePdf}, $inv->{invoice_pdf}, 'link: invoicePdf');

    step('link: a later event keeps the team', 'invoice.paid',
         $v->(status => 'paid', total => 4400), created => $T + 10, result => 'updated',
         row => { status => 'paid', team_id => $team->{id} });
}
{
    my $v = invoice_versions(customer => 'cus_LaterLinked02');
    my $inv = $v->(status => 'open');
    my $team = insert_team(name => 'Updated later');
    step('link by UPDATE: an invoice of an unlinked customer', 'invoice.finalized', $inv,
         created => $T, result => 'inserted', row => { team_id => undef });
    sql_do("UPDATE teams SET stripe_customer_id = 'cus_LaterLinked02' WHERE id = "
           . quote($team->{id}));
    is(row_now($inv->{id})->{team_id}, $team->{id},
       'link: UPDATE teams SET stripe_customer_id fills the team at once');
}
{
    my $v = invoice_versions(customer => { id => 'cus_OrderTeam0001', object => 'customer',
                                           name => 'Order team', email => undef });
    step('an expanded customer object is matched by its id', 'invoice.finalized',
         $v->(status => 'open'), created => $T, result => 'inserted',
         row => { team_id => $TEAM->{id}, stripe_customer_id => 'cus_OrderTeam0001' });
}

#----------------------------------------------------------------------
# duplicates

{
    my $v = invoice_versions();
    my $inv = $v->(status => 'open');
    my ($res, $ev) = step('dup: an event', 'invoice.finalized', $inv, created => $T,
                          result => 'inserted', row => { status => 'open' });
    my $body = event_body($ev);
    my $before = $LAST{ $inv->{id} };
    my $again = deliver($body);
    subtest 'dup: the same event again is a duplicate' => sub {
        is($again->status, 200, 'status 200');
        is(result_of($again), 'duplicate', 'result duplicate');
        is_deeply(row_now($inv->{id}), $before, 'the row is the same, updated_at too');
    };
    step('dup: the same event id with other content (paid) is still a duplicate',
         'invoice.paid', $v->(status => 'paid'), id => $ev->{id}, created => $T + 10,
         result => 'duplicate', row => { status => 'open' });
    is(sql_value('SELECT count(*) FROM webhook_events WHERE id = ' . quote($ev->{id})), 1,
       'dup: one webhook_events row');
}

{
    my $v = invoice_versions();
    my $ev = invoice_event('invoice.finalized', $v->(status => 'open'), created => $T);
    my $body = event_body($ev);
    my @res = finish_request(map { start_delivery($body) } 1 .. 20);
    my %n;
    $n{ result_of($_) }++ for @res;
    is_deeply(\%n, { inserted => 1, duplicate => 19 },
              '20 deliveries of one event at once: one inserted, 19 duplicates, all 200')
        or diag explain \%n;
    is(sql_value('SELECT count(*) FROM webhook_events WHERE id = ' . quote($ev->{id})), 1,
       '... one webhook_events row');
    is(sql_value('SELECT count(*) FROM invoices WHERE stripe_invoice_id = '
                 . quote($ev->{data}{object}{id})), 1, '... one invoice');
}

{
    my $v = invoice_versions();
    my @types = ((['invoice.created', 'draft']) x 5, (['invoice.finalized', 'open']) x 5,
                 (['invoice.payment_failed', 'open']) x 5, (['invoice.paid', 'paid']) x 5);
    my @bodies = map { event_body(invoice_event($_->[0], $v->(status => $_->[1]),
                                                created => $T + int rand 100)) } @types;
    my @res = finish_request(map { start_delivery($_) } @bodies);
    my %n;
    $n{ result_of($_) }++ for @res;
    is($n{inserted}, 1, '20 different events for one new invoice at once: exactly one inserted')
        or diag explain \%n;
    ok(!grep({ !/^(inserted|updated|unchanged)$/ } keys %n),
       '... the others updated or unchanged, all 200') or diag explain \%n;
    my $id = $v->()->{id};
    is(invoice_row($id)->{status}, 'paid', '... and the invoice ends paid');
}

#----------------------------------------------------------------------
# other event types: recorded, ignored

{
    my $before = db_fingerprint();
    my @other = (
        ['customer.created', { id => 'cus_Other0000001', object => 'customer' }],
        ['invoiceitem.created', { id => 'ii_1Other', object => 'invoiceitem',
                                  invoice => 'in_1OtherInvoice', amount => 5 }],
        ['payment_intent.succeeded', { id => 'pi_1Other', object => 'payment_intent' }],
        # an upcoming invoice has no id: it is no invoice yet
        ['invoice.upcoming', do { my $i = stripe_invoice(status => 'draft',
                                                        customer => 'cus_OrderTeam0001');
                                 delete $i->{id}; $i }],
    );
    my $first;
    for my $o (@other) {
        my $ev = invoice_event($o->[0], $o->[1], created => $T);
        $first //= $ev;
        my $res = deliver_event($ev);
        subtest "ignored: $o->[0]" => sub {
            is($res->status, 200, 'status 200') or diag $res->describe;
            is(result_of($res), 'ignored', 'result ignored');
            my $row = event_row($ev->{id});
            ok($row, 'recorded in webhook_events') or return;
            is($row->{type}, $o->[0], '... with its type');
            is($row->{created}, $T, "... and the event's created");
        };
    }
    is(db_fingerprint(), $before, 'ignored events change no invoice or team');
    is(result_of(deliver_event($first)), 'duplicate', 'an ignored event again: duplicate');
}

#----------------------------------------------------------------------
# invoice.deleted, and late events after it

{
    my $v = invoice_versions(total => 0);
    my $draft = $v->(status => 'draft');
    step('deleted: a draft', 'invoice.created', $draft, created => $T,
         result => 'inserted', row => { status => 'draft' });
    my ($res, $del) = step('deleted: invoice.deleted removes the row', 'invoice.deleted',
                           $draft, created => $T + 10, result => 'deleted', gone => 1);
    is(api_request(GET => "/admin/api/invoices/$draft->{id}")->status, 404,
       'deleted: the API says 404');
    step('deleted: a late (newer) updated does not bring it back', 'invoice.updated',
         $v->(status => 'draft', total => 100), created => $T + 20, result => 'deleted',
         gone => 1);
    step('deleted: nor does a late finalized', 'invoice.finalized',
         $v->(status => 'open'), created => $T + 30, result => 'deleted', gone => 1);
    step('deleted: nor an older created', 'invoice.created', $draft, created => $T - 10,
         result => 'deleted', gone => 1);
    is(result_of(deliver_event($del)), 'duplicate', 'deleted: the same deletion again: duplicate');
}
{
    my $v = invoice_versions(total => 0);
    step('deleted first: invoice.deleted of an invoice never seen', 'invoice.deleted',
         $v->(status => 'draft'), created => $T + 10, result => 'deleted', gone => 1);
    step('deleted first: its created arriving later is not stored', 'invoice.created',
         $v->(status => 'draft'), created => $T, result => 'deleted', gone => 1);
}

#----------------------------------------------------------------------
# the webhook called no Stripe

my @calls = fake_requests();
is(scalar @calls, 0, 'the fake Stripe got no request from the webhook')
    or diag join "\n", map { "$_->{method} $_->{path}" } @calls;

done_testing();
