# GET /admin/api/invoices: the shape and type of every field, the order
# (createdAt desc, then _id desc, ties included) and the pagination
# arithmetic over 23 seeded invoices.

use strict;
use warnings;
use Test::More;
use POSIX qw(strftime floor);
use Invoices::Test;
use Invoices::Test::JSONCheck qw(plain);

start_server();

#----------------------------------------------------------------------
# seed: 3 teams, 23 invoices

my @teams = insert_rows(teams => (
    { id => '6548a41138406c14db33b606', name => 'John Doe',
      stripe_customer_id => 'cus_john' },
    # JSON escaping: quotes, backslash, slash, control characters, UTF-8
    { id => '6548a41138406c14db33b607',
      name => qq(O'Brien "Q" \\ / \t\x01\x1f caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x98\x80),
      stripe_customer_id => 'cus_evil' },
    { id => '6548a41138406c14db33b608', name => 'Team Three',
      stripe_customer_id => 'cus_three' },
));
my %team = map { $_->{id} => $_ } @teams;
# the name as the API must return it (characters, not bytes)
my $evil_name = $teams[1]{name};

sub iso_ms {    # epoch milliseconds -> 2023-11-06T15:07:28.550Z
    my ($ms) = @_;
    return strftime('%Y-%m-%dT%H:%M:%S', gmtime floor($ms / 1000))
         . sprintf('.%03dZ', $ms % 1000);
}

sub with_offset {    # the same instant written with a +02:00 offset
    my ($ms) = @_;
    my $t = $ms + 2 * 3600 * 1000;
    return strftime('%Y-%m-%dT%H:%M:%S', gmtime floor($t / 1000))
         . sprintf('.%03d+02:00', $t % 1000);
}

my $base = 1698800000000;    # 2023-11-01T00:53:20.000Z
my @statuses = qw(draft open paid uncollectible void);
my @amounts = (0, 1, 3300, 3000000000, 9007199254740991, 999, 12345);
my @seed;
for my $i (1 .. 23) {
    my $ms = $base + $i * 3_600_000 + ($i * 37) % 1000;
    $ms = $base + 7 * 3_600_000 + 5   if $i == 7 || $i == 8 || $i == 9;   # a tie of 3
    $ms = $base + 18 * 3_600_000      if $i >= 18 && $i <= 20;             # another
    my $team_id = $i % 4 == 0 ? undef : $teams[$i % 3]{id};
    my $id = sprintf '%08x%016x', floor($ms / 1000), ($i * 16) % 23 * 1000003;
    push @seed, {
        id                 => $id,
        stripe_invoice_id  => sprintf('in_1O9UOhA0ZUrt0vQJ%04d', $i),
        stripe_customer_id => $team_id ? $team{$team_id}{stripe_customer_id} : "cus_gone$i",
        team_id            => $team_id,
        status             => $statuses[$i % 5],
        amount             => $amounts[$i % 7],
        currency           => $i % 2 ? 'eur' : 'usd',
        invoice_pdf        => $i % 3 == 0 ? undef
                            : "https://pay.stripe.com/invoice/acct_1NOa/test_$i/pdf?s=ap&x=\"y\"",
        stripe_created_at  => $i % 2 ? with_offset($ms) : iso_ms($ms),
        updated_at         => iso_ms($ms + 17_745),
        _ms                => $ms,
    };
}
insert_rows(invoices => map { my %r = %$_; delete $r{_ms}; \%r } @seed);

# The expected list, computed here from the seed (not by the database).
my @expected = map { {
    _id        => $_->{id},
    invoiceId  => $_->{stripe_invoice_id},
    user       => $_->{team_id} ? { _id => $_->{team_id},
                                    name => _chars($team{ $_->{team_id} }{name}) }
                                : undef,
    status     => $_->{status},
    amount     => $_->{amount},
    currency   => $_->{currency},
    invoicePdf => $_->{invoice_pdf},
    createdAt  => iso_ms($_->{_ms}),
    updatedAt  => iso_ms($_->{_ms} + 17_745),
} } sort { $b->{_ms} <=> $a->{_ms} or $b->{id} cmp $a->{id} } @seed;

sub _chars { my ($s) = @_; utf8::decode($s) unless utf8::is_utf8($s); return $s }

# The seed must exercise what it claims to.
my @ids_in_order = map { $_->{_id} } @expected;
ok((grep { $expected[$_]{createdAt} eq $expected[$_ + 1]{createdAt} } 0 .. 21) >= 3,
   'seed: has createdAt ties');
is($expected[4]{createdAt}, $expected[5]{createdAt},
   'seed: a tie straddles the limit=5 page boundary');
for my $h (7, 18) {
    my @tie = map { $_->{invoiceId} =~ /(\d+)$/ ? $1 + 0 : () }
              grep { $_->{createdAt} =~ /^\Q${\ substr(iso_ms($base + $h * 3_600_000), 0, 13)}\E/ } @expected;
    is(scalar @tie, 3, "seed: a tie of 3 at hour $h");
    ok("@tie" ne join(' ', sort { $b <=> $a } @tie),
       "seed: its _id order (@tie) is not the reverse insertion order");
}
ok(scalar(grep { !defined $_->{user} } @expected), 'seed: some invoices without a team');
ok(scalar(grep { !defined $_->{invoicePdf} } @expected), 'seed: some without a PDF');

#----------------------------------------------------------------------
# helpers

my $KEY = ['Api-Key' => API_KEY];

sub get_list {
    my ($query) = @_;
    my $res = api_request(GET => '/admin/api/invoices' . ($query // ''));
    return $res;
}

# check_page($query, $from, $n): a 200 page holding @expected[$from ..].
sub check_page {
    my ($query, $from, $n, $name) = @_;
    $name //= "list$query";
    my $res = get_list($query);
    subtest $name => sub {
        is($res->status, 200, 'status 200') or return diag $res->describe;
        is($res->header('Content-Type'), 'application/json; charset=utf-8',
           'content type');
        my $doc = eval { json_typed($res) };
        ok($doc, 'body is JSON') or return diag "$@\n" . $res->describe;
        my $got = plain($doc);
        is($doc->{v}{count}{t}, 'integer', 'count is an integer');
        is($got->{count}, 23, 'count is the total, not the page size');
        is($doc->{v}{invoices}{t}, 'array', 'invoices is an array');
        my @want = $n ? @expected[$from .. $from + $n - 1] : ();
        is(scalar @{ $got->{invoices} }, $n, "$n invoices");
        is_deeply([map { $_->{_id} } @{ $got->{invoices} }],
                  [map { $_->{_id} } @want], 'the right ones, in order');
        for my $i (0 .. $#want) {
            my $g = $got->{invoices}[$i];
            my %sub = map { $_ => $g->{$_} } grep { exists $g->{$_} } keys %{ $want[$i] };
            is_deeply(\%sub, $want[$i], "invoice $i: every field")
                or diag explain [$g, $want[$i]];
        }
    };
    return $res;
}

#----------------------------------------------------------------------
# shapes and types, on the full list

my $res = get_list('?limit=100');
is($res->status, 200, 'full list: 200') or diag $res->describe;
my $doc = json_typed($res);
is_deeply([sort keys %{ $doc->{v} }], ['count', 'has_more', 'invoices'],
          'top level: exactly invoices, count and has_more');
my @items = @{ $doc->{v}{invoices}{v} };
is(scalar @items, 23, 'all 23 with limit=100');
for my $i (0 .. $#items) {
    my $it = $items[$i];
    my %t = map { $_ => $it->{v}{$_}{t} } keys %{ $it->{v} };
    my $p = plain($it);
    subtest "field types of invoice $i ($p->{invoiceId})" => sub {
        is($it->{t}, 'object', 'an object');
        for my $k (qw(_id invoiceId user status amount currency invoicePdf
                      createdAt updatedAt)) {
            ok(exists $t{$k}, "has $k");
        }
        is($t{_id}, 'string', '_id is a string');
        like($p->{_id}, qr/^[0-9a-f]{24}$/, '_id: 24 lowercase hex');
        is($t{invoiceId}, 'string', 'invoiceId is a string');
        like($p->{invoiceId}, qr/^in_[A-Za-z0-9_]+$/, 'invoiceId is a Stripe id');
        is($t{amount}, 'integer', 'amount is a JSON integer');
        is($t{status}, 'string', 'status is a string');
        like($p->{status}, qr/^(?:draft|open|paid|uncollectible|void)$/, 'status value');
        is($t{currency}, 'string', 'currency is a string');
        like($t{invoicePdf}, qr/^(?:string|null)$/, 'invoicePdf: string or null');
        like($t{user}, qr/^(?:object|null)$/, 'user: object or null');
        if ($t{user} eq 'object') {
            is_deeply([sort keys %{ $it->{v}{user}{v} }], ['_id', 'name'],
                      'user has _id and name');
            is($it->{v}{user}{v}{_id}{t}, 'string', 'user._id is a string');
            like($p->{user}{_id}, qr/^[0-9a-f]{24}$/, 'user._id: 24 lowercase hex');
            is($it->{v}{user}{v}{name}{t}, 'string', 'user.name is a string');
        }
        for my $k (qw(createdAt updatedAt)) {
            is($t{$k}, 'string', "$k is a string");
            like($p->{$k}, qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/,
                 "$k: YYYY-MM-DDTHH:MM:SS.mmmZ");
        }
    };
}

# the whole list, field for field and in order
check_page('?limit=100', 0, 23, 'list?limit=100: every field of every invoice');

# details that the comparison above covers, named on their own
my ($big) = grep { $_->{amount} == 3000000000 } @expected;
like($res->body, qr/"amount":\s*3000000000[,}\s]/, 'amount above 2^31 written as a plain integer');
like($res->body, qr/"amount":\s*9007199254740991[,}\s]/, 'amount 2^53-1 written exactly');
like($res->body, qr/"amount":\s*0[,}\s]/, 'amount 0 written as 0');
my ($evil) = grep { $_->{user} && $_->{user}{_id} eq $teams[1]{id} } @{ plain($doc)->{invoices} };
is($evil->{user}{name}, _chars($evil_name),
   'a team name with quotes, backslash, control characters and UTF-8 round-trips');
