# The harness tests itself: block parser, JSON checks, HTTP parsing,
# server lifecycle with a plain nginx config (no module), SQL helpers,
# nginx_config_test, and the end-of-file error-log check.

use strict;
use warnings;
use Test::More;
use File::Temp ();
use Invoices::Test;
use Invoices::Test::Blocks qw(parse_blocks);
use Invoices::Test::JSONCheck qw(decode_typed parse_check_lines run_check);

my $repo = $ENV{INVOICES_REPO} // '.';

subtest 'block parser' => sub {
    my $text = <<'EOT';
comments before the first block are ignored
=== first: inline and multi-line
--- request
GET /admin/api/invoices?limit=abc

a body line
--- more_headers
Api-Key: test-key
X-Empty:


--- error_code: 400
--- response_body_like: "param":"limit"
--- json_path
error.param = "limit"
# a comment
=== second: eval
--- raw_request eval
"GET / HTTP/1.0\r\n\r\n"
--- error_code: 200
EOT
    my @b = parse_blocks($text);
    is(scalar @b, 2, 'two blocks');
    is($b[0]{name}, 'first: inline and multi-line', 'title');
    is($b[0]{line}, 2, 'line number of the block');
    is($b[0]{sections}{request}{value},
       "GET /admin/api/invoices?limit=abc\n\na body line", 'multi-line value');
    is($b[0]{sections}{more_headers}{value}, "Api-Key: test-key\nX-Empty:",
       'trailing blank lines dropped');
    is($b[0]{sections}{error_code}{value}, '400', 'inline value');
    is($b[0]{sections}{response_body_like}{value}, '"param":"limit"',
       'inline value with quotes and colons');
    is($b[0]{sections}{json_path}{value}, "error.param = \"limit\"\n# a comment",
       'json_path value');
    is($b[1]{sections}{raw_request}{value}, "GET / HTTP/1.0\r\n\r\n", 'eval modifier');
    is_deeply($b[0]{order}, [qw(request more_headers error_code
                                response_body_like json_path)], 'section order');

    ok(!eval { parse_blocks("=== x\n--- reqest\nGET /\n"); 1 }, 'unknown section dies');
    like($@, qr/unknown section '--- reqest'/, '... naming it');
    ok(!eval { parse_blocks("=== x\n--- error_code: 1\n--- error_code: 2\n"); 1 },
       'duplicate section dies');
    ok(!eval { parse_blocks("=== x\n--- error_code: 1\nstray text\n"); 1 },
       'text outside a section dies');
    ok(!eval { parse_blocks("=== x\n--- request eval\n1 +\n"); 1 },
       'broken eval dies');
};

subtest 'json checks' => sub {
    my $doc = decode_typed('{"a":3300,"b":"3300","c":null,"d":[1,2,3],'
                         . '"e":{"y":1,"x":"s"},"f":1.5,"g":true}');
    my %want = (
        'a = 3300' => 1, 'a = "3300"' => 0, 'b = "3300"' => 1, 'b = 3300' => 0,
        'a : integer' => 1, 'a : number' => 1, 'b : integer' => 0,
        'b : string' => 1, 'c : null' => 1, 'c : string|null' => 1,
        'c = null' => 1, 'c exists' => 1, 'z absent' => 1, 'z exists' => 0,
        'c absent' => 0, 'd.# = 3' => 1, 'd.# = 2' => 0, 'd.2 = 3' => 1,
        'd.3 exists' => 0, 'e.@keys = ["x","y"]' => 1,
        'e = {"x":"s","y":1}' => 1, 'e = {"x":"s","y":"1"}' => 0,
        'e = {"x":"s"}' => 0, 'e.x ~ ^s$' => 1, 'e.x !~ ^s$' => 0,
        'a ~ ^\d+$' => 1, 'e ~ .' => 0, 'f : integer' => 0, 'f : number' => 1,
        'g = true' => 1, 'g : boolean' => 1, '$ : object' => 1,
        '$.a = 3300' => 1, 'a != 3300' => 0, 'a != 3301' => 1,
        'b.# = 4' => 1,
    );
    for my $line (sort keys %want) {
        my ($c) = parse_check_lines($line);
        my ($ok) = run_check($doc, $c);
        is($ok ? 1 : 0, $want{$line}, "'$line' is " . ($want{$line} ? 'true' : 'false'));
    }
    ok(!eval { parse_check_lines('a == 1'); 1 }, 'malformed check dies');
    ok(!eval { parse_check_lines('a : int'); 1 }, 'unknown type dies');
    ok(!eval { parse_check_lines('a = {bad'); 1 }, 'bad expected JSON dies');
    my $u = decode_typed(qq({"n":"caf\xc3\xa9"}));
    my ($c) = parse_check_lines(qq(n = "caf\xc3\xa9"));
    ok((run_check($u, $c))[0], 'UTF-8 bytes in a check compare as characters');
};

