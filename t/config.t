# Bad configurations fail `nginx -t` with an [emerg] line naming the
# directive at fault; good ones pass.  No server is started here.

use strict;
use warnings;
use Test::More;
use Invoices::Test;

sub config_ok {
    my ($name, %opt) = @_;
    my ($rc, $out) = nginx_config_test(%opt);
    subtest "good: $name" => sub {
        is($rc, 0, 'nginx -t succeeds') or diag $out;
        like($out, qr/test is successful/, 'nginx says the test is successful');
        unlike($out, qr/\[(?:emerg|alert|crit)\]/, 'no [emerg], [alert] or [crit]');
    };
}

sub config_fails {
    my ($name, $re, %opt) = @_;
    my ($rc, $out) = nginx_config_test(%opt);
    subtest "bad: $name" => sub {
        isnt($rc, 0, 'nginx -t fails') or diag $out;
        like($out, $re, 'the [emerg] line names the problem') or diag $out;
        unlike($out, qr/test is successful/, 'not reported as successful');
        unlike($out, qr/test-key/, 'no key in the output');
    };
}

my $emerg = sub { my ($what) = @_; qr/\[emerg\][^\n]*\Q$what\E/ };

config_ok('the default test config');
config_ok('invoices_thread_pool naming the pool',
          location_config => '            invoices_thread_pool invoices;');
config_ok('keys file with mode 0400', keys_mode => 0400);
config_ok('keys file with a single key', keys => "only-one-key\n");
config_ok('keys file with named, scoped and bare keys',
          keys => "# keys\nops write key-one-1\n\treader\tread  key-two-2 \r\n"
                  . "key-three-3\n");
config_ok('invoices_database at server level',
          database => undef,
          server_config => '        invoices_database "host=127.0.0.1 dbname=x";');

config_fails('invoices_admin without invoices_database',
             $emerg->('invoices_database'), database => undef);
config_fails('invoices_admin without invoices_api_keys_file',
             $emerg->('invoices_api_keys_file'), keys_file => undef);
config_fails('keys file missing',
             $emerg->('invoices_api_keys_file'), keys => undef);
config_fails('keys file empty',
             $emerg->('invoices_api_keys_file'), keys => '');
config_fails('keys file with only comments and blank lines',
             $emerg->('invoices_api_keys_file'),
             keys => "# no keys here\n\n   \n# none\n");
config_fails('keys file: a line of two words',
             $emerg->('line 2: expected "<name> <scope> <key>"'),
             keys => "test-key-1\nname test-key-2\n");
config_fails('keys file: a line of four words',
             $emerg->('line 1: expected'),
             keys => "name write test-key-1 more\n");
config_fails('keys file: a scope neither read nor write',
             $emerg->('line 1: the scope must be "read" or "write"'),
             keys => "name admin test-key-1\n");
config_fails('keys file: a name with a character outside the set',
             $emerg->("line 1: a key's name"),
             keys => "n\@me read test-key-1\n");
config_fails('keys file: a name over 64 characters',
             $emerg->("line 1: a key's name"),
             keys => ('n' x 65) . " read test-key-1\n");
config_fails('keys file: a name given twice',
             $emerg->('line 3: the name "ops" or its key is given twice'),
             keys => "ops write test-key-1\n\nops read test-key-2\n");
config_fails('keys file: a key given twice under two names',
             $emerg->('line 2: the name "b" or its key is given twice'),
             keys => "a write test-key-1\nb read test-key-1\n");
config_fails('keys file: a name taken by a bare key\'s line name',
             $emerg->('line 2: the name "line-1" or its key'),
             keys => "test-key-1\nline-1 read test-key-2\n");
config_fails('keys file world-readable (0644)',
             $emerg->('invoices_api_keys_file'), keys_mode => 0644);
config_fails('keys file world-readable (0604)',
             $emerg->('invoices_api_keys_file'), keys_mode => 0604);
config_fails('invoices_database twice in one block',
             $emerg->('invoices_database'),
             http_config => '    invoices_database "host=127.0.0.1 dbname=other";');
