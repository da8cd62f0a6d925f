# GET /admin/api/invoices/export?format=csv|ndjson and the list's filters:
# every matching invoice in list order, over several chunks of rows;
# RFC 4180 CSV with the formula guard, NDJSON of the list's objects; one
# snapshot (rows written while a slow client reads are not in it); a
# client that goes away frees its PostgreSQL session at once; PostgreSQL
# down before the first byte is a JSON 503; the parameters the list has
# and the export does not are refused.

use strict;
use warnings;
use Test::More;
use IO::Socket::INET;
use JSON::PP ();
use POSIX ();
use Time::HiRes qw(time sleep);
use Encode ();
use Socket ();
use Invoices::Test;

start_server();
my $J = JSON::PP->new->utf8->canonical;

#----------------------------------------------------------------------
# the data set: 12,000 invoices (6 fetches of rows, about 10 MB: more than
# the sockets between nginx and a client hold), hostile texts among them

my ($team) = insert_team(name => 'Export Team', stripe_customer_id => 'cus_ExportTeam');
my @hostile = ('=SUM(A1:A9)', '+1 555', '-2+3', '@cmd', "\tTabbed", "\rCarriage",
               'has, comma', 'has "quotes"', "two\nlines", "cr\r\nlf", "x'y",
               "\x{e9}t\x{e9} \x{2603}", ' leading space', '');
my $base = 1_750_000_000;
my @rows;
for my $n (1 .. 12_000) {
    my $name = $n <= @hostile ? $hostile[$n - 1] : "Customer $n " . ('x' x 700);
    push @rows, {
        id => sprintf('%08x%016x', $base + $n, $n),
        stripe_invoice_id => sprintf('in_1Export%06d%s', $n, 'e' x 8),
        stripe_customer_id => $n % 3 ? 'cus_ExportTeam' : "cus_Other$n",
        ($n % 3 ? (team_id => $team->{id}) : ()),
        status => (qw(draft open paid uncollectible void))[$n % 5],
        amount => $n == 2 ? -500 : 10 * $n,
        currency => $n % 4 ? 'eur' : 'usd',
        stripe_created_at => POSIX::strftime('%Y-%m-%dT%H:%M:%SZ', gmtime($base + 60 * $n)),
        customer_name => Encode::encode_utf8($name),
        number => $n % 5 ? sprintf('EXP-%05d', $n) : undef,
    };
}
# the hostile ones one by one, the rest in one statement (the same values)
insert_rows(invoices => @rows[0 .. $#hostile]);
sql_do(sprintf(<<'SQL', scalar(@hostile) + 1, $team->{id}, $base, $base));
INSERT INTO invoices (id, stripe_invoice_id, stripe_customer_id, team_id, status,
                      amount, currency, stripe_created_at, customer_name, number)
SELECT lpad(to_hex(%4$d + n), 8, '0') || lpad(to_hex(n), 16, '0'),
       'in_1Export' || lpad(n::text, 6, '0') || 'eeeeeeee',
       CASE WHEN n %% 3 <> 0 THEN 'cus_ExportTeam' ELSE 'cus_Other' || n END,
       CASE WHEN n %% 3 <> 0 THEN '%2$s' END,
       (ARRAY['draft', 'open', 'paid', 'uncollectible', 'void'])[1 + n %% 5],
       10 * n, CASE WHEN n %% 4 <> 0 THEN 'eur' ELSE 'usd' END,
       to_timestamp(%3$d + 60 * n),
       'Customer ' || n || ' ' || repeat('x', 700),
       CASE WHEN n %% 5 <> 0 THEN 'EXP-' || lpad(n::text, 5, '0') END
FROM generate_series(%1$d, 12000) n
SQL
my @order = sort { $b->{stripe_created_at} cmp $a->{stripe_created_at} || $b->{id} cmp $a->{id} } @rows;

# csv_parse($text) -> rows (arrayrefs of cells), RFC 4180: a cell is
# quoted (quotes doubled) or has no quote, comma, CR or LF; lines end in CRLF
sub csv_parse {
    my ($t) = @_;
    my (@out, @row);
    my $seen = 0;
    # every cell and its separator in one pass; what does not fit the
    # grammar is left out, and the lengths no longer add up
    my @tok = $t =~ /\G(?:"((?:[^"]|"")*)"|([^",\r\n]*))(,|\r\n)/g;
    while (my ($q, $plain, $sep) = splice @tok, 0, 3) {
        $seen += (defined $q ? length($q) + 2 : length $plain) + length $sep;
        push @row, defined $q ? $q =~ s/""/"/gr : $plain;
        next if $sep eq ',';
        push @out, [@row];
        @row = ();
    }
    die "csv: not RFC 4180 after byte $seen" if $seen != length $t;
    return @out;
}

#----------------------------------------------------------------------
# CSV

my $res = api_request(GET => '/admin/api/invoices/export');
is($res->status, 200, 'CSV: 200') or diag $res->describe;
is($res->header('Content-Type'), 'text/csv; charset=utf-8', 'CSV: the type');
my $today = POSIX::strftime('%Y%m%d', gmtime);
is($res->header('Content-Disposition'), qq{attachment; filename="invoices-$today.csv"},
   'CSV: a download named with the date');