subtest 'response parser' => sub {
    my $r = Invoices::Test::Response->parse(
        "HTTP/1.1 200 OK\r\nContent-Type: a/b\r\nX-A: 1\r\nx-a: 2\r\n"
      . "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3;ext=1\r\n!!!\r\n0\r\n\r\n");
    is($r->status, 200, 'status');
    is($r->header('content-type'), 'a/b', 'header lookup is case-insensitive');
    is($r->header('X-A'), '1, 2', 'repeated header joined');
    is($r->body, 'hello!!!', 'chunked body decoded');
    my $e = Invoices::Test::Response->parse('');
    is($e->status, 0, 'no response: status 0');
    ok($e->error, '... with an error');
};

subtest 'environment check' => sub {
    my ($st, $out, $err) = Invoices::Test::run_cmd(
        ['env', '-i', "PATH=$ENV{PATH}", $^X, "-I$repo/t/lib", '-MTest::More',
         '-MInvoices::Test', '-e', 'start_server()']);
    isnt($st, 0, 'start_server without the environment dies');
    like($err, qr/run through make test or scripts\/test/, '... saying how to run');
};

# A plain nginx (no module) through the harness.
start_server(
    module        => 0,
    server_config => '        default_type application/json;',
    location      => q{        location = /hello { return 200 '{"hello":"world","n":3}'; }},
);
my $info = server_info();
ok(-d $info->{prefix}, 'prefix exists');
like($info->{port}, qr/^\d+$/, 'port chosen');
ok(kill(0, $info->{pid}), 'nginx runs');

my $res = request(GET => '/hello');
is($res->status, 200, 'plain nginx answers through the harness');
is($res->body, '{"hello":"world","n":3}', 'body');
is($res->header('Content-Type'), 'application/json', 'content type');
json_check($res, "hello = \"world\"\nn = 3\nn : integer\n\$.\@keys = [\"hello\",\"n\"]",
           'json_check');

