# The Debian package (make test-deb): what the .deb holds, that dpkg -i
# enables the module the way Debian's libnginx-mod-* packages are enabled,
# that Debian's stock /etc/nginx/nginx.conf with the example site
# (docs/invoices-site.conf) passes nginx -t, that the installed .so and the
# installed migrations serve the API, that the installed docs/openapi.yaml
# is served by the example site's location, and that dpkg --purge leaves
# nothing behind.  Changes the system, so it runs only with
# INVOICES_TEST_DEB set to the .deb (make test-deb sets it) and as root.

use strict;
use warnings;
use Test::More;
use File::Temp qw(tempdir);
use Invoices::Test;

my $deb = $ENV{INVOICES_TEST_DEB};
plan skip_all => 'INVOICES_TEST_DEB is not set (make test-deb)' unless $deb;
plan skip_all => 'needs root (dpkg -i)' unless $> == 0;

my $pkg = 'libnginx-mod-http-invoices';
my $so = '/usr/lib/nginx/modules/ngx_http_invoices_module.so';
my $available = '/usr/share/nginx/modules-available/mod-http-invoices.conf';
my $enabled = '/etc/nginx/modules-enabled/50-mod-http-invoices.conf';
my $share = "/usr/share/$pkg";
my $site = '/etc/nginx/sites-enabled/zz-invoices-package-test';

sub sh {
    my ($cmd) = @_;
    my $out = `$cmd 2>&1`;
    return ($? >> 8, $out);
}

sub installed {
    my (undef, $out) = sh("dpkg-query -W -f '\${db:Status-Status}' $pkg");
    return $out eq 'installed';
}

my ($rc, $out) = sh("dpkg-query -W -f '\${db:Status-Status}' $pkg");
plan skip_all => "$pkg is installed already: this test would remove it"
    if $out eq 'installed';

END {
    # whatever happened above, the machine is left as it was found
    unlink $site if defined $site;
    system("dpkg --purge $pkg >/dev/null 2>&1") if $deb && $> == 0;
}

#----------------------------------------------------------------------
# what the .deb holds

like($deb, qr{/${pkg}_\d+\.\d+\.\d+-\d+_[a-z0-9]+\.deb$},
     'named libnginx-mod-http-invoices_<version>_<arch>.deb');

($rc, $out) = sh("dpkg-deb -c '$deb'");
is($rc, 0, 'dpkg-deb -c reads it') or diag $out;
for my $path ($so, $available, "$share/migrate",
              "$share/migrations/0001_init.sql", "$share/openapi.yaml",
              "$share/console/index.html", "$share/console/console.js",
              "$share/console/console.css", "$share/invoices-console.conf",
              "/usr/share/doc/$pkg/configuration.md",
              "/usr/share/doc/$pkg/operations.md",
              "/usr/share/doc/$pkg/examples/invoices-site.conf") {
    like($out, qr{ \.\Q$path\E(\.gz)?$}m, "holds $path");
}
unlike($out, qr{^\S+ \S+ +\d+ \S+ \S+ \./etc/}m,
       'ships nothing under /etc (postinst makes the link)');

($rc, my $depends) = sh("dpkg-deb -f '$deb' Depends");
my $abi = do {
    open my $fh, '<', '/usr/share/nginx/src/debian/libnginx-mod.abisubstvars'
        or die "abisubstvars: $!";
    my ($line) = grep { /^nginx:abi=/ } <$fh>;
    chomp $line;
    $line =~ s/^nginx:abi=//;
    $line;
};
like($depends, qr/(^|, )\Q$abi\E(,|$)/m,
     "Depends on the nginx ABI it was built for ($abi)") or diag $depends;
like($depends, qr/\blibpq5\b/, 'Depends on libpq (shlibs)') or diag $depends;

#----------------------------------------------------------------------
# dpkg -i: the module enabled through modules-enabled

($rc, $out) = sh("dpkg -i '$deb'");
is($rc, 0, 'dpkg -i installs it') or diag $out;
ok(installed(), 'dpkg says installed');
ok(-f $so, "$so is there");
is(readlink($enabled), $available, "$enabled links to $available");
like(do { local (@ARGV, $/) = $available; <> },
     qr{^load_module modules/ngx_http_invoices_module\.so;$}m,
     'the enabled file loads the module');

my $contract = do {
    open my $fh, '<:raw', "$ENV{INVOICES_REPO}/docs/openapi.yaml"
        or die "openapi.yaml: $!";
    local $/;
    <$fh>;
};
my $installed = do {
    open my $fh, '<:raw', "$share/openapi.yaml" or die "$share/openapi.yaml: $!";
    local $/;
    <$fh>;
};
ok($installed eq $contract, "$share/openapi.yaml is docs/openapi.yaml");

# Debian's stock nginx.conf (it includes modules-enabled and
# sites-enabled) and the example site, its files in a private directory
my $dir = tempdir(CLEANUP => 1);
chmod 0755, $dir;
for my $f (qw(admin-keys stripe-whsec)) {
    open my $fh, '>', "$dir/$f" or die "$f: $!";
    print $fh $f eq 'admin-keys' ? API_KEY . "\n" : "whsec_packagetest\n";
    close $fh;
    chmod 0600, "$dir/$f";
}
my $example = do {
    local (@ARGV, $/) = "/usr/share/doc/$pkg/examples/invoices-site.conf";
    <>;
};
ok(defined $example && $example =~ /invoices_admin;/,
   'the installed example site');
