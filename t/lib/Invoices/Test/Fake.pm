package Invoices::Test::Fake;

# Stripe for the tests (see Invoices::Test): the defaults of the
# invoices_stripe_* directives, and scripts/fake-stripe, started for a
# test file by start_server(stripe => ...) and stopped at its end, with
# helpers to steer it (/_fake/...), to call its /v1 API as nginx does,
# and to create invoices through nginx.

use strict;
use warnings;

use JSON::PP ();
use POSIX ();
use Time::HiRes qw(time sleep);
use Carp qw(croak);
use Exporter 'import';

use Invoices::Test::Env qw(env_or_die time_factor spawn slurp random_alnum);
use Invoices::Test::DB qw(insert_team);

our @EXPORT_OK = qw(
    stripe_opts random_secret start_fake stop_fake
    fake_url fake_control fake_config fake_requests fake_posts fake_reset
    fake_stripe stripe_secret linked_customer
    create_body create_request create_invoice stripe_invoices_of
);
our %EXPORT_TAGS = (all => \@EXPORT_OK);
our @CARP_NOT = @Invoices::Test::Env::HARNESS;

# the state of this file's server: the one hash of Invoices::Test
our %S;
BEGIN { no warnings 'once'; *S = \%Invoices::Test::S }

# stripe_opts($opt, $prefix): the stripe option (1 or a hashref of
# overrides) with every default filled in.  A key given as undef leaves
# its line out.
#   pool, threads, max_queue   the "thread_pool" line of the Stripe pool
#                              (invoices_stripe, 4, 64)
#   secret_key       the directive's value (file:PREFIX/conf/stripe.key)
#   api_base         (http://127.0.0.1:FAKEPORT)
#   version          (none: the module's default)
#   thread_pool      (the pool above)
#   connect_timeout (1s), timeout (2s), max_retries (2)
#   key, key_mode    content and mode of conf/stripe.key (the fake's
#                    secret, 0600)
#   collect_delay    the fake's --collect-delay (3600: tests collect with
#                    POST /_fake/advance)
#   fake             0: start no fake (start_server)
sub stripe_opts {
    my ($opt, $prefix) = @_;
    my %o = ref $opt eq 'HASH' ? %$opt : ();
    my %d = (
        pool            => 'invoices_stripe',
        threads         => 4,
        max_queue       => 64,
        secret_key      => "file:$prefix/conf/stripe.key",
        api_base        => 'http://127.0.0.1:'
                           . ($S{fake} && $S{fake}{port} ? $S{fake}{port} : 9),
        version         => undef,
        connect_timeout => '1s',
        timeout         => '2s',
        max_retries     => 2,
        key             => $S{stripe_secret} // random_secret(),
        key_mode        => 0600,
        collect_delay   => 3600,
        fake            => 1,
    );
    for (keys %d) {
        $o{$_} = $d{$_} unless exists $o{$_};
    }
    $o{thread_pool} = $o{pool} unless exists $o{thread_pool};
    return \%o;
}

sub random_secret { return 'sk_test_' . random_alnum(32) }