config_fails('invoices_database twice in a location',
             $emerg->('invoices_database'),
             location_config => '            invoices_database "dbname=a";'
                              . "\n" . '            invoices_database "dbname=b";');
config_fails('unknown thread pool in invoices_thread_pool',
             qr/\[emerg\][^\n]*unknown thread pool "nosuch"/,
             location_config => '            invoices_thread_pool nosuch;');
config_fails('invoices_admin with an argument',
             $emerg->('invoices_admin'), admin_directive => 'invoices_admin on;');

#----------------------------------------------------------------------
# Stripe (creating invoices)

my $SK = 'sk_test_config' . join '', map { ('a'..'z')[rand 26] } 1 .. 20;
my %stripe = (key => $SK);

sub stripe_fails {
    my ($name, $re, %opt) = @_;
    my ($rc, $out) = nginx_config_test(%opt);
    subtest "bad: $name" => sub {
        isnt($rc, 0, 'nginx -t fails') or diag $out;
        like($out, $re, 'the [emerg] line names the problem') or diag $out;
        unlike($out, qr/test is successful/, 'not reported as successful');
        unlike($out, qr/\Q$SK\E/, 'the secret key is not in the output');
    };
}

config_ok('Stripe: the test config (file:, api base, pool, timeouts)',
          stripe => { %stripe });
config_ok('Stripe: key file of mode 0400', stripe => { %stripe, key_mode => 0400 });
config_ok('Stripe: key file group-readable (0640)', stripe => { %stripe, key_mode => 0640 });
config_ok('Stripe: the module defaults (no api base, timeouts, retries)',
          stripe => { %stripe, api_base => undef, timeout => undef,
                      connect_timeout => undef, max_retries => undef });
config_ok('Stripe: no invoices_stripe_thread_pool: the pool of invoices_thread_pool',
          stripe => { %stripe, pool => undef, thread_pool => undef });
config_ok('Stripe: no invoices_stripe_thread_pool, invoices_thread_pool pg',
          stripe => { %stripe, pool => undef, thread_pool => undef },
          main_config => 'thread_pool pg threads=2;',
          http_config => '    invoices_thread_pool pg;');
config_ok('Stripe: an https api base with a trailing slash',
          stripe => { %stripe, api_base => 'https://api.stripe.com/' });
config_ok('Stripe: invoices_stripe_max_retries 10', stripe => { %stripe, max_retries => 10 });
config_ok('Stripe: invoices_stripe_max_retries 0', stripe => { %stripe, max_retries => 0 });

# the background work (ngx_http_invoices_housekeeping.c)
config_ok('invoices_reconcile 5s with Stripe', stripe => { %stripe },
          location_config => '            invoices_reconcile 5s;');
config_ok('invoices_reconcile off without Stripe',
          location_config => '            invoices_reconcile off;');
config_ok('retentions at their least',
          http_config => "    invoices_event_retention 30d;\n    invoices_idempotency_retention 24h;");
config_fails('invoices_reconcile without invoices_stripe_secret_key',
             $emerg->('"invoices_reconcile" in location "/admin/api/invoices" needs "invoices_stripe_secret_key"'),
             location_config => '            invoices_reconcile 5s;');
config_fails('invoices_reconcile under a second',
             $emerg->('must be "off" or a time of at least 1s'), stripe => { %stripe },
             location_config => '            invoices_reconcile 500ms;');
config_fails('invoices_reconcile of no time', $emerg->('invoices_reconcile'),
             stripe => { %stripe }, location_config => '            invoices_reconcile soon;');
config_fails('invoices_reconcile in two locations', $emerg->('one Stripe account is reconciled by one location'),
             stripe => { %stripe },
             location_config => '            invoices_reconcile 5s;',
             server_config => "        location /other/api/invoices {\n"
                            . "            invoices_admin;\n"
                            . "            invoices_reconcile 5s;\n        }");
config_fails('invoices_reconcile given twice', $emerg->('is duplicate'), stripe => { %stripe },
             location_config => "            invoices_reconcile 5s;\n            invoices_reconcile 6s;");
