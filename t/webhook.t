# POST /stripe/webhook: the signature (Stripe's scheme, checked against a
# known vector first), every way a delivery is refused (400
# signature_invalid, nothing written, an [info] line saying why, never the
# secret), two secrets during a rotation, secrets from env:, the
# tolerance, what a verified body must be (400 event_invalid), methods
# and sizes, raw bodies (chunked, spooled to a file, UTF-8), PostgreSQL
# down (503, then Stripe's retry is stored), and the configuration
# (nginx -t).  No Stripe directives here: the webhook needs none.
# Ordering, duplicates and effects: t/webhook_order.t; with the fake
# Stripe end to end: t/webhook_stripe.t.
#
# /stripe/webhook          secret A
# /stripe/webhook-rotate   secrets B and C
# /stripe/webhook-strict   secret A, invoices_stripe_webhook_tolerance 10s
# /stripe/webhook-env      env:INVOICES_TEST_WHSEC_ENV
# /stripe/webhook-big      secret A, client_body_buffer_size 1k

use strict;
use warnings;
use Test::More;
use File::Temp ();
use Time::HiRes qw(time sleep);
use Invoices::Test;
use Invoices::Webhook;

#----------------------------------------------------------------------
# the test's signer, against a vector computed independently:
#   printf '%s' '1700000000.{"id":"evt_test"}' | openssl dgst -sha256 -hmac whsec_test

my $VECTOR = '14c4f43763339dcb1c15f41a1ff31a94f2f09f8de278f8b4392ca0d7cbcd257e';
is(sign('whsec_test', 1700000000, '{"id":"evt_test"}'), $VECTOR,
   'signer: the known vector (openssl dgst -sha256 -hmac)');
is(signature_header('{"id":"evt_test"}', secret => 'whsec_test', t => 1700000000),
   "t=1700000000,v1=$VECTOR", 'signer: the header is t=...,v1=...');

#----------------------------------------------------------------------
# configuration: nginx -t

my $cdir = File::Temp::tempdir('invoices-whconf-XXXXXX', TMPDIR => 1, CLEANUP => 1);
# (write_secret with a path: the file there, mode 0600 unless told)
my $s1 = write_secret("$cdir/whsec1", new_whsec());
my $s2 = write_secret("$cdir/whsec2", new_whsec());
my $s3 = write_secret("$cdir/whsec3", new_whsec());
my $s0400 = write_secret("$cdir/whsec0400", new_whsec(), 0400);
my $world = write_secret("$cdir/whsec-world", new_whsec(), 0644);
my $world_only = write_secret("$cdir/whsec-world-only", new_whsec(), 0604);
my $empty = "$cdir/whsec-empty";
{ open my $fh, '>', $empty or die; close $fh; chmod 0600, $empty; }
my $literal = new_whsec();

sub config_ok {
    my ($name, @loc) = @_;
    my ($rc, $out) = nginx_config_test(server_config => webhook_location(@loc));
    subtest "config good: $name" => sub {
        is($rc, 0, 'nginx -t succeeds') or diag $out;
        unlike($out, qr/\[(?:emerg|alert|crit)\]/, 'no [emerg], [alert] or [crit]');
    };
}

sub config_fails {
    my ($name, $re, @loc) = @_;
    my ($rc, $out) = nginx_config_test(server_config => webhook_location(@loc));
    subtest "config bad: $name" => sub {
        isnt($rc, 0, 'nginx -t fails') or diag $out;
        like($out, qr/\[emerg\][^\n]*$re/, 'an [emerg] line names the problem') or diag $out;
        unlike($out, qr/\Q$literal\E/, 'the secret is not in the output');
    };
}