# stripe_secret(): the secret key of this file's fake (and of nginx)
sub stripe_secret { $S{stripe_secret} // croak "no Stripe: start_server(stripe => ...)" }

#----------------------------------------------------------------------
# the fake's process

# start_fake($stripe_opts): scripts/fake-stripe on a free port, its
# files in $S{prefix}/logs; returns the port (also in $S{fake}{port}).
sub start_fake {
    my ($st) = @_;
    my %e = env_or_die();
    my $p = $S{prefix};
    my $port_file = "$p/logs/fake-stripe.port";
    my @cmd = ("$e{INVOICES_REPO}/scripts/fake-stripe", '--listen', '127.0.0.1:0',
               '--port-file', $port_file, '--secret-key', $S{stripe_secret},
               '--collect-delay', $st->{collect_delay},
               '--log', "$p/logs/fake-stripe.log");
    my $pid = spawn(\@cmd, "$p/logs/fake-stripe.out");
    $S{fake} = { pid => $pid };
    my $deadline = time + 10 * time_factor();
    while (time < $deadline) {
        if (waitpid($pid, POSIX::WNOHANG()) == $pid) {
            delete $S{fake}{pid};
            die "fake-stripe exited at start:\n"
                . (slurp("$p/logs/fake-stripe.out") // '');
        }
        if (-s $port_file) {
            my $port = slurp($port_file);
            chomp $port;
            $S{fake}{port} = $port;
            return $port;
        }
        sleep 0.05;
    }
    stop_fake();
    die "fake-stripe wrote no port file within 10s:\n"
        . (slurp("$p/logs/fake-stripe.out") // '');
}

sub stop_fake {
    my $pid = $S{fake} && $S{fake}{pid} or return;
    kill 'TERM', $pid;
    my $deadline = time + 5;
    while (time < $deadline) {
        if (waitpid($pid, POSIX::WNOHANG()) == $pid) {
            delete $S{fake}{pid};
            return;
        }
        sleep 0.05;
    }
    kill 'KILL', $pid;
    waitpid $pid, 0;
    delete $S{fake}{pid};
}

#----------------------------------------------------------------------
# talking to the fake

# fake_url(): http://127.0.0.1:PORT of this file's fake Stripe
sub fake_url {
    my $port = $S{fake} && $S{fake}{port}
        or croak "no fake Stripe: start_server(stripe => ...)";
    return "http://127.0.0.1:$port";
}

my $JSON = JSON::PP->new->utf8->canonical->allow_nonref;

sub _fake_http {
    my ($method, $path, $headers, $content) = @_;
    require HTTP::Tiny;
    my $http = HTTP::Tiny->new(timeout => 30 * time_factor());
    my $res = $http->request($method, fake_url() . $path,
        { headers => $headers, defined $content ? (content => $content) : () });
    my $data = length($res->{content} // '')
        ? eval { $JSON->decode($res->{content}) } : undef;
    croak "fake Stripe: $method $path: $res->{status} $res->{reason}: "
        . ($res->{content} // '') if $res->{status} == 599;
    return ($res->{status}, $data, $res);
}

# fake_control($method, $path, [$data]): a /_fake/ control call (the
# path with or without /_fake/); the decoded answer.  Dies unless 2xx.
sub fake_control {
    my ($method, $path, $data) = @_;
    $path = "/_fake/$path" unless $path =~ m{^/};
    my ($st, $got, $res) = _fake_http($method, $path,
        { 'Content-Type' => 'application/json' },
        defined $data ? $JSON->encode($data) : undef);
    croak "fake Stripe: $method $path: $st: " . ($res->{content} // '')
        unless $st >= 200 && $st < 300;
    return $got;
}

# fake_config(\%config): POST /_fake/config (latency_ms, faults, ...)
sub fake_config { return fake_control(POST => '/_fake/config', $_[0]) }

# fake_requests([$filter]): every /v1 request the fake received (decoded
# list, oldest first); $filter: a "METHOD /path" regex.
sub fake_requests {
    my ($filter) = @_;
    my @r = @{ fake_control(GET => '/_fake/requests') };
    @r = grep { "$_->{method} $_->{path}" =~ $filter } @r if defined $filter;
    return @r;
}

# fake_posts([$path_re]): the POSTs among fake_requests, those whose path
# matches $path_re when given (a replay of an idempotent request is there
# too, with replayed true).
sub fake_posts {
    my ($path_re) = @_;
    return grep { $_->{method} eq 'POST' && (!defined $path_re || $_->{path} =~ $path_re) }
           fake_requests();
}

# fake_reset([$all]): config, faults and recorded requests back to the
# start; with $all, every Stripe object too.
sub fake_reset {
    my ($all) = @_;
    return fake_control(POST => '/_fake/reset', $all ? { state => JSON::PP::true() } : {});
}

# fake_stripe($method, $path, [\%form]): the fake's /v1 API with the
# secret key, as nginx calls it -> ($status, $decoded).  These requests
# are recorded by the fake too.
sub fake_stripe {
    my ($method, $path, $form) = @_;
    my $content;
    if ($form) {
        $content = join '&', map {
            my ($k, $v) = ($_, $form->{$_});
            join '=', map { (my $x = $_) =~ s/([^A-Za-z0-9_.~-])/sprintf '%%%02X', ord $1/ge; $x } $k, $v
        } sort keys %$form;
    }
    my ($st, $got) = _fake_http($method, $path,
        { Authorization => 'Bearer ' . stripe_secret(),
          ($form ? ('Content-Type' => 'application/x-www-form-urlencoded') : ()) },
        $content);
    return wantarray ? ($st, $got) : $got;
}

# linked_customer(%opt) -> { customer => 'cus_...', team => {id, name, ...} }
# A customer in the fake with the chosen (or a random) id, and a team row
# linked to it.  Options: id, name, payment_method (a test token such as
# pm_card_visa: the customer's default), team => 0 (no team row).
sub linked_customer {
    my (%o) = @_;
    my $id = $o{id} // 'cus_T' . random_alnum(14);
    my $name = $o{name} // "Team of $id";
    fake_control(POST => '/_fake/customers', {
        id => $id, name => $name,
        ($o{payment_method} ? (payment_method => $o{payment_method}) : ()),
    });
    my $team = ($o{team} // 1)
        ? insert_team(name => $name, stripe_customer_id => $id) : undef;
    return { customer => $id, team => $team };
}

# stripe_invoices_of($customer) -> the fake's invoices of that customer
sub stripe_invoices_of {
    my ($cus) = @_;
    return @{ fake_stripe(GET => "/v1/invoices?customer=$cus&limit=100")->{data} };
}

#----------------------------------------------------------------------
# creating invoices through nginx

# create_body($customer, @amounts) -> a create request's body (a hash):
# one item per amount (none given: one of 1000), named "item 0", "item 1" ...
sub create_body {
    my ($cus, @amounts) = @_;
    @amounts = (1000) unless @amounts;
    my $i = 0;
    return { customer => $cus,
             items => [map { { name => 'item ' . $i++, amount => $_ } } @amounts] };
}

# create_request($prefix, \%body or $json, [$idempotency_key]) -> the
# arguments of api_request for POST /$prefix/api/invoices (an arrayref:
# method, path, headers, body), e.g. for parallel_requests or
# start_request(@$it)
sub create_request {
    my ($prefix, $body, $key) = @_;
    $body = JSON::PP->new->utf8->canonical->encode($body) if ref $body;
    return [POST => "/$prefix/api/invoices",
            ['Content-Type' => 'application/json',
             (defined $key ? ('Idempotency-Key' => $key) : ())],
            $body];
}

# create_invoice($prefix, \%body or $json, [$idempotency_key]) -> response
# of POST /$prefix/api/invoices with the admin key
sub create_invoice {
    require Invoices::Test::Requests;
    return Invoices::Test::Requests::api_request(@{ create_request(@_) });
}

1;
