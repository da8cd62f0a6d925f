# The admin console (ngx_http_invoices_module/console/) in a real browser:
# Debian's chromium, headless, driven by t/browser/console.mjs with
# playwright-core (installed by `scripts/deps browser`, which scripts/test
# runs).  This file serves the console as scripts/run does (its location
# includes docs/invoices-console.conf), seeds invoices (one whose customer
# name is HTML), makes a write key and a read key, tells the fake Stripe to
# decline one payment and to answer slowly, runs the script, and turns each
# JSON line it prints into a test.  Then it checks what the browser did
# from the other side: one void and one create at the fake Stripe, each
# under the console's Idempotency-Key, the audit records, no key in the
# access log.  A browser that cannot run fails the file: it is never
# skipped.  The screenshots of the list and of one invoice go to
# INVOICES_TEST_OUTPUT (default build/test-output)/console/.

use strict;
use warnings;
use utf8;
use Test::More;
use JSON::PP ();
use File::Path qw(make_path);
use Time::HiRes qw(time);
use Invoices::Test;

my $repo = $ENV{INVOICES_REPO} // die "INVOICES_REPO is not set: run through scripts/test\n";
my $WRITE = 'console-write-key-7f3a9c21';
my $READ = 'console-read-key-0b8e44d6';
my $XSS = '<img src=x onerror=alert(1)>';

my $started = time;
start_server(stripe => 1, keys => "ops write $WRITE\nreader read $READ\n",
             server_config => <<CONF);
        location /admin/console/ {
            alias $repo/ngx_http_invoices_module/console/;
            include $repo/docs/invoices-console.conf;
        }
CONF

my $J = JSON::PP->new->utf8->canonical;
binmode(Test::More->builder->$_, ':encoding(UTF-8)') for qw(output failure_output todo_output);
my $acme = linked_customer(id => 'cus_ConsoleAcme0001', name => 'Acme',
                           payment_method => 'pm_card_visa');
my $globex = insert_team(name => 'Globex Corp');

sub as_write {
    my ($method, $path, $body, @h) = @_;
    return request($method, $path, [['Api-Key', $WRITE], @h,
                                    defined $body ? (['Content-Type', 'application/json']) : ()],
                   $body);
}

#----------------------------------------------------------------------
# the invoices: 24 in the table directly, older, and 2 made through the
# API (open, in the fake Stripe, so they can be acted on)

my @statuses = qw(paid open paid void uncollectible draft paid open);
for my $i (1 .. 24) {
    insert_invoice(
        stripe_invoice_id => sprintf('in_ConsoleSeed%04d', $i),
        status => $statuses[$i % @statuses],
        amount => 1000 + 100 * $i,
        currency => $i % 5 ? 'eur' : 'usd',
        number => sprintf('SEED-%04d', $i),
        customer_name => $i == 3 ? $XSS : "Customer $i",
        customer_email => "billing$i\@example.com",
        team_id => $i % 2 ? $acme->{team}{id} : $globex->{id},
        stripe_customer_id => $i % 2 ? $acme->{customer} : undef,
        hosted_invoice_url => "https://invoice.stripe.com/i/seed$i",
        stripe_created_at => \"timestamptz '2026-11-01 12:00:00+00' - interval '$i hours'",
    );
}