{
    local $ENV{INVOICES_TEST_WHSEC_CONF} = new_whsec();
    config_ok('one secret file', secrets => ["file:$s1"]);
    config_ok('two secret files (a rotation)', secrets => ["file:$s1", "file:$s2"]);
    config_ok('a secret file with mode 0400', secrets => ["file:$s0400"]);
    config_ok('env: secret', secrets => ['env:INVOICES_TEST_WHSEC_CONF']);
    config_ok('a tolerance', secrets => ["file:$s1"], tolerance => '60s');
}
config_fails('invoices_stripe_webhook without a secret',
             qr/invoices_stripe_webhook_secret/, secrets => []);
config_fails('a secret given literally', qr/invoices_stripe_webhook_secret/,
             secrets => [$literal]);
config_fails('a secret file readable by all (0644)', qr/\Q$world\E|world|others/,
             secrets => ["file:$world"]);
config_fails('a secret file readable by others only (0604)',
             qr/\Q$world_only\E|world|others/, secrets => ["file:$world_only"]);
config_fails('a rotation where the second file is readable by all',
             qr/\Q$world\E|world|others/, secrets => ["file:$s1", "file:$world"]);
config_fails('a secret file that does not exist', qr/\Q$cdir\E\/nosuch/,
             secrets => ["file:$cdir/nosuch"]);
config_fails('an empty secret file', qr/invoices_stripe_webhook_secret|\Q$empty\E/,
             secrets => ["file:$empty"]);
config_fails('env: naming an unset variable', qr/INVOICES_TEST_WHSEC_UNSET/,
             secrets => ['env:INVOICES_TEST_WHSEC_UNSET']);
config_fails('three secrets', qr/invoices_stripe_webhook_secret/,
             secrets => ["file:$s1", "file:$s2", "file:$s3"]);
config_fails('a tolerance that is not a time', qr/invoices_stripe_webhook_tolerance/,
             secrets => ["file:$s1"], tolerance => 'soon');

#----------------------------------------------------------------------
# the server

my ($A, $B, $C, $E) = map { new_whsec() } 1 .. 4;
$ENV{INVOICES_TEST_WHSEC_ENV} = $E;
my %file = (A => secret_file($A), B => secret_file($B), C => secret_file($C));
start_server(server_config => join '',
    webhook_location(secrets => ["file:$file{A}"]),
    webhook_location(path => '/stripe/webhook-rotate',
                     secrets => ["file:$file{B}", "file:$file{C}"]),
    webhook_location(path => '/stripe/webhook-strict', secrets => ["file:$file{A}"],
                     tolerance => '10s'),
    webhook_location(path => '/stripe/webhook-env',
                     secrets => ['env:INVOICES_TEST_WHSEC_ENV']),
    webhook_location(path => '/stripe/webhook-big', secrets => ["file:$file{A}"],
                     extra => 'client_body_buffer_size 1k;'));
default_secret($A);

my $team = insert_team(name => 'Webhook team', stripe_customer_id => 'cus_WebhookTeam01');

# a fresh invoice event: what each delivery below carries (a new event id
# and a new invoice id each time, so that an accepted one shows)
sub fresh_event {
    my (%f) = @_;
    my $type = delete $f{type} // 'invoice.finalized';
    return invoice_event($type, stripe_invoice(customer => 'cus_WebhookTeam01', %f));
}

sub state_now { db_state() }

# accepted($name, $res, $event, [$result]): 200, the answer's shape, the
# event recorded, its invoice stored
sub accepted {
    my ($name, $res, $ev, $result) = @_;
    $result //= 'inserted';
    subtest "accepted: $name" => sub {
        is($res->status, 200, 'status 200') or diag $res->describe;
        is($res->header('Content-Type'), 'application/json; charset=utf-8', 'JSON');
        json_check($res, <<EOC);
\$.\@keys = ["received","result"]
received = true
result = "$result"
EOC
        my $inv = $ev->{data}{object};
        my ($erow, $row) = stored($ev->{id}, $inv->{id});
        ok($erow, 'the event is recorded');
        ok($row, 'the invoice is stored') or return;
        is($row->{status}, $inv->{status}, '... with its status');
        is($row->{amount}, $inv->{total}, '... and its total');
    };
}