config_fails('invoices_event_retention under 30 days',
             $emerg->('"invoices_event_retention" must be at least 30d'),
             http_config => '    invoices_event_retention 29d;');
config_fails('invoices_idempotency_retention under a day',
             $emerg->('"invoices_idempotency_retention" must be at least 24h'),
             http_config => '    invoices_idempotency_retention 23h;');
config_ok('Stripe: invoices_stripe_version 2023-10-16',
          stripe => { %stripe, version => '2023-10-16' });
config_ok('Stripe: the pool of invoices_thread_pool',
          stripe => { %stripe, pool => undef, thread_pool => 'invoices' });
{
    local $ENV{INVOICES_TEST_STRIPE_KEY} = $SK;
    config_ok('Stripe: env:NAME with the variable set',
              stripe => { %stripe, secret_key => 'env:INVOICES_TEST_STRIPE_KEY' });
}
config_ok('invoices_currency usd', http_config => '    invoices_currency usd;');

stripe_fails('Stripe: a literal key in the configuration',
             $emerg->('invoices_stripe_secret_key'),
             stripe => { %stripe, secret_key => $SK });
stripe_fails('Stripe: key file readable by others (0644)',
             $emerg->('invoices_stripe_secret_key'),
             stripe => { %stripe, key_mode => 0644 });
stripe_fails('Stripe: key file writable by others (0602)',
             $emerg->('invoices_stripe_secret_key'),
             stripe => { %stripe, key_mode => 0602 });
stripe_fails('Stripe: key file missing',
             $emerg->('invoices_stripe_secret_key'),
             stripe => { %stripe, secret_key => 'file:/nonexistent/stripe.key' });
stripe_fails('Stripe: key file empty',
             $emerg->('invoices_stripe_secret_key'),
             stripe => { %stripe, key => '' });
{
    delete local $ENV{INVOICES_TEST_NO_SUCH_VAR};
    stripe_fails('Stripe: env:NAME with the variable unset',
                 qr/\[emerg\][^\n]*invoices_stripe_secret_key[^\n]*INVOICES_TEST_NO_SUCH_VAR/,
                 stripe => { %stripe, secret_key => 'env:INVOICES_TEST_NO_SUCH_VAR' });
}
stripe_fails('Stripe: invoices_stripe_secret_key twice in one block',
             $emerg->('invoices_stripe_secret_key'),
             stripe => { %stripe },
             http_config => '    invoices_stripe_secret_key env:PATH;');
stripe_fails('Stripe: an api base that is not http(s)',
             $emerg->('invoices_stripe_api_base'),
             stripe => { %stripe, api_base => 'ftp://127.0.0.1:9' });
stripe_fails('Stripe: an api base without a scheme',
             $emerg->('invoices_stripe_api_base'),
             stripe => { %stripe, api_base => 'api.stripe.com' });
stripe_fails('Stripe: an unknown thread pool',
             qr/\[emerg\][^\n]*unknown thread pool "nosuch"/,
             stripe => { %stripe, thread_pool => 'nosuch' });
stripe_fails('Stripe: invoices_stripe_max_retries 11',
             $emerg->('invoices_stripe_max_retries'),
             stripe => { %stripe, max_retries => 11 });
stripe_fails('Stripe: invoices_stripe_max_retries not a number',
             $emerg->('invoices_stripe_max_retries'),
             stripe => { %stripe, max_retries => 'two' });
stripe_fails('Stripe: invoices_stripe_timeout not a time',
             $emerg->('invoices_stripe_timeout'),
             stripe => { %stripe, timeout => 'soon' });
stripe_fails('Stripe: invoices_stripe_version with a space',
             $emerg->('invoices_stripe_version'),
             stripe => { %stripe, version => '"2023-10-16 x"' });
for my $cur ('EUR', 'euro', 'eu', 'e1r') {
    stripe_fails("invoices_currency $cur",
                 $emerg->('invoices_currency'),
                 http_config => "    invoices_currency $cur;");
}

done_testing();
