# POST /admin/api/invoices/sync: after a webhook outage (the fake's
# webhooks off, invoices made and changed directly in the fake Stripe) a
# sync brings the list to Stripe's truth (status, amount, PDF, team,
# createdAt); a second sync changes nothing; later changes are counted as
# updated; it pages (100 a page) through 230+ invoices; since= and
# starting_after= narrow it; it never moves an invoice back (forward only,
# as the webhook); Stripe down is a 502.  The route: POST only, Api-Key,
# parameters checked before Stripe is called.

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

# a webhook outage: Stripe sends nothing
fake_config({ webhooks => { enabled => JSON::PP::false } });

my $team = linked_customer(name => 'Sync team');
my $lone = linked_customer(team => 0);    # in Stripe, no team here

# stripe_ok($method, $path, [\%form]) -> the object; fails the test unless 200
sub stripe_ok {
    my ($method, $path, $form) = @_;
    my ($st, $obj) = fake_stripe($method, $path, $form);
    is($st, 200, "Stripe: $method $path") or diag explain $obj;
    return $obj;
}

# an invoice made in Stripe directly: $how is draft, open, paid, void,
# uncollectible; $amount 0 makes no line (Stripe then pays on finalize)
sub stripe_invoice_made {
    my ($cust, $how, $amount) = @_;
    my ($st, $inv) = fake_stripe(POST => '/v1/invoices', {
        customer => $cust->{customer}, currency => 'eur', auto_advance => 'false',
        collection_method => 'charge_automatically',
        pending_invoice_items_behavior => 'exclude' });
    die "fake Stripe: POST /v1/invoices: $st" unless $st == 200;
    my $id = $inv->{id};
    if ($amount) {
        ($st) = fake_stripe(POST => '/v1/invoiceitems', {
            customer => $cust->{customer}, invoice => $id, amount => $amount,
            currency => 'eur', description => 'Sync item' });
        die "fake Stripe: POST /v1/invoiceitems: $st" unless $st == 200;
    }
    return $id if $how eq 'draft';
    ($st) = fake_stripe(POST => "/v1/invoices/$id/finalize");
    die "fake Stripe: finalize: $st" unless $st == 200;
    my %next = (paid => ["/v1/invoices/$id/pay", { payment_method => 'pm_card_visa' }],
                void => ["/v1/invoices/$id/void"],
                uncollectible => ["/v1/invoices/$id/mark_uncollectible"]);
    if (my $n = $next{$how}) {
        ($st) = fake_stripe(POST => @$n);
        die "fake Stripe: $n->[0]: $st" unless $st == 200;
    }
    return $id;
}

# Stripe's truth: every invoice, newest first
sub stripe_truth {
    my @all;
    my $after;
    while (1) {
        my ($st, $page) = fake_stripe(GET => '/v1/invoices?limit=100'
                                      . ($after ? "&starting_after=$after" : ''));
        die "fake Stripe: list: $st" unless $st == 200;
        push @all, @{ $page->{data} };
        last unless $page->{has_more};
        $after = $all[-1]{id};
    }
    return @all;
}