# rejected($name, $res_sub): a 400 signature_invalid, nothing written, one
# [info] line "invoices: webhook rejected: ...", no secret anywhere
sub rejected {
    my ($name, $send, %o) = @_;
    my $code = $o{code} // 'signature_invalid';
    my $before = state_now();
    my $mark = error_log_mark();
    my $res = $send->();
    subtest "rejected ($code): $name" => sub {
        is($res->status, 400, 'status 400') or diag $res->describe;
        is($res->header('Content-Type'), 'application/json; charset=utf-8', 'JSON');
        json_check($res, <<EOC);
error.type = "invalid_request_error"
error.code = "$code"
error.message ~ \\S
EOC
        is(state_now(), $before, 'nothing written (webhook_events, invoices, teams)');
        if ($code eq 'signature_invalid') {
            sleep 0.05;
            my $log = error_log_since($mark);
            like($log, qr/\[info\][^\n]*invoices: webhook rejected: \S/,
                 'an [info] line says why') or diag $log;
        }
        for my $s ($A, $B, $C, $E) {
            ok(index($res->raw, $s) < 0, 'no secret in the answer');
        }
    };
    return $res;
}

#----------------------------------------------------------------------
# a good delivery

my $ev = fresh_event();
my $body = event_body($ev);
my $mark = error_log_mark();
accepted('signed with the configured secret', deliver($body), $ev);
unlike(error_log_since($mark), qr/webhook rejected/, '... and no "rejected" line');
is(sql_value('SELECT team_id FROM invoices WHERE stripe_invoice_id = '
             . quote($ev->{data}{object}{id})), $team->{id},
   '... the team is matched by the customer');

$ev = fresh_event();
accepted('no Api-Key needed, an Api-Key changes nothing',
         deliver(event_body($ev), headers => [['Api-Key', 'not-a-key']]), $ev);

#----------------------------------------------------------------------
# signature failures: each carries a new, otherwise good event

my $now = int time;
my @failures = (
    ['no Stripe-Signature header' => sub {
        deliver($_[0], signature => undef) }],
    ['an empty Stripe-Signature header' => sub {
        deliver($_[0], signature => '') }],
    ['two Stripe-Signature headers (each valid alone)' => sub {
        deliver($_[0], headers => [['Stripe-Signature', signature_header($_[0])]]) }],
    ['no t' => sub {
        deliver($_[0], signature => 'v1=' . sign($A, $now, $_[0])) }],
    ['no v1' => sub {
        deliver($_[0], signature => "t=$now") }],
    ['t not a number' => sub {
        deliver($_[0], signature => 't=abc,v1=' . sign($A, 'abc', $_[0])) }],
    ['t with trailing garbage' => sub {
        deliver($_[0], signature => "t=${now}x,v1=" . sign($A, "${now}x", $_[0])) }],
    ['stale t (now - 400 s, tolerance 300 s)' => sub {
        deliver($_[0], t => time - 400) }],
    ['stale t (a year ago)' => sub {
        deliver($_[0], t => time - 365 * 86400) }],
    ['future t (now + 400 s)' => sub {
        deliver($_[0], t => time + 400) }],
    ['body altered by one byte' => sub {
        my $sig = signature_header($_[0]);
        (my $b = $_[0]) =~ s/"total" : (\d)/"total" : @{[ ($1 + 1) % 10 ]}/ or die;
        deliver($b, signature => $sig) }],
    ['a byte appended to the body' => sub {
        deliver("$_[0] ", signature => signature_header($_[0])) }],
    ['the t of the header is not the signed one' => sub {
        my $t = int time;
        deliver($_[0], signature => "t=" . ($t - 1) . ",v1=" . sign($A, $t, $_[0])) }],
    ['signed with another secret' => sub {
        deliver($_[0], secret => new_whsec()) }],
    ['keyed without the whsec_ prefix' => sub {
        deliver($_[0], secret => substr($A, 6)) }],
    ['a v0 signature only (valid HMAC, other scheme)' => sub {
        my $t = int time;
        deliver($_[0], signature => "t=$t,v0=" . sign($A, $t, $_[0])) }],
    ['v1 in upper-case hex' => sub {
        my $t = int time;
        deliver($_[0], signature => "t=$t,v1=" . uc sign($A, $t, $_[0])) }],
    ['v1 one hex digit short' => sub {
        my $t = int time;
        deliver($_[0], signature => "t=$t,v1=" . substr(sign($A, $t, $_[0]), 0, 63)) }],
    ['v1 of the right length, not the HMAC' => sub {
        deliver($_[0], signature => 't=' . int(time) . ',v1=' . ('0' x 64)) }],
    ['a secret of another location (rotation B at the A location)' => sub {
        deliver($_[0], secret => $B) }],
);
for my $f (@failures) {
    my ($name, $send) = @$f;
    my $b = event_body(fresh_event());
    rejected($name, sub { $send->($b) });
}