$res = request(HEAD => '/hello');
is($res->status, 200, 'HEAD');
is($res->raw_body // $res->body, '', 'HEAD: nothing after the header');

$res = raw_request("GET /hello HTTP/1.0\r\n\r\n");
is($res->status, 200, 'raw_request');
$res = raw_request("BROKEN\r\n\r\n");
is($res->status, 400, 'raw malformed request: nginx says 400');

# SQL helpers, on the migrated database.
like(db_name(), qr/^invoices_t_/, 'database created');
is(sql_value("SELECT count(*) FROM invoices"), 0, 'migrated: invoices table empty');
my $evil = "O'Brien \"x\" \\ ; DROP TABLE teams; -- \x{e9}\x{65e5}";
my $team = insert_team(name => $evil);
like($team->{id}, qr/^[0-9a-f]{24}$/, 'team id defaulted');
is(sql_json("SELECT name FROM teams WHERE id = " . quote($team->{id}))->[0]{name},
   $evil, 'quote() round-trips quotes, backslashes and UTF-8');
my @rows = sql("SELECT 1, NULL, 'a\nb' UNION ALL SELECT 2, 'x', ''");
is_deeply(\@rows, [[1, undef, "a\nb"], [2, 'x', '']], 'sql() rows, NULL, newlines');
my $fp = db_fingerprint();
my $inv = insert_invoice(team_id => $team->{id}, amount => 3300,
                         stripe_created_at => '2023-11-06T17:07:28.550+02:00');
is($inv->{amount}, 3300, 'insert_invoice returns the row');
is(sql_value("SELECT to_char(stripe_created_at AT TIME ZONE 'UTC', "
           . "'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') FROM invoices"),
   '2023-11-06T15:07:28.550Z', 'timestamps with offsets stored in UTC');
isnt(db_fingerprint(), $fp, 'db_fingerprint sees an insert');
my $fp2 = db_fingerprint();
sql_do("UPDATE invoices SET status = 'void'");
isnt(db_fingerprint(), $fp2, 'db_fingerprint sees an update');
like(object_id(0x65490130), qr/^65490130[0-9a-f]{16}$/, 'object_id');

# Blocks against the plain server; a block that must fail runs as TODO,
# and we check that it did fail (a check that cannot fail is no check).
my $hook_ran = 0;
sub harness_hook { my ($block) = @_; $hook_ran = $block->{name} }
my @blocks = parse_blocks(<<'EOT');
=== plain: setup SQL runs before the request
--- setup
INSERT INTO teams (name) VALUES ('made by setup');
INSERT INTO teams (name) VALUES ('made by setup, 2');
--- request
GET /hello
--- error_code: 200
=== plain: setup hook runs before the request
--- setup: harness_hook
--- setup_sql
INSERT INTO teams (name) VALUES ('made by setup_sql');
--- request
GET /hello
--- error_code: 200
=== plain: hello
--- request
GET /hello
--- error_code: 200
--- response_headers
Content-Type: application/json
!X-Cache
--- response_headers_like
Content-Length: ^\d+$
--- response_body: {"hello":"world","n":3}
--- response_body_like: "hello":"world"
--- json_path
hello = "world"
n : integer
--- no_error_log
[emerg]
=== plain: default headers reach the server
--- request
GET /hello
--- more_headers
X-Mine: 1
--- error_code: 200
=== plain: this block must fail (status)
--- request
GET /hello
--- error_code: 404
--- todo: deliberately wrong
=== plain: this block must fail (json type)
--- request
GET /hello
--- json_path
n = "3"
--- todo: deliberately wrong
=== plain: this block must fail (absent header)
--- request
GET /hello
--- response_headers
!Content-Type
--- todo: deliberately wrong
EOT
run_blocks(blocks => \@blocks, default_headers => 'Api-Key: test-key');
my @details = Test::More->builder->details;
my @last3 = @details[-3 .. -1];
is(scalar(grep { !$_->{actual_ok} } @last3), 3, 'the three wrong blocks failed');
ok(!grep({ !$_->{actual_ok} } @details[-7 .. -4]), 'the good blocks passed');
is(sql_value("SELECT count(*) FROM teams WHERE name LIKE 'made by setup%'"), 3,
   '--- setup and --- setup_sql ran their SQL');
is($hook_ran, 'plain: setup hook runs before the request', '--- setup: NAME calls main::NAME');

# nginx -t through the harness
my ($rc, $out) = nginx_config_test(module => 0, location => '        location / { }');
is($rc, 0, 'nginx_config_test: good config') or diag $out;
($rc, $out) = nginx_config_test(module => 0,
                                location => '        location / { no_such_directive; }');
isnt($rc, 0, 'nginx_config_test: bad config fails');
like($out, qr/\[emerg\].*unknown directive "no_such_directive"/, '... with [emerg]');

# The end-of-file check: a child test file whose error log gets an
# [alert] must fail, and must still stop nginx and drop its database.
my $child = File::Temp->new(SUFFIX => '.t');
print $child <<'EOT';
use strict; use warnings; use Test::More; use Invoices::Test;
start_server(module => 0, location => '        location / { return 204; }');
print "DB=", db_name(), " PID=", server_info()->{pid}, "\n";
open my $fh, '>>', server_info()->{error_log} or die;
print $fh "2024/01/01 00:00:00 [alert] 1#1: fake alert for the harness test\n";
close $fh;
ok(1, 'child runs');
done_testing();
EOT
close $child;
my ($st, $cout, $cerr) = Invoices::Test::run_cmd([$^X, "-I$repo/t/lib", "$child"],
    env => { INVOICES_TEST_KEEP => '0', TEST_NGINX_USE_VALGRIND => '0' });
isnt($st, 0, 'a file whose error log has [alert] fails');
like($cout, qr/not ok \d+ - no \[alert\], \[crit\] or \[emerg\] in the error log/,
     '... through the final check') or diag "$cout\n$cerr";
like($cerr, qr/fake alert/, '... showing the line');
my ($cdb, $cpid) = $cout =~ /DB=(\S+) PID=(\d+)/;
ok($cdb && !sql_value("SELECT 1 FROM pg_database WHERE datname = " . quote($cdb)),
   "child's database dropped");
ok($cpid && !kill(0, $cpid), "child's nginx stopped");

done_testing();