unlike($res->body, qr/[\x00-\x1f]/, 'no raw control characters in the body');
my ($odd) = grep { $_->{invoiceId} eq 'in_1O9UOhA0ZUrt0vQJ0001' } @{ plain($doc)->{invoices} };
is($odd->{createdAt}, iso_ms($base + 3_600_000 + 37),
   'a createdAt stored with a +02:00 offset comes back in UTC');

#----------------------------------------------------------------------
# pagination

check_page('', 0, 10, 'no parameters: page 1, limit 10');
check_page('?page=2', 10, 10, 'page=2: default limit 10');
check_page('?page=3', 20, 3, 'page=3: the last 3');
check_page('?page=4', 23, 0, 'page=4: past the end');

for my $p (1, 2, 12, 23) {
    check_page("?limit=1&page=$p", $p - 1, 1);
}
check_page('?limit=1&page=24', 23, 0);
for my $p (1 .. 4) {
    check_page("?limit=5&page=$p", 5 * ($p - 1), 5);
}
check_page('?limit=5&page=5', 20, 3, 'limit=5, page 5: last partial page');
check_page('?limit=5&page=6', 23, 0, 'limit=5, page 6: past the end');
check_page('?page=1&limit=10', 0, 10);
check_page('?limit=10&page=3', 20, 3);
check_page('?limit=10&page=4', 23, 0);
check_page('?limit=100&page=1', 0, 23);
check_page('?limit=100&page=2', 23, 0);
check_page('?limit=23', 0, 23, 'limit=23: exactly all');
check_page('?limit=22&page=2', 22, 1, 'limit=22, page 2: the last one');
check_page('?page=1000000', 23, 0, 'a far page: empty, real count');