# what is not a failure
$ev = fresh_event();
$now = int time;
accepted('several v1: the second one matches',
         deliver(event_body($ev), signature => "t=$now,v1=" . ('a' x 64) . ',v1='
                 . sign($A, $now, event_body($ev))), $ev);
$ev = fresh_event();
$now = int time;
accepted('a v0 beside a good v1 is ignored',
         deliver(event_body($ev), signature => "t=$now,v0=" . ('b' x 64) . ',v1='
                 . sign($A, $now, event_body($ev))), $ev);
$ev = fresh_event();
accepted('t = now - 250 s is within the 300 s tolerance',
         deliver(event_body($ev), t => time - 250), $ev);
$ev = fresh_event();
accepted('t = now + 200 s is within the tolerance too',
         deliver(event_body($ev), t => time + 200), $ev);

# invoices_stripe_webhook_tolerance 10s
$ev = fresh_event();
$body = event_body($ev);
my $sig = signature_header($body, t => time - 60);
rejected('t = now - 60 s where the tolerance is 10 s',
         sub { deliver($body, path => '/stripe/webhook-strict', signature => $sig) });
accepted('... the same delivery where the tolerance is the default 300 s',
         deliver($body, signature => $sig), $ev);
$ev = fresh_event();
accepted('t = now - 3 s where the tolerance is 10 s',
         deliver(event_body($ev), path => '/stripe/webhook-strict', t => time - 3), $ev);

#----------------------------------------------------------------------
# two secrets (a rotation), env:

for my $case (['the old secret (B)', $B], ['the new secret (C)', $C]) {
    $ev = fresh_event();
    accepted("rotation: signed with $case->[0]",
             deliver(event_body($ev), path => '/stripe/webhook-rotate',
                     secret => $case->[1]), $ev);
}
rejected('rotation: signed with a third secret (A)', sub {
    deliver(event_body(fresh_event()), path => '/stripe/webhook-rotate', secret => $A) });
rejected('rotation: signed with an unknown secret', sub {
    deliver(event_body(fresh_event()), path => '/stripe/webhook-rotate', secret => new_whsec()) });
$ev = fresh_event();
accepted('rotation: v1 with A, then v1 with C (as Stripe sends both during a roll)',
         deliver(event_body($ev), path => '/stripe/webhook-rotate', secrets => [$A, $C]), $ev);
$ev = fresh_event();
accepted('env: the secret from the environment',
         deliver(event_body($ev), path => '/stripe/webhook-env', secret => $E), $ev);
rejected('env: another secret', sub {
    deliver(event_body(fresh_event()), path => '/stripe/webhook-env', secret => $A) });

#----------------------------------------------------------------------
# a verified body that is not a Stripe event: 400 event_invalid