is($res->header('Cache-Control'), 'no-store', 'CSV: not stored');
like($res->header('Transfer-Encoding') // '', qr/chunked/, 'CSV: streamed (chunked)');
my @csv = eval { csv_parse($res->body) };    # bytes: decoded cell by cell
is($@, '', 'CSV: parses as RFC 4180 (CRLF lines, quotes doubled)');
my $header = shift @csv;
is(join(',', @$header), '_id,invoiceId,userId,userName,status,amount,currency,invoicePdf,'
   . 'createdAt,updatedAt,number,customer,customerEmail,customerName,amountDue,amountPaid,'
   . 'amountRemaining,hostedInvoiceUrl,dueDate,paidAt,finalizedAt,voidedAt', 'CSV: the header');
is(scalar @csv, scalar @order, 'CSV: every invoice, once');
is_deeply([map { $_->[0] } @csv], [map { $_->{id} } @order], 'CSV: in the list order');
my %col;
@col{@$header} = 0 .. $#$header;
my %by_id = map { $_->[0] => $_ } @csv;

for my $n (1 .. @hostile) {
    my $name = $hostile[$n - 1];
    my $want = $name =~ /^[=+\-\@\t\r]/ ? "'$name" : $name;
    my $got = Encode::decode_utf8($by_id{ $rows[$n - 1]{id} }[ $col{customerName} ]);
    is($got, $want, 'CSV: customerName ' . $J->encode([$name]) . ' comes back'
       . ($want ne $name ? ' with the formula guard' : ' as it was'));
}
is($by_id{ $rows[1]{id} }[ $col{amount} ], '-500', 'CSV: a negative amount stays a number');
is($by_id{ $rows[2]{id} }[ $col{userId} ], '', 'CSV: no team: empty userId');
is($by_id{ $rows[4]{id} }[ $col{number} ], '', 'CSV: null: an empty cell');
is($by_id{ $rows[6]{id} }[ $col{userName} ], 'Export Team', 'CSV: the team as userName');
like($by_id{ $rows[6]{id} }[ $col{createdAt} ], qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/,
     'CSV: times in the API form');

#----------------------------------------------------------------------
# NDJSON: the list's objects, a line each

$res = api_request(GET => '/admin/api/invoices/export?format=ndjson');
is($res->status, 200, 'NDJSON: 200');
is($res->header('Content-Type'), 'application/x-ndjson', 'NDJSON: the type');
is($res->header('Content-Disposition'), qq{attachment; filename="invoices-$today.ndjson"},
   'NDJSON: the file name');
my @lines = split /\n/, $res->body, -1;
is(pop @lines, '', 'NDJSON: every line ends in a newline');
is(scalar @lines, scalar @order, 'NDJSON: every invoice, once');
# the ids by pattern (decoding 10 MB with JSON::PP takes long), the first
# 100 lines decoded whole
is_deeply([map { /^\{"_id":"([0-9a-f]{24})"/ ? $1 : '?' } @lines], [map { $_->{id} } @order],
          'NDJSON: in the list order');
my @objs = map { $J->decode($_) } @lines[0 .. 99];
my $page = api_request(GET => '/admin/api/invoices?limit=100')->json_or_undef;
is_deeply(\@objs, $page->{invoices}, 'NDJSON: the same objects as the list');

#----------------------------------------------------------------------
# filters

for my $q ('status=paid&currency=usd', "team=$team->{id}", 'q=exp-0001', 'amount[lt]=0',
           'customer=cus_Nobody') {
    my $list = api_request(GET => "/admin/api/invoices?$q&limit=100")->json_or_undef;
    my $exp = api_request(GET => "/admin/api/invoices/export?format=ndjson&$q");
    my @ids = map { /^\{"_id":"([0-9a-f]{24})"/ ? $1 : '?' } split /\n/, $exp->body;
    is(scalar @ids, $list->{count}, "?$q: as many as the list counts ($list->{count})");
    is_deeply([@ids[0 .. ($#ids < 99 ? $#ids : 99)]], [map { $_->{_id} } @{ $list->{invoices} }],
              "?$q: the list's invoices first");
}

#----------------------------------------------------------------------
# parameters and methods

for my $q ('page=1', 'limit=5', "starting_after=$rows[0]{id}", 'ending_before=in_1x', 'stauts=paid') {
    my $r = api_request(GET => "/admin/api/invoices/export?$q");
    is($r->status, 400, "export ?$q: 400");
    is(($r->json_or_undef // {})->{error}{code}, 'parameter_unknown', "export ?$q: parameter_unknown");
}
for my $q ('format=xml', 'format=', 'format=CSV', 'format=csv&format=csv', 'status=nope') {
    my ($param) = $q =~ /^([^=]+)/;
    my $r = api_request(GET => "/admin/api/invoices/export?$q");
    is($r->status, 400, "export ?$q: 400");
    is(($r->json_or_undef // {})->{error}{param}, $param, "export ?$q: param $param");
}
my $head = api_request(HEAD => '/admin/api/invoices/export?format=ndjson');
is($head->status, 200, 'HEAD: 200');
is($head->header('Content-Type'), 'application/x-ndjson', 'HEAD: the type');
is($head->body, '', 'HEAD: no body');
is(api_request(POST => '/admin/api/invoices/export', ['Content-Type' => 'application/json'], '{}')->status,
   405, 'POST: 405');
is(request(GET => '/admin/api/invoices/export')->status, 401, 'no Api-Key: 401');

#----------------------------------------------------------------------
# a slow client: one snapshot, and flow control

# open_export($query) -> socket with the request sent
sub open_export {
    my ($q) = @_;
    # a receive buffer of 64 kB, set before connecting (so that TCP sizes
    # its window for it): with nginx's send buffer, a few MB can be on
    # their way; the export is larger, so nginx waits for us
    my $s = IO::Socket::INET->new(Proto => 'tcp') or die "socket: $!";
    setsockopt($s, Socket::SOL_SOCKET(), Socket::SO_RCVBUF(), 65536) or die "setsockopt: $!";
    connect($s, Socket::pack_sockaddr_in(server_port(), Socket::inet_aton('127.0.0.1')))
        or die "connect: $!";
    print $s "GET /admin/api/invoices/export?$q HTTP/1.1\r\nHost: x\r\n"
           . 'Api-Key: ' . API_KEY . "\r\nConnection: close\r\n\r\n";
    return $s;
}
# read_some($sock, $bytes) -> up to that many bytes
sub read_some {
    my ($s, $n) = @_;
    my $got = '';
    while (length $got < $n) {
        my $r = sysread($s, my $buf, $n - length $got);
        last unless $r;
        $got .= $buf;
    }
    return $got;
}
sub dechunk {
    my ($raw) = @_;
    my ($head, $body) = split /\r\n\r\n/, $raw, 2;
    my $out = '';
    while ($body =~ s/^([0-9a-fA-F]+)\r\n//) {
        my $n = hex $1;
        last if $n == 0;
        $out .= substr($body, 0, $n, '');
        $body =~ s/^\r\n//;
    }
    return $out;
}
# the module's PostgreSQL sessions of this database in a transaction
sub export_sessions {
    return sql_value("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                     . "AND application_name = 'ngx_http_invoices' AND xact_start IS NOT NULL");
}

my $s = open_export('format=ndjson');
my $first = read_some($s, 20_000);
like($first, qr{^HTTP/1\.1 200}, 'slow client: the answer starts');
sleep 0.5;
is(export_sessions(), 1, 'slow client: the export holds its snapshot while the client waits');
my $late = sprintf('%08x%016x', $base + 99_999, 99_999);
insert_invoice(id => $late, stripe_invoice_id => 'in_1ExportLate0000000001',
               stripe_created_at => '2030-01-01T00:00:00Z');
sql_do("DELETE FROM invoices WHERE id = " . quote($order[-1]{id}));
my $rest = $first;
while (1) { my $r = sysread($s, my $buf, 65536); last unless $r; $rest .= $buf }
close $s;
my @snap = map { /^\{"_id":"([0-9a-f]{24})"/ ? $1 : '?' } split /\n/, dechunk($rest);
is_deeply(\@snap, [map { $_->{id} } @order],
          'slow client: exactly the snapshot taken at the start (no later insert, the deleted one still there)');
ok(wait_until(sub { export_sessions() == 0 }, 5), 'slow client: done, the session is gone');

#----------------------------------------------------------------------
# a client that goes away

$s = open_export('format=csv');
my $bit = read_some($s, 5000);
like($bit, qr{^HTTP/1\.1 200}, 'abort: the export starts');
sleep 0.3;
is(export_sessions(), 1, 'abort: one export session in its transaction');
close $s;
my $t0 = time;
ok(wait_until(sub { export_sessions() == 0 }, 5), 'abort: the session ends');
note sprintf 'abort: the session ended %.2f s after the client left', time - $t0;
is(api_request(GET => '/admin/api/invoices?limit=1')->status, 200, 'abort: the module goes on serving');

# many at once, all abandoned
my @socks = map { open_export('format=ndjson') } 1 .. 8;
read_some($_, 3000) for @socks;
close $_ for @socks;
ok(wait_until(sub { export_sessions() == 0 }, 8), 'eight abandoned exports: every session ends');

#----------------------------------------------------------------------
# PostgreSQL down before the first byte: a JSON 503

SKIP: {
    skip 'valgrind: PostgreSQL restarts are slow', 3 if valgrind_mode();
    pg_stop();
    my $down = api_request(GET => '/admin/api/invoices/export');
    pg_start();
    is($down->status, 503, 'PostgreSQL down: 503');
    is(($down->json_or_undef // {})->{error}{code}, 'database_unavailable', 'PostgreSQL down: JSON error');
    ok($down->header('Retry-After'), 'PostgreSQL down: Retry-After');
}

done_testing();