sub create_open {
    my ($amount) = @_;
    my $res = as_write(POST => '/admin/api/invoices',
                       $J->encode({ items => [{ name => 'Console', amount => $amount }],
                                    customer => $acme->{customer} }));
    is($res->status, 201, "an open invoice of $amount through the API") or diag $res->describe;
    my $in = ($res->json_or_undef // {})->{id} // 'in_none';
    return (sql_value('SELECT id FROM invoices WHERE stripe_invoice_id = ' . quote($in)) // 'none', $in);
}
my ($void_id, $void_in) = create_open(1200);
my ($pay_id, $pay_in) = create_open(1500);

my $list = as_write(GET => '/admin/api/invoices?limit=100')->json_or_undef // {};
my @order = map { $_->{_id} } @{ $list->{invoices} || [] };
is(scalar @order, 26, 'the list holds the 26 invoices');
my ($xss_id) = map { $_->{_id} } grep { ($_->{customerName} // '') eq $XSS } @{ $list->{invoices} };
sub count_of { 0 + sql_value("SELECT count(*) FROM invoices WHERE status = '$_[0]'") }

# Stripe declines the payment of one of them, and answers slowly, so
# that the console's buttons are seen disabled while a request is in flight
fake_config({ latency_ms => 400,
              faults => [{ path => "POST /v1/invoices/$pay_in/pay", status => 402 }] });
fake_control(DELETE => '/_fake/requests');

my $out = ($ENV{INVOICES_TEST_OUTPUT} // "$repo/build/test-output") . '/console';
make_path($out);
unlink glob "$out/*.png";

my %T = (
    base => 'http://127.0.0.1:' . server_port(),
    writeKey => $WRITE, readKey => $READ,
    total => 26, order => \@order,
    openCount => count_of('open'), paidCount => count_of('paid'),
    xssId => $xss_id, xssName => $XSS,
    voidId => $void_id, voidInvoiceId => $void_in, voidAmountText => "\x{20ac}12.00",
    payId => $pay_id, customer => $acme->{customer},
    createdAmountText => "\x{20ac}43.21",
    outDir => $out,
    timeFactor => time_factor(),
);

#----------------------------------------------------------------------
# the console's own answers, as any client gets them

my $CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        . "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";
for ([ '/admin/console/', 200, qr{^text/html; charset=utf-8$} ],
     [ '/admin/console/console.js', 200, qr{^text/javascript; charset=utf-8$} ],
     [ '/admin/console/console.css', 200, qr{^text/css; charset=utf-8$} ],
     [ '/admin/console/favicon.svg', 200, qr{^image/svg\+xml$} ],
     [ '/admin/console/nothing-here', 404, undef ]) {
    my ($path, $status, $type) = @$_;
    my $res = request(GET => $path, []);
    subtest "GET $path: $status with the console's headers" => sub {
        is($res->status, $status, "status $status");
        like($res->header('Content-Type') // '', $type, 'Content-Type') if $type;
        is($res->header('Content-Security-Policy'), $CSP, 'Content-Security-Policy');
        is($res->header('X-Content-Type-Options'), 'nosniff', 'X-Content-Type-Options');
        is($res->header('Referrer-Policy'), 'no-referrer', 'Referrer-Policy');
    };
}
my $html = request(GET => '/admin/console/', [])->body // '';
unlike($html, qr/<script(?![^>]*\bsrc=)[^>]*>|\sstyle=|\son[a-z]+=/i,
       'index.html: no inline script, style attribute or event handler');
for my $f (qw(console.js index.html)) {
    my $text = request(GET => "/admin/console/$f", [])->body // '';
    unlike($text, qr/\binnerHTML\b|\bouterHTML\b|insertAdjacentHTML|createContextualFragment|DOMParser|document\.write|\beval\(/,
           "$f: no HTML parsed from strings, no eval");
    unlike($text, qr{(?:src|href)=["']?(?:https?:)?//}i, "$f: nothing loaded from elsewhere");
}

#----------------------------------------------------------------------
# the browser

my $node = "$repo/t/browser/node_modules/playwright-core";
ok(-d $node, 'playwright-core is installed in t/browser/node_modules (scripts/deps browser)')
    or diag 'run: scripts/deps browser';
ok(-x '/usr/bin/chromium', 'Debian\'s chromium is installed (scripts/deps browser)');

{
    local $ENV{CONSOLE_TEST} = $J->encode(\%T);
    my $browser_started = time;
    my $pid = open(my $fh, '-|', 'node', "$repo/t/browser/console.mjs")
        // die "cannot run node: $!";
    my ($done, @shots, $checks);
    local $SIG{ALRM} = sub { kill 'KILL', $pid; die "the browser script took over 300 s\n" };
    alarm 300 * time_factor();
    my $ok = eval {
        while (my $line = <$fh>) {
            chomp $line;
            my $r = eval { $J->decode($line) };
            if (!$r) {
                diag "console.mjs: $line";
                next;
            }
            if ($r->{done}) {
                $done = 1;
            } elsif (defined $r->{screenshot}) {
                push @shots, $r->{screenshot};
            } else {
                $checks++;
                ok($r->{ok}, "browser: $r->{name}") or diag $r->{diag} // '';
            }
        }
        1;
    };
    alarm 0;
    my $err = $@;
    close $fh;
    my $status = $? >> 8;
    ok($ok, 'the browser script finished in time') or diag $err;
    ok($done && $status == 0, 'the browser script ran to its end (exit 0)')
        or diag "exit status $status";
    cmp_ok($checks // 0, '>=', 60, 'the browser script made its checks');
    for my $name (qw(console-list.png console-invoice.png)) {
        my $path = "$out/$name";
        ok(-s $path && (grep { $_ eq $path } @shots), "screenshot $path")
            and note "screenshot: $path";
    }
    note sprintf 'the browser part took %.1f s', time - $browser_started;
}

#----------------------------------------------------------------------
# what the browser did, seen from the fake Stripe and the database

my @voids = grep { !$_->{replayed} } fake_requests(qr{^POST /v1/invoices/\Q$void_in\E/void$});
is(scalar @voids, 1, 'the fake Stripe got exactly one void');
is(sql_value('SELECT status FROM invoices WHERE stripe_invoice_id = ' . quote($void_in)), 'void',
   'the voided invoice is void in the table');
my @audit = sql("SELECT key_name, status, idempotency_key FROM invoice_actions"
                . " WHERE action = 'void' AND stripe_invoice_id = " . quote($void_in));
is(scalar @audit, 1, 'one void recorded');
is($audit[0][0] // '', 'ops', '... by the write key (ops)');
like($audit[0][2] // '', qr/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\z/,
     '... under the Idempotency-Key the console made (a random UUID)');
is(sql_value("SELECT count(*) FROM invoice_actions WHERE action = 'pay' AND status = 402"), 1,
   'the declined payment was tried once');
is(sql_value('SELECT status FROM invoices WHERE stripe_invoice_id = ' . quote($pay_in)), 'open',
   'and its invoice stays open');
my @creates = sql("SELECT idempotency_key FROM invoice_actions WHERE action = 'create'"
                  . " AND key_name = 'ops' AND status = 201 ORDER BY id");
is(scalar @creates, 3, 'the console created one invoice (two were made above)');
like($creates[-1][0] // '', qr/^[0-9a-f-]{36}\z/, '... under its own Idempotency-Key');
is(sql_value("SELECT count(*) FROM invoices WHERE amount = 4321 AND status = 'open'"), 1,
   'the new invoice is in the table, open');
my @acted = map { "$_->{method} $_->{path}" }
            fake_requests(qr{^POST /v1/invoices/in_\w+/(?:pay|send|void|mark_uncollectible)$});
is_deeply([sort @acted], [sort "POST /v1/invoices/$pay_in/pay", map { "POST $_->{path}" } @voids],
          'no other action reached Stripe') or diag join "\n", @acted;

unlike(error_log_text(), qr/\[(?:warn|error)\][^\n]*invoices-console\.conf/,
       'docs/invoices-console.conf: no warning from nginx');
my $access = do { local $/; open my $fh, '<', server_prefix() . '/logs/access.log' or die $!; <$fh> };
ok(index($access, $WRITE) < 0 && index($access, $READ) < 0, 'no key in the access log');

note sprintf 't/console.t took %.1f s', time - $started;
done_testing();