(my $conf = $example) =~ s{/etc/nginx/invoices/}{$dir/}g;
my ($contract_location)
    = $example =~ /^(    location = \/admin\/api\/openapi\.yaml \{.*?^    \})$/ms;
ok($contract_location && $contract_location =~ m{alias \Q$share\E/openapi\.yaml;},
   'the example site serves the installed openapi.yaml');
my ($console_location)
    = $example =~ /^(    location \/admin\/console\/ \{.*?^    \})$/ms;
ok($console_location && $console_location =~ m{alias \Q$share\E/console/;}
   && $console_location =~ m{include \Q$share\E/invoices-console\.conf;},
   'the example site serves the installed console with its headers');
open my $fh, '>', $site or die "$site: $!";
print $fh $conf;
close $fh;

($rc, $out) = sh('/usr/sbin/nginx -t');
is($rc, 0, 'nginx -t: stock nginx.conf, the package, the example site')
    or diag $out;
like($out, qr/test is successful/, 'nginx -t says successful') or diag $out;

# the same without the package's modules-enabled link: the site's
# directives are unknown, so the link is what loads the module
rename $enabled, "$enabled.off" or die "rename: $!";
($rc, $out) = sh('/usr/sbin/nginx -t');
isnt($rc, 0, 'without the link, nginx -t fails');
like($out, qr/unknown directive "invoices_/, '... on our directives')
    or diag $out;
rename "$enabled.off", $enabled or die "rename back: $!";
unlink $site;

#----------------------------------------------------------------------
# the installed migrations and the installed .so serve the API

my $db = "invoices_t_package_$$";
my @pg = ('-h', $ENV{INVOICES_TEST_PGHOST}, '-p', $ENV{INVOICES_TEST_PGPORT},
          '-U', $ENV{INVOICES_TEST_PGUSER});
($rc, $out) = sh("psql @pg -X -q -d postgres -c 'CREATE DATABASE $db'");
is($rc, 0, 'a database for the installed migrations') or diag $out;
my $url = "postgres://$ENV{INVOICES_TEST_PGUSER}\@$ENV{INVOICES_TEST_PGHOST}"
        . ":$ENV{INVOICES_TEST_PGPORT}/$db";
($rc, $out) = sh("$share/migrate '$url'");
is($rc, 0, "$share/migrate applies the shipped migrations") or diag $out;
($rc, $out) = sh("$share/migrate '$url'");
like($out, qr/up to date/, '... and a second run changes nothing');

{
    local $ENV{INVOICES_MODULE} = $so;
    local $ENV{INVOICES_NGINX} = '/usr/sbin/nginx';
    start_server(db => 0,
                 database => "host=$ENV{INVOICES_TEST_PGHOST} "
                           . "port=$ENV{INVOICES_TEST_PGPORT} dbname=$db "
                           . "user=$ENV{INVOICES_TEST_PGUSER}",
                 location_config => '            client_max_body_size 1k;',
                 server_config => join("\n", grep { defined } $contract_location,
                                                         $console_location));
    my $res = api_request(GET => '/admin/api/invoices');
    is($res->status, 200, 'the installed module answers a list')
        or diag $res->describe;
    json_check($res, <<'EOC');
count = 0
invoices = []
EOC
    # an error nginx makes by itself: JSON, so the filter module is in
    $res = api_request(GET => '/admin/api/invoices', [], 'x' x 2048);
    is($res->status, 413, 'a body over client_max_body_size: 413');
    is($res->header('Content-Type'), 'application/json; charset=utf-8',
       '... as JSON (the filter module of the .so)');
    $res = request(GET => '/admin/api/openapi.yaml');
    is($res->status, 200, "the example site's location serves the contract, no key");
    ok($res->body eq $contract, '... the installed file, byte for byte');
    is($res->header('Content-Type'), 'application/yaml', '... as application/yaml');
    # the installed console, as the example site serves it
    $res = request(GET => '/admin/console/');
    is($res->status, 200, "the example site's location serves the console, no key");
    my $index = do { local (@ARGV, $/) = "$share/console/index.html"; <> };
    ok(defined $index && $res->body eq $index, '... the installed index.html');
    like($res->header('Content-Security-Policy') // '',
         qr/^default-src 'none'; script-src 'self';.*frame-ancestors 'none'/,
         '... under the installed snippet\'s Content-Security-Policy');
    is($res->header('X-Content-Type-Options'), 'nosniff', '... nosniff');
    is($res->header('Referrer-Policy'), 'no-referrer', '... no-referrer');
    $res = request(GET => '/admin/console/console.js');
    is($res->header('Content-Type'), 'text/javascript; charset=utf-8',
       '... console.js as JavaScript');
    stop_server();
}
sh("psql @pg -X -q -d postgres -c 'DROP DATABASE $db'");

#----------------------------------------------------------------------
# dpkg --purge leaves nothing

($rc, $out) = sh("dpkg --purge $pkg");
is($rc, 0, 'dpkg --purge removes it') or diag $out;
ok(!installed(), 'dpkg no longer lists it');
ok(!-e $so, 'the .so is gone');
ok(!-e $enabled && !-l $enabled, 'the modules-enabled link is gone');
ok(!-e $available, 'the modules-available file is gone');
ok(!-e $share, "$share is gone");
($rc, $out) = sh('/usr/sbin/nginx -t');
is($rc, 0, 'stock nginx -t passes again after the purge') or diag $out;

done_testing;
