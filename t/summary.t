# GET /admin/api/invoices/summary: count and sums (amount, amountDue,
# amountPaid, amountRemaining) per currency and status, never summed
# across currencies, under the list's filters; compared with a Perl model
# of the data set.  No paging or cursor parameters; the same 400s as the
# list for malformed filters; HEAD; other methods 405.

use strict;
use warnings;
use Test::More;
use POSIX ();
use Invoices::Test;

start_server();

my @teams = map { insert_team(name => $_, stripe_customer_id => "cus_Sum$_") } qw(Alpha Beta);
my @statuses = qw(draft open paid uncollectible void);
my $base = 1_760_000_000;

my @model;
for my $n (1 .. 60) {
    my $t = $teams[$n % 2];
    my $status = $statuses[($n * 7) % 5];
    my $amount = 100 * $n + ($n == 13 ? -2000 : 0);
    my %row = (
        stripe_invoice_id => sprintf('in_1Summary%04d%s', $n, 'z' x 10),
        stripe_customer_id => $t->{stripe_customer_id}, team_id => $t->{id},
        status => $status, amount => $amount,
        currency => (qw(eur usd chf))[$n % 3],
        stripe_created_at => POSIX::strftime('%Y-%m-%dT%H:%M:%SZ', gmtime($base + 3600 * $n)),
        customer_name => "Name $n",
    );
    # rows 1..50 have the details; 51..60 are from before migration 0005
    if ($n <= 50) {
        my $paid = $status eq 'paid' ? $amount : 0;
        %row = (%row, amount_due => $amount, amount_paid => $paid,
                amount_remaining => $status =~ /^(paid|void)$/ ? 0 : $amount - $paid);
    }
    push @model, { %row, created => $base + 3600 * $n };
}
insert_rows(invoices => map { my %r = %$_; delete $r{created}; \%r } @model);

my @rank = (draft => 0, open => 1, uncollectible => 2, paid => 3, void => 3);
my %rank = @rank;

# expected(sub { filter }) -> the summary the model says
sub expected {
    my ($keep) = @_;
    my %g;
    for my $i (grep { $keep->($_) } @model) {
        my $k = "$i->{currency} $i->{status}";
        my $t = $g{$k} //= { currency => $i->{currency}, status => $i->{status},
                             count => 0, amount => 0, amountDue => 0,
                             amountPaid => 0, amountRemaining => 0 };
        $t->{count}++;
        $t->{amount} += $i->{amount};
        $t->{amountDue} += $i->{amount_due} // 0;
        $t->{amountPaid} += $i->{amount_paid} // 0;
        $t->{amountRemaining} += $i->{amount_remaining} // 0;
    }
    my @t = sort { $a->{currency} cmp $b->{currency}
                   || $rank{$a->{status}} <=> $rank{$b->{status}}
                   || $a->{status} cmp $b->{status} } values %g;
    my $count = 0;
    $count += $_->{count} for @t;
    return { totals => \@t, count => $count };
}

my ($A) = @teams;
my @cases = (
    [''                       => sub { 1 }],
    ['status=paid'            => sub { $_[0]{status} eq 'paid' }],
    ['status=open,uncollectible' => sub { $_[0]{status} =~ /^(open|uncollectible)$/ }],
    ['currency=usd'           => sub { $_[0]{currency} eq 'usd' }],
    ["team=$A->{id}"          => sub { $_[0]{team_id} eq $A->{id} }],
    ["customer=cus_SumBeta"   => sub { $_[0]{stripe_customer_id} eq 'cus_SumBeta' }],
    ['amount[gte]=2000&amount[lt]=4000' => sub { $_[0]{amount} >= 2000 && $_[0]{amount} < 4000 }],
    ['created[gte]=' . ($base + 3600 * 30) => sub { $_[0]{created} >= $base + 3600 * 30 }],
    ['q=name+1'               => sub { $_[0]{customer_name} =~ /name 1/i }],
    ['currency=jpy'           => sub { 0 }],
);
for my $c (@cases) {
    my ($q, $keep) = @$c;
    my $res = api_request(GET => "/admin/api/invoices/summary?$q");
    is($res->status, 200, "summary ?$q: 200") or diag $res->describe;
    is_deeply($res->json_or_undef, expected($keep), "summary ?$q: the model's totals");
}

# types: integers, and the shape
json_check(api_request(GET => '/admin/api/invoices/summary?currency=eur&status=paid'), <<'CHECK', 'types');
@keys = ["count","totals"]
totals.0.@keys = ["amount","amountDue","amountPaid","amountRemaining","count","currency","status"]
totals.0.count : integer
totals.0.amount : integer
totals.0.amountDue : integer
totals.0.currency = "eur"
totals.0.status = "paid"
count : integer
CHECK

# the list's count agrees with the summary's, filter by filter
for my $c (@cases) {
    my ($q) = @$c;
    my $l = api_request(GET => "/admin/api/invoices?$q&limit=1")->json_or_undef // {};
    my $s = api_request(GET => "/admin/api/invoices/summary?$q")->json_or_undef // {};
    is($s->{count}, $l->{count}, "?$q: the summary's count is the list's");
}

# paging and cursors are the list's: unknown here
for my $q ('page=1', 'limit=5', "starting_after=$A->{id}", 'ending_before=in_1x', 'format=csv', 'stauts=paid') {
    my $res = api_request(GET => "/admin/api/invoices/summary?$q");
    is($res->status, 400, "summary ?$q: 400");
    is(($res->json_or_undef // {})->{error}{code}, 'parameter_unknown', "summary ?$q: parameter_unknown");
}
for my $q ('status=gone', 'currency=EUR', 'q=', 'amount[gt]=x', 'status=paid&status=open') {
    my ($param) = $q =~ /^([^=]+)/;
    my $res = api_request(GET => "/admin/api/invoices/summary?$q");
    is($res->status, 400, "summary ?$q: 400");
    is(($res->json_or_undef // {})->{error}{param}, $param, "summary ?$q: param $param");
}

# HEAD, methods, the key
my $head = api_request(HEAD => '/admin/api/invoices/summary');
is($head->status, 200, 'HEAD: 200');
is($head->body, '', 'HEAD: no body');
my $post = api_request(POST => '/admin/api/invoices/summary', ['Content-Type' => 'application/json'], '{}');
is($post->status, 405, 'POST: 405');
like($post->header('Allow') // '', qr/GET/, 'POST: Allow names GET');
is(request(GET => '/admin/api/invoices/summary')->status, 401, 'no Api-Key: 401');
is(api_request(GET => '/admin/api/invoices/summary/x')->status, 404, 'summary/x: 404');

# ETag and 304
my $first = api_request(GET => '/admin/api/invoices/summary?status=paid');
my $etag = $first->header('ETag');
ok($etag, 'an ETag');
is(api_request(GET => '/admin/api/invoices/summary?status=paid', ['If-None-Match' => $etag])->status,
   304, 'If-None-Match: 304');

# a write shows at once
sql_do("UPDATE invoices SET status = 'paid', amount_paid = amount_due, amount_remaining = 0 "
       . "WHERE stripe_invoice_id = " . quote($model[0]{stripe_invoice_id}));
$model[0]{status} = 'paid';
$model[0]{amount_paid} = $model[0]{amount_due};
$model[0]{amount_remaining} = 0;
is_deeply(api_request(GET => '/admin/api/invoices/summary')->json_or_undef, expected(sub { 1 }),
          'after a write: the new totals (no cache here)');

my @off = kept_counts_off();
is(scalar @off, 0, 'the kept counts (total, per group) agree with the rows')
    or diag join "\n", @off;

done_testing();