sub sync {
    my ($query) = @_;
    return api_request(POST => '/admin/api/invoices/sync' . ($query // ''));
}

# sync_is($res, \%counts, $name): 200 and exactly these counts
sub sync_is {
    my ($res, $want, $name) = @_;
    subtest $name => sub {
        is($res->status, 200, 'status 200') or return diag $res->describe;
        my %w = (inserted => 0, updated => 0, unchanged => 0, deleted => 0,
                 skipped => 0, hasMore => JSON::PP::false, next => undef, %$want);
        my $got = $res->json_or_undef or return fail('JSON');
        is_deeply([sort keys %$got],
                  [sort qw(seen inserted updated unchanged deleted skipped hasMore next)],
                  'the keys') or diag $res->body;
        for my $k (sort keys %w) {
            if (ref $w{$k} || !defined $w{$k}) {
                is_deeply($got->{$k}, $w{$k}, $k);
            } else {
                is($got->{$k}, $w{$k}, "$k = $w{$k}");
            }
        }
    };
}

# the list equals Stripe's truth, invoice by invoice
sub list_matches_truth {
    my ($name, @truth) = @_;
    my $res = api_request(GET => '/admin/api/invoices?limit=100');
    my %listed = map { $_->{invoiceId} => $_ } @{ ($res->json_or_undef // {})->{invoices} || [] };
    subtest $name => sub {
        is(scalar keys %listed, scalar @truth, 'as many invoices as in Stripe');
        for my $s (@truth) {
            my $r = $listed{ $s->{id} };
            ok($r, "$s->{id} listed") or next;
            my $user = $s->{customer} eq $team->{customer}
                ? { _id => $team->{team}{id}, name => 'Sync team' } : undef;
            is_deeply({ status => $r->{status}, amount => $r->{amount},
                        invoicePdf => $r->{invoicePdf}, user => $r->{user},
                        createdAt => $r->{createdAt} },
                      { status => $s->{status}, amount => $s->{total},
                        invoicePdf => $s->{invoice_pdf}, user => $user,
                        createdAt => iso_ms($s->{created}) },
                      "$s->{id} ($s->{status}) as in Stripe");
        }
    };
}

#----------------------------------------------------------------------
# the route

block_vars(in_id => 'in_1' . ('A' x 23), long => 'x' x 100, short => 'x' x 57);
run_blocks(default_headers => 'Api-Key: ' . API_KEY);

#----------------------------------------------------------------------
# a webhook outage, then a sync

my %made = (
    draft         => stripe_invoice_made($team, 'draft', 1000),
    open          => stripe_invoice_made($team, 'open', 2000),
    paid          => stripe_invoice_made($team, 'paid', 3000),
    void          => stripe_invoice_made($team, 'void', 4000),
    uncollectible => stripe_invoice_made($lone, 'uncollectible', 5000),
    zero          => stripe_invoice_made($team, 'open', 0),
    open_lone     => stripe_invoice_made($lone, 'open', 6000),
);
my $gone = stripe_invoice_made($team, 'draft', 700);
stripe_ok(DELETE => "/v1/invoices/$gone");
my @truth = stripe_truth();
is(scalar @truth, 7, 'Stripe holds 7 invoices');
is((grep { $_->{id} eq $made{zero} } @truth)[0]{status}, 'paid',
   '(a finalized invoice of 0 is paid at once)');
is(scalar @{ fake_control(GET => '/_fake/webhooks') }, 0,
   'the fake delivered no webhook (the outage)');
is(sql_value('SELECT count(*) FROM invoices'), 0, 'nothing in the database yet');

fake_control(DELETE => '/_fake/requests');
sync_is(sync(), { seen => 7, inserted => 7 }, 'sync after the outage: 7 seen, 7 inserted');
my @calls = fake_requests();
is_deeply([map { "$_->{method} $_->{path}" } @calls], ['GET /v1/invoices'],
          'the sync read one page of Stripe\'s invoices and nothing else');
is($calls[0]{params}{limit}, 100, '... 100 a page');
list_matches_truth('after the sync the list is Stripe\'s truth', @truth);
ok(!sql_value('SELECT count(*) FROM invoices WHERE stripe_invoice_id = ' . quote($gone)),
   'the deleted draft is not there');

my $before = db_state();
sync_is(sync(), { seen => 7, unchanged => 7 }, 'sync again: all unchanged');
is(db_state(), $before, '... and the database is the same (updated_at too)');

# changes in Stripe during a further outage
stripe_ok(POST => "/v1/invoices/$made{open}/pay", { payment_method => 'pm_card_visa' });
stripe_ok(POST => "/v1/invoices/$made{open_lone}/void");
stripe_ok(POST => "/v1/invoices/$made{uncollectible}/pay", { payment_method => 'pm_card_visa' });
stripe_ok(POST => "/v1/invoices/$made{draft}/finalize");
@truth = stripe_truth();
my %updated_at = map { $_->{stripe_invoice_id} => $_->{updated_at} } values %{ invoice_rows() };
sync_is(sync(), { seen => 7, updated => 4, unchanged => 3 },
        'Stripe changed 4 invoices: 4 updated, 3 unchanged');
list_matches_truth('the list follows (open -> paid, open -> void, uncollectible -> paid, '
                   . 'draft -> open with its PDF)', @truth);
my $rows = invoice_rows();
is(scalar(grep { $rows->{$_}{updated_at} ne $updated_at{$_} } keys %updated_at), 4,
   'updated_at moved for those 4 only');

# a team linked after the sync gets its invoices at once
my $late = insert_team(name => 'Lone team', stripe_customer_id => $lone->{customer});
is(sql_value('SELECT count(*) FROM invoices WHERE team_id = ' . quote($late->{id})), 2,
   'linking the lone customer to a team claims its 2 synced invoices');

#----------------------------------------------------------------------
# forward only: a sync never moves an invoice back

{
    my $id = stripe_invoice_made($team, 'draft', 800);
    # the webhook says it is open (the list page below was read before
    # that): the row is open
    my $inv = stripe_invoice(id => $id, customer => $team->{customer}, status => 'open',
                             total => 800, created => int(time) - 5);
    is(result_of(deliver_event(invoice_event('invoice.finalized', $inv))), 'inserted',
       'forward only: the webhook stored the invoice as open');
    my $row = invoice_row($id);
    sync_is(sync(), { seen => 8, unchanged => 8 },
            'forward only: a sync that sees it as a draft: unchanged');
    is_deeply(invoice_row($id), $row, '... the row is still open, untouched');
    stripe_ok(DELETE => "/v1/invoices/$id");    # tidy: Stripe's truth again
    sql_do('DELETE FROM invoices WHERE stripe_invoice_id = ' . quote($id));
}

# a draft deleted (invoice.deleted) while Stripe's list still shows it
{
    my $id = stripe_invoice_made($team, 'draft', 900);
    my $inv = stripe_invoice(id => $id, customer => $team->{customer}, status => 'draft',
                             total => 900, created => int(time) - 5);
    is(result_of(deliver_event(invoice_event('invoice.deleted', $inv))), 'deleted',
       'deleted: the webhook removed a draft');
    sync_is(sync(), { seen => 8, unchanged => 7, deleted => 1 },
            'deleted: a sync that still sees it counts it deleted');
    ok(!invoice_row($id), '... and does not bring it back');
    stripe_ok(DELETE => "/v1/invoices/$id");
}

#----------------------------------------------------------------------
# Stripe down

{
    fake_config({ faults => [{ path => 'GET /v1/invoices', status => 500 }] });
    fake_control(DELETE => '/_fake/requests');
    my $before = db_state();
    my $res = sync();
    subtest 'Stripe answers 500: 502 stripe_error' => sub {
        is($res->status, 502, 'status 502') or diag $res->describe;
        is($res->header('Content-Type'), 'application/json; charset=utf-8', 'JSON');
        json_check($res, "error.type = \"stripe_error\"\nerror.message ~ \\S");
        unlike($res->body, qr/seen/, 'no counts');
    };
    is(db_state(), $before, '... nothing written');
    cmp_ok(scalar(fake_requests(qr{^GET /v1/invoices$})), '>=', 1,
           '... after asking Stripe (retries allowed)');
    fake_config({ faults => [] });
    sync_is(sync(), { seen => 7, unchanged => 7 }, 'Stripe back: the sync works again');
}

#----------------------------------------------------------------------
# since=: only invoices created since then

{
    my $t = int(time) + 1;
    sleep 0.05 while time < $t;    # the next invoices are created at $t or later
    my @new = map { stripe_invoice_made($team, 'open', 100 * $_) } 1 .. 3;
    fake_control(DELETE => '/_fake/requests');
    sync_is(sync("?since=$t"), { seen => 3, inserted => 3 },
            'since=: only the 3 invoices created since then');
    my ($call) = fake_requests();
    is_deeply($call->{params}{created}, { gte => "$t" }, '... asked as created[gte]');
    is(sql_value('SELECT count(*) FROM invoices WHERE stripe_invoice_id IN ('
                 . join(',', map { quote($_) } @new) . ')'), 3, '... and stored');
    sync_is(sync('?since=' . ($t + 3600)), { seen => 0 }, 'since= in the future: nothing seen');
}

#----------------------------------------------------------------------
# starting_after=: the invoices older than one (Stripe's list is newest first)

{
    @truth = stripe_truth();
    my $n = scalar @truth;
    fake_control(DELETE => '/_fake/requests');
    sync_is(sync("?starting_after=$truth[2]{id}"), { seen => $n - 3, unchanged => $n - 3 },
            'starting_after= the third newest: the older ones only');
    my ($call) = fake_requests();
    is($call->{params}{starting_after}, $truth[2]{id}, '... passed on to Stripe');
    my $res = sync('?starting_after=in_1NoSuchInvoice000000000');
    is($res->status, 400, 'starting_after= an invoice Stripe does not know: Stripe\'s 400')
        or diag $res->describe;
    json_check($res, 'error.type = "stripe_error"', 'unknown starting_after');
}

#----------------------------------------------------------------------
# paging: 230 more invoices, 100 a page

{
    my $before_n = scalar stripe_truth();
    my @ids = map { stripe_invoice_made($_ % 2 ? $team : $lone, 'draft', 0) } 1 .. 230;
    my @truth = stripe_truth();
    my $n = scalar @truth;
    is($n, $before_n + 230, "Stripe holds $n invoices");
    fake_control(DELETE => '/_fake/requests');
    sync_is(sync(), { seen => $n, inserted => 230, unchanged => $n - 230 },
            "paging: all $n seen, the 230 new ones inserted");
    my @pages = fake_requests(qr{^GET /v1/invoices$});
    my $want_pages = int(($n + 99) / 100);
    is(scalar @pages, $want_pages, "... in $want_pages pages");
    is_deeply([map { $_->{params}{starting_after} } @pages],
              [undef, map { $truth[100 * $_ - 1]{id} } 1 .. $want_pages - 1],
              '... each page after the last invoice of the one before');
    is(sql_value('SELECT count(*) FROM invoices'), $n, 'every invoice is stored');
    sync_is(sync(), { seen => $n, unchanged => $n }, "paging: again, all $n unchanged");
}

my @off = kept_counts_off();
is(scalar @off, 0, 'the kept counts (total, per group) agree with the rows')
    or diag join "\n", @off;

done_testing();

__DATA__

=== GET is 405 with Allow: POST
--- request
GET /admin/api/invoices/sync
--- error_code: 405
--- response_headers
Allow: POST
Content-Type: application/json; charset=utf-8
--- json_path
error.code = "method_not_allowed"
--- stripe_requests: 0

=== HEAD is 405, no body
--- request
HEAD /admin/api/invoices/sync
--- error_code: 405
--- response_headers
Allow: POST
--- response_body

=== no Api-Key: 401, Stripe not called
--- request
POST /admin/api/invoices/sync
--- no_default_headers
--- error_code: 401
--- json_path
error.type = "authentication_error"
--- stripe_requests: 0

=== a wrong Api-Key: 401
--- request
POST /admin/api/invoices/sync
--- more_headers
Api-Key: nope
--- error_code: 401
--- stripe_requests: 0

=== an unknown parameter (a typo of since): 400 naming it, no sync
--- request
POST /admin/api/invoices/sync?sinse=1700000000
--- error_code: 400
--- json_path
error.type = "invalid_request_error"
error.code = "parameter_unknown"
error.param = "sinse"
--- stripe_requests: 0
--- db_unchanged: 1

=== an unknown parameter beside known ones: 400, no sync
--- request
POST /admin/api/invoices/sync?since=1700000000&limit=5
--- error_code: 400
--- json_path
error.code = "parameter_unknown"
error.param = "limit"
--- stripe_requests: 0

=== an unknown name shown printable and bounded
--- request
POST /admin/api/invoices/sync?%00%FF{{long}}=1
--- error_code: 400
--- json_path
error.code = "parameter_unknown"
error.param = "%00%FF{{short}}"
--- stripe_requests: 0

=== since must be a number
--- request
POST /admin/api/invoices/sync?since=abc
--- error_code: 400
--- json_path
error.type = "invalid_request_error"
error.param = "since"
--- stripe_requests: 0
--- db_unchanged: 1

=== since may not be negative
--- request
POST /admin/api/invoices/sync?since=-1
--- error_code: 400
--- json_path
error.param = "since"
--- stripe_requests: 0

=== since may not be a float
--- request
POST /admin/api/invoices/sync?since=1.5
--- error_code: 400
--- json_path
error.param = "since"
--- stripe_requests: 0

=== since may not be in exponent form
--- request
POST /admin/api/invoices/sync?since=1e9
--- error_code: 400
--- json_path
error.param = "since"
--- stripe_requests: 0

=== since may not be empty
--- request
POST /admin/api/invoices/sync?since=
--- error_code: 400
--- json_path
error.param = "since"
--- stripe_requests: 0

=== since too large
--- request
POST /admin/api/invoices/sync?since=99999999999999999999
--- error_code: 400
--- json_path
error.param = "since"
--- stripe_requests: 0

=== starting_after must be an invoice id
--- request
POST /admin/api/invoices/sync?starting_after=cus_123
--- error_code: 400
--- json_path
error.type = "invalid_request_error"
error.param = "starting_after"
--- stripe_requests: 0
--- db_unchanged: 1

=== starting_after must not be junk
--- request
POST /admin/api/invoices/sync?starting_after=abc
--- error_code: 400
--- json_path
error.param = "starting_after"
--- stripe_requests: 0

=== starting_after with characters an id never has
--- request
POST /admin/api/invoices/sync?starting_after=in_1%27%20OR%201=1
--- error_code: 400
--- json_path
error.param = "starting_after"
--- stripe_requests: 0

=== starting_after with a query of its own
--- request
POST /admin/api/invoices/sync?starting_after=in_1A%26limit=1
--- error_code: 400
--- json_path
error.param = "starting_after"
--- stripe_requests: 0

=== starting_after empty
--- request
POST /admin/api/invoices/sync?starting_after=
--- error_code: 400
--- json_path
error.param = "starting_after"
--- stripe_requests: 0

=== a good since with nothing in Stripe yet
--- request
POST /admin/api/invoices/sync?since=1700000000
--- error_code: 200
--- json_path
seen = 0
inserted = 0
hasMore = false
next = null
--- stripe_requests: 1
