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

done_testing();