my $inv_ok = sub { stripe_invoice(customer => 'cus_WebhookTeam01', @_) };
my $J = JSON::PP->new->utf8->canonical;
my @not_events = (
    ['not JSON', 'this is not json'],
    ['an empty body', ''],
    ['a JSON array', '[{"id":"evt_1","type":"invoice.paid"}]'],
    ['JSON with trailing garbage', $J->encode(fresh_event()) . 'x'],
    ['no id', $J->encode({ %{ fresh_event() }, id => undef })],
    ['an id that is not evt_...', $J->encode({ %{ fresh_event() }, id => 'in_123' })],
    ['an id that is a number', $J->encode({ %{ fresh_event() }, id => 12 })],
    ['no type', do { my $e = fresh_event(); delete $e->{type}; $J->encode($e) }],
    ['a type that is not a string', $J->encode({ %{ fresh_event() }, type => ['invoice.paid'] })],
    ['no created', do { my $e = fresh_event(); delete $e->{created}; $J->encode($e) }],
    ['created a string', $J->encode({ %{ fresh_event() }, created => '1700000000' })],
    ['created a fraction', do { my $e = $J->encode(fresh_event()); $e =~ s/"created":(\d+),"data"/"created":$1.5,"data"/ or die; $e }],
    ['invoice event without data', do { my $e = fresh_event(); delete $e->{data}; $J->encode($e) }],
    ['invoice event without data.object', $J->encode({ %{ fresh_event() }, data => {} })],
    ['invoice event whose object is a string', $J->encode({ %{ fresh_event() }, data => { object => 'in_1' } })],
    ['invoice: id not in_...', $J->encode(invoice_event('invoice.paid', $inv_ok->(id => 'ch_1ABC', status => 'paid')))],
    ['invoice: no id', $J->encode(invoice_event('invoice.paid', $inv_ok->(status => 'paid', delete => ['id'])))],
    ['invoice: unknown status', $J->encode(invoice_event('invoice.updated', $inv_ok->(status => 'settled')))],
    ['invoice: no status', $J->encode(invoice_event('invoice.updated', $inv_ok->(delete => ['status'])))],
    ['invoice: total a string', $J->encode(invoice_event('invoice.updated', $inv_ok->(total => '3300')))],
    ['invoice: no total', $J->encode(invoice_event('invoice.updated', $inv_ok->(delete => ['total'])))],
    ['invoice: no customer', $J->encode(invoice_event('invoice.updated', $inv_ok->(delete => ['customer'])))],
    ['invoice: customer null', $J->encode(invoice_event('invoice.updated', $inv_ok->(customer => undef)))],
    ['invoice: customer object without id', $J->encode(invoice_event('invoice.updated', $inv_ok->(customer => { object => 'customer' })))],
    ['invoice: no currency', $J->encode(invoice_event('invoice.updated', $inv_ok->(delete => ['currency'])))],
    ['invoice: no created', $J->encode(invoice_event('invoice.updated', $inv_ok->(delete => ['created'])))],
    ['invoice: created a string', $J->encode(invoice_event('invoice.updated', $inv_ok->(created => 'yesterday')))],
    ['invoice: invoice_pdf a number', $J->encode(invoice_event('invoice.updated', $inv_ok->(invoice_pdf => 42)))],
    ['invoice: no status_transitions', $J->encode(invoice_event('invoice.updated', $inv_ok->(delete => ['status_transitions'])))],
    ['invoice: status_transitions a string', $J->encode(invoice_event('invoice.updated', $inv_ok->(status_transitions => 'none')))],
    ['invoice: status_transitions.paid_at a string', $J->encode(invoice_event('invoice.paid', $inv_ok->(status => 'paid', transitions => { paid_at => 'now' })))],
    ['invoice.deleted whose object is no invoice', $J->encode(invoice_event('invoice.deleted', { id => 'in_1X', object => 'invoice', deleted => JSON::PP::true }))],
    ['another event type without data.object', do { my $e = invoice_event('customer.created', {}); delete $e->{data}; $J->encode($e) }],
);
for my $n (@not_events) {
    my ($name, $b, $todo) = @$n;
    TODO: {
        local $TODO = $todo;
        rejected($name, sub { deliver($b) }, code => 'event_invalid');
    }
}