# walking limit=5 pages gives every invoice once
my @walk;
for my $p (1 .. 6) {
    my $r = get_list("?limit=5&page=$p");
    push @walk, map { $_->{_id} } @{ $r->json->{invoices} };
}
is_deeply(\@walk, \@ids_in_order, 'walking the pages: every invoice exactly once, in order');

# the trailing slash is the same route
my $slash = api_request(GET => '/admin/api/invoices/?limit=3');
is($slash->status, 200, '/admin/api/invoices/ (trailing slash): 200');
is_deeply([map { $_->{_id} } @{ $slash->json->{invoices} }], [@ids_in_order[0 .. 2]],
          '... the same list');

#----------------------------------------------------------------------
# data changes show up at once

# updatedAt with microseconds still has exactly three fractional digits
sql_do("UPDATE invoices SET updated_at = '2024-02-03T04:05:06.789999Z' "
     . "WHERE id = " . quote($expected[0]{_id}));
$res = get_list('?limit=1');
like($res->json->{invoices}[0]{updatedAt}, qr/^2024-02-03T04:05:06\.\d{3}Z$/,
     'microsecond timestamps: three fractional digits');

# a new newest invoice moves to the top and the count grows
my $new = insert_invoice(stripe_invoice_id => 'in_newest', amount => 42,
                         stripe_created_at => '2030-01-01T00:00:00.000Z');