#----------------------------------------------------------------------
# methods, size

for my $m (qw(GET PUT DELETE PATCH OPTIONS HEAD)) {
    my $b = $m =~ /^(PUT|PATCH)$/ ? event_body(fresh_event()) : undef;
    my $res = request($m => '/stripe/webhook',
                      defined $b ? ['Stripe-Signature' => signature_header($b)] : [], $b);
    subtest "$m /stripe/webhook: 405" => sub {
        is($res->status, 405, 'status 405') or diag $res->describe;
        is($res->header('Allow'), 'POST', 'Allow: POST');
        if ($m eq 'HEAD') {
            is($res->raw_body, '', 'HEAD: no body');
        } else {
            is($res->header('Content-Type'), 'application/json; charset=utf-8', 'JSON');
            json_check($res, <<'EOC');
error.type = "invalid_request_error"
error.code = "method_not_allowed"
EOC
        }
    };
}

{
    my $before = state_now();
    my $pad = 'x' x (1024 * 1024);
    my $e = fresh_event(description => $pad);
    my $b = event_body($e);
    my $res = deliver($b);
    subtest 'a body over client_max_body_size (1m): 413 JSON' => sub {
        is($res->status, 413, 'status 413') or diag $res->describe;
        is($res->header('Content-Type'), 'application/json; charset=utf-8', 'JSON');
        unlike($res->body, qr/<html/i, 'no HTML page');
        json_check($res, 'error.code = "body_too_large"');
        is(state_now(), $before, 'nothing written');
    };
}

#----------------------------------------------------------------------
# raw bodies: the signature covers the exact bytes, however they came

sub chunked_request {
    my ($path, $b, $size, %o) = @_;
    my $sig = $o{signature} // signature_header($b);
    my $raw = "POST $path HTTP/1.1\r\nHost: localhost\r\n"
            . "Content-Type: application/json; charset=utf-8\r\n"
            . "Stripe-Signature: $sig\r\nTransfer-Encoding: chunked\r\n"
            . "Connection: close\r\n\r\n";
    for (my $off = 0; $off < length $b; $off += $size) {
        my $c = substr $b, $off, $size;
        $raw .= sprintf("%x\r\n", length $c) . "$c\r\n";
    }
    $raw .= "0\r\n\r\n";
    return raw_request($raw);
}

$ev = fresh_event();
accepted('a chunked body (chunks of 7 bytes)',
         chunked_request('/stripe/webhook', event_body($ev), 7), $ev);

# ~200 KB: 400 lines of ~500 bytes; spooled to a temporary file where
# client_body_buffer_size is 1k
sub big_event {
    my @lines = map { {
        id => new_id('il'), object => 'line_item', amount => 10,
        currency => 'eur', description => "line $_ " . ('z' x 400),
        type => 'invoiceitem', quantity => 1,
    } } 1 .. 400;
    return fresh_event(total => 4000,
                       lines => { object => 'list', data => \@lines,
                                  has_more => JSON::PP::false, total_count => 400,
                                  url => '/v1/invoices/x/lines' });
}
$ev = big_event();
$body = event_body($ev);
cmp_ok(length $body, '>', 200_000, 'the large event is over 200 KB');
accepted('a 200 KB body spooled to a file (client_body_buffer_size 1k)',
         deliver($body, path => '/stripe/webhook-big'), $ev);
my @tmp = glob(server_prefix() . '/tmp/client_body/*');
is(scalar @tmp, 0, '... and the temporary file is gone');
$ev = big_event();
accepted('a 200 KB body, chunked (4 KB chunks), spooled to a file',
         chunked_request('/stripe/webhook-big', event_body($ev), 4096), $ev);
$ev = big_event();
accepted('a 200 KB body at the default buffer size',
         deliver(event_body($ev)), $ev);
{
    my $b = event_body(big_event());
    my $sig = signature_header($b);
    my $pos = rindex($b, 'line 400 ') + 5;
    my $bad = $b;
    substr($bad, $pos, 1) = '5';
    rejected('a 200 KB body altered near its end', sub {
        deliver($bad, path => '/stripe/webhook-big', signature => $sig) });
    rejected('a 200 KB chunked body altered near its end', sub {
        chunked_request('/stripe/webhook-big', $bad, 4096, signature => $sig) });
}
{
    my $e = fresh_event(customer_name => "Zo\x{eb} \x{c5}str\x{f6}m \x{2014} \x{6771}\x{4eac}");
    my $b = event_body($e);
    like($b, qr/\xc3\xab/, 'the UTF-8 body has multi-byte characters');
    accepted('a body with UTF-8 characters', deliver($b), $e);
    my $compact = fresh_event();
    accepted('a compact body (no whitespace)', deliver($J->encode($compact)), $compact);
}

#----------------------------------------------------------------------
# PostgreSQL down: 503 (Stripe retries), nothing stored; the retry after
# the restart is stored

{
    my $e = fresh_event(status => 'paid');
    my $b = event_body($e);
    my $sig = signature_header($b);
    pg_stop();
    my $res = deliver($b, signature => $sig);
    my $bad = deliver(event_body(fresh_event()), secret => new_whsec());
    my $res2 = deliver($b, signature => $sig);
    pg_start();
    subtest 'PostgreSQL down: 503 JSON with Retry-After' => sub {
        is($res->status, 503, 'status 503') or diag $res->describe;
        is($res->header('Content-Type'), 'application/json; charset=utf-8', 'JSON');
        like($res->header('Retry-After') // '', qr/^[1-9]\d*$/, 'Retry-After: seconds');
        json_check($res, 'error.type = "api_error"');
        unlike($res->body, qr/received/, 'not "received"');
        is($res2->status, 503, "Stripe's quick retry during the outage: 503 too");
    };
    is($bad->status, 400, 'PostgreSQL down: a bad signature is still 400');
    my ($erow, $irow) = stored($e->{id}, $e->{data}{object}{id});
    ok(!$erow, 'after the outage: the event was not recorded');
    ok(!$irow, '... nor its invoice stored');
    accepted("PostgreSQL back: Stripe's retry of the same delivery is stored",
             deliver($b, signature => $sig), $e);
    is(result_of(deliver($b, signature => $sig)), 'duplicate',
       '... and one more retry is a duplicate');
}

#----------------------------------------------------------------------
# no sync where no Stripe key is configured (this server has none)

{
    my $before = state_now();
    my $res = api_request(POST => '/admin/api/invoices/sync');
    subtest 'POST /admin/api/invoices/sync without Stripe configured is no sync' => sub {
        like($res->status, qr/^4\d\d$/, 'a 4xx') or diag $res->describe;
        json_check($res, "error.type = \"invalid_request_error\"\nseen absent");
        is(state_now(), $before, 'nothing written');
    };
}

#----------------------------------------------------------------------
# the secrets are nowhere in the logs

for my $log (qw(error.log access.log)) {
    my $text = do { local $/; open my $fh, '<', server_prefix() . "/logs/$log" or die; <$fh> };
    ok(!grep({ index($text, $_) >= 0 } $A, $B, $C, $E),
       "no webhook secret in nginx's $log");
}

my @off = kept_counts_off();
is(scalar @off, 0, 'the kept counts (total, per group) agree with the rows')
    or diag join "\n", @off;

done_testing();