$res = get_list('?limit=2');
is($res->json->{count}, 24, 'count follows an insert');
is($res->json->{invoices}[0]{invoiceId}, 'in_newest', 'the newest invoice is first');
is($res->json->{invoices}[0]{createdAt}, '2030-01-01T00:00:00.000Z', '.000 kept');
is($res->json->{invoices}[0]{user}, undef, 'user is null without a team');
is($res->json->{invoices}[0]{invoicePdf}, undef, 'invoicePdf is null without a PDF');

# the count is kept by triggers (migration 0003), not counted: it must
# follow bulk inserts, upserts that only update, deletes and a truncate,
# from several sessions at once
sql_do("INSERT INTO invoices (stripe_invoice_id, status, amount, currency,
                              stripe_created_at)
        SELECT 'in_bulk' || g, 'open', g, 'eur', '2001-01-01'::timestamptz
        FROM generate_series(1, 500) g");
is(get_list('?limit=1')->json->{count}, 524, 'count follows a bulk insert');
sql_do("INSERT INTO invoices (stripe_invoice_id, status, amount, currency,
                              stripe_created_at)
        SELECT 'in_bulk' || g, 'paid', g, 'eur', '2001-01-01'::timestamptz
        FROM generate_series(1, 600) g
        ON CONFLICT (stripe_invoice_id) DO UPDATE SET status = 'paid'");
is(get_list('?limit=1')->json->{count}, 624,
   'an upsert counts only the rows it inserted');
sql_do("DELETE FROM invoices WHERE stripe_invoice_id LIKE 'in_bulk%'
        AND amount % 2 = 0");
is(get_list('?limit=1')->json->{count}, 324, 'count follows a delete');
sql_do("BEGIN; DELETE FROM invoices WHERE stripe_invoice_id LIKE 'in_bulk%';
        ROLLBACK");
is(get_list('?limit=1')->json->{count}, 324,
   'a rolled back delete leaves the count');
is(get_list('?limit=1')->json->{count},
   sql_value('SELECT count(*) FROM invoices'), 'count equals count(*)');
sql_do("DELETE FROM invoices WHERE stripe_invoice_id LIKE 'in_bulk%'");
is(sql_value('SELECT count(DISTINCT slot) FROM invoices_count'), 16,
   'sixteen count slots');

# statements are prepared once per connection: a migration that changes a
# column's type under them must not turn into errors
my @before = map { get_list('?limit=3')->status } 1 .. 8;
sql_do('ALTER TABLE invoices ALTER COLUMN amount TYPE numeric(20, 0)');
my @after = map { get_list('?limit=3') } 1 .. 8;
is_deeply([ map { $_->status } @after ], [ (200) x 8 ],
          'after a column type change every list request answers 200');
like($after[0]->body, qr/"amount":\s*\d+[,}]/, 'amount is still a JSON integer');
sql_do('ALTER TABLE invoices ALTER COLUMN amount TYPE bigint');
is(get_list('?limit=3')->status, 200, 'and after changing it back');

# nothing at all
sql_do('TRUNCATE invoices CASCADE');
is(sql_value('SELECT sum(n) FROM invoices_count'), 0,
   'a truncate zeroes the count');
insert_invoice(stripe_invoice_id => 'in_after_truncate');
is(get_list('')->json->{count}, 1, 'count after a truncate and an insert');
sql_do('DELETE FROM invoices');
$res = get_list('');
is($res->status, 200, 'empty table: 200');
json_check($res, "invoices = []\ncount = 0", 'empty table');
$res = get_list('?page=2');
json_check($res, "invoices = []\ncount = 0", 'empty table, page 2');

done_testing();
