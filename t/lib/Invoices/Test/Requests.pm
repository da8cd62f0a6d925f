package Invoices::Test::Requests;

# Requests to this file's nginx (see Invoices::Test): one at a time or
# several in flight at once, each response looked at for the Stripe
# secret; typed JSON checks of a response; and the data blocks of a test
# file's __DATA__ run as tests (run_blocks; sections in Invoices::Test).

use strict;
use warnings;

use Test::More ();
use Time::HiRes qw(sleep);
use Carp qw(croak);
use Exporter 'import';

use Invoices::Test::HTTP ();
use Invoices::Test::Blocks qw(parse_blocks);
use Invoices::Test::JSONCheck qw(decode_typed parse_check_lines run_check);
use Invoices::Test::Env qw(time_factor);
use Invoices::Test::DB qw(sql_do db_fingerprint);
use Invoices::Test::Nginx qw(API_KEY server_port error_log_mark error_log_since);
use Invoices::Test::Fake qw(fake_requests);

our @EXPORT_OK = qw(
    request api_request raw_request
    start_request finish_request parallel_requests
    json_typed json_check listed_invoice
    run_blocks blocks_from_data block_vars
);
our %EXPORT_TAGS = (all => \@EXPORT_OK);
our @CARP_NOT = @Invoices::Test::Env::HARNESS;

# the state of this file's server, and the {{name}} substitutions in
# blocks: the hashes of Invoices::Test
our (%S, %VARS);
BEGIN {
    no warnings 'once';
    *S = \%Invoices::Test::S;
    *VARS = \%Invoices::Test::VARS;
}

#----------------------------------------------------------------------
# requests

# request($method, $path, $headers, $body, %opt) -> Invoices::Test::Response
sub request {
    my ($method, $path, $headers, $body, %opt) = @_;
    $opt{timeout} //= 10 * time_factor();
    return _seen(Invoices::Test::HTTP::request(server_port(), $method, $path,
                                               $headers, $body, %opt));
}

sub _api_headers {
    my ($headers) = @_;
    my @h = Invoices::Test::HTTP::normalize_headers($headers);
    unshift @h, ['Api-Key', API_KEY] unless grep { lc $_->[0] eq 'api-key' } @h;
    return \@h;
}

# api_request($method, $path, [$headers], [$body]): with Api-Key: test-key.
sub api_request {
    my ($method, $path, $headers, $body, %opt) = @_;
    return request($method, $path, _api_headers($headers), $body, %opt);
}

sub raw_request {
    my ($bytes, %opt) = @_;
    $opt{timeout} //= 10 * time_factor();
    return _seen(Invoices::Test::HTTP::raw(server_port(), $bytes, %opt));
}

# start_request(...): api_request's arguments; sends the request and
# returns at once.  finish_request(@pending) -> the responses, in order.
sub start_request {
    my ($method, $path, $headers, $body, %opt) = @_;
    $opt{timeout} //= 20 * time_factor();
    my $port = server_port();
    my $bytes = Invoices::Test::HTTP::build($port, $method, $path,
                                            _api_headers($headers), $body, %opt);
    return Invoices::Test::HTTP::start($port, $bytes, %opt, method => $method);
}

sub finish_request {
    return map { _seen($_) } Invoices::Test::HTTP::finish_all(@_);
}

# parallel_requests([$method, $path, $headers, $body], ...): all sent at
# once (Api-Key added as by api_request), the responses in order, each
# with its own elapsed time.
sub parallel_requests {
    my @p = map { start_request(@$_) } @_;
    return finish_request(@p);
}

# The Stripe secret must never reach a client: every response of the file
# is looked at (the final checks of Invoices::Test::Nginx report).
sub _seen {
    my ($res) = @_;
    if (defined $S{stripe_secret}) {
        $S{responses_seen}++;
        push @{ $S{leaks} }, $res->describe
            if index($res->raw // '', $S{stripe_secret}) >= 0;
    }
    return $res;
}

#----------------------------------------------------------------------
# responses

# json_typed($response) -> typed tree of its body (dies if not JSON).
sub json_typed {
    my ($res) = @_;
    return decode_typed($res->body, 'response body');
}

# json_check($response, $lines, $name): run json_path lines as tests.
sub json_check {
    my ($res, $lines, $name) = @_;
    my @checks = parse_check_lines($lines);
    my $doc = eval { json_typed($res) };
    my $tb = Test::More->builder;
    if (!$doc) {
        $tb->ok(0, ($name ? "$name: " : '') . 'body is JSON') or $tb->diag($@);
        return 0;
    }
    my $all = 1;
    for my $c (@checks) {
        my ($ok, $diag) = run_check($doc, $c);
        $tb->ok($ok, ($name ? "$name: " : '') . "json $c->{line}")
            or $tb->diag($diag), $all = 0;
    }
    return $all;
}

# listed_invoice($list_response, $invoice_id) -> the invoice of that
# invoiceId in the response's "invoices" (a hashref), or undef: not
# there, or the body is no JSON list.
sub listed_invoice {
    my ($res, $iid) = @_;
    my ($inv) = grep { $_->{invoiceId} eq $iid }
                @{ ($res->json_or_undef // {})->{invoices} || [] };
    return $inv;
}

#----------------------------------------------------------------------
# data blocks

sub block_vars { %VARS = (%VARS, @_) }

sub _subst {
    my ($s) = @_;
    return $s unless defined $s;
    $s =~ s/\{\{(\w+)\}\}/exists $VARS{$1} ? $VARS{$1} : croak "unknown block variable {{$1}}"/ge;
    return $s;
}

# blocks_from_data(): the blocks of the test file's __DATA__.
sub blocks_from_data {
    my ($pkg) = @_;
    $pkg //= 'main';
    no strict 'refs';
    my $fh = \*{"${pkg}::DATA"};
    my $text = do { local $/; <$fh> };
    croak "no __DATA__ in $0" unless defined $text;
    return parse_blocks($text, file => $0);
}

my @ASSERTIONS = qw(error_code response_headers response_headers_like
                    response_body response_body_like response_body_unlike
                    json_path error_log no_error_log db_unchanged
                    response_time_max stripe_requests);

# run_blocks(%opt): run every block of __DATA__ (or blocks => [...]).
#   default_headers  header lines added to every request unless the block
#                    has --- no_default_headers (a block's own header of
#                    the same name replaces the default)
sub run_blocks {
    my (%opt) = @_;
    my @blocks = $opt{blocks} ? @{ $opt{blocks} } : blocks_from_data();
    croak "run_blocks: no blocks" unless @blocks;
    my @only = grep { $_->{sections}{ONLY} } @blocks;
    @blocks = @only if @only;
    for my $b (@blocks) {
        my @a = grep { $b->{sections}{$_} } @ASSERTIONS;
        croak "block '$b->{name}' (line $b->{line}) asserts nothing"
            unless @a || $b->{sections}{skip};
        croak "block '$b->{name}' (line $b->{line}): needs request or raw_request"
            unless $b->{sections}{request} || $b->{sections}{raw_request};
    }
    for my $b (@blocks) {
        _run_block($b, %opt);
    }
}

sub _val {
    my ($b, $name) = @_;
    my $s = $b->{sections}{$name} or return undef;
    return _subst($s->{value});
}

sub _run_block {
    my ($b, %opt) = @_;
    my $name = "$b->{name} (line $b->{line})";
    my $tb = Test::More->builder;

    if (my $why = _val($b, 'skip')) {
        $tb->skip("$name: $why");
        return;
    }

    my $todo = _val($b, 'todo');
    $tb->todo_start($todo) if defined $todo;
    Test::More::subtest($name => sub {

        if (defined(my $setup = $b->{sections}{setup})) {
            my $v = _subst($setup->{value});
            if ($v =~ /^\w+$/) {
                no strict 'refs';
                my $f = \&{"main::$v"};
                croak "setup hook main::$v is not defined" unless defined &$f;
                $f->($b);
            } else {
                sql_do($v);
            }
        }
        if (defined(my $sq = _val($b, 'setup_sql'))) {
            sql_do($sq);
        }

        my $fp = $b->{sections}{db_unchanged} ? db_fingerprint() : undef;
        my $stripe_before = $b->{sections}{stripe_requests}
            ? scalar(fake_requests()) : undef;
        my $mark = error_log_mark();
        my $timeout = (_val($b, 'timeout') // 10) * time_factor();

        my $res;
        my $method = '';
        if (defined(my $raw = _val($b, 'raw_request'))) {
            ($method) = $raw =~ /^(\S+)/;
            $res = raw_request($raw, timeout => $timeout, method => $method);
        } else {
            my $req = _val($b, 'request');
            my ($line, $body) = split /\n\n/, $req, 2;
            $line =~ s/^\s+|\s+$//g;
            my ($m, $path, $proto) = split /\s+/, $line;
            croak "$name: bad request line '$line'" unless defined $path;
            $method = $m;
            $body = _val($b, 'request_body') if $b->{sections}{request_body};
            my @h;
            my @own = Invoices::Test::HTTP::normalize_headers(_val($b, 'more_headers'));
            if ($opt{default_headers} && !$b->{sections}{no_default_headers}) {
                my %own = map { lc $_->[0] => 1 } @own;
                push @h, grep { !$own{ lc $_->[0] } }
                    Invoices::Test::HTTP::normalize_headers($opt{default_headers});
            }
            push @h, @own;
            $res = request($m, $path, \@h, $body, timeout => $timeout,
                           ($proto ? (protocol => $proto) : ()));
        }

        Test::More::diag("request failed: " . $res->error)
            if !$res->status && $res->error;

        if (defined(my $code = _val($b, 'error_code'))) {
            Test::More::is($res->status, $code, "status $code")
                or Test::More::diag($res->describe);
        }
        if (defined(my $hs = _val($b, 'response_headers'))) {
            for my $line (split /\n/, $hs) {
                next unless $line =~ /\S/;
                if ($line =~ /^!\s*([\w-]+)\s*$/) {
                    my $v = $res->header($1);
                    Test::More::ok(!defined $v, "no $1 header")
                        or Test::More::diag("$1: $v");
                } elsif ($line =~ /^([\w-]+):\s?(.*)$/) {
                    Test::More::is($res->header($1), $2, "header $1");
                } else {
                    croak "$name: bad response_headers line '$line'";
                }
            }
        }
        if (defined(my $hs = _val($b, 'response_headers_like'))) {
            for my $line (split /\n/, $hs) {
                next unless $line =~ /\S/;
                $line =~ /^([\w-]+):\s?(.*)$/
                    or croak "$name: bad response_headers_like line '$line'";
                my ($h, $re) = ($1, $2);
                Test::More::like($res->header($h) // '<absent>', qr/$re/, "header $h like /$re/");
            }
        }
        if ($b->{sections}{response_body}) {
            my $want = _val($b, 'response_body');
            my $got = $res->body;
            if ($want ne '') {
                $got =~ s/\n\z//;
                $want =~ s/\n\z//;
            }
            Test::More::is($got, $want, $want eq '' ? 'empty body' : 'body');
        }
        if (defined(my $re = _val($b, 'response_body_like'))) {
            Test::More::like($res->body, qr/$re/s, "body like /$re/")
                or Test::More::diag($res->describe);
        }
        if (defined(my $re = _val($b, 'response_body_unlike'))) {
            Test::More::unlike($res->body, qr/$re/s, "body unlike /$re/");
        }
        if (defined(my $jp = _val($b, 'json_path'))) {
            json_check($res, $jp) or Test::More::diag($res->describe);
        }
        if (defined(my $max = _val($b, 'response_time_max'))) {
            my $lim = $max * time_factor();
            Test::More::cmp_ok($res->elapsed, '<', $lim, "answered within ${lim}s");
        }
        if ($fp) {
            Test::More::is(db_fingerprint(), $fp, 'database unchanged');
        }
        if (defined $stripe_before) {
            my $want = _val($b, 'stripe_requests');
            my @all = fake_requests();
            my @new = @all[$stripe_before .. $#all];
            Test::More::is(scalar @new, $want, "the fake Stripe got $want requests")
                or Test::More::diag(join "\n", map { "$_->{method} $_->{path}" } @new);
        }
        if (defined(my $el = _val($b, 'error_log'))) {
            sleep 0.1;
            my $log = error_log_since($mark);
            for my $l (grep { /\S/ } split /\n/, $el) {
                Test::More::ok(index($log, $l) >= 0, "error log has '$l'");
            }
        }
        if (defined(my $el = _val($b, 'no_error_log'))) {
            sleep 0.1;
            my $log = error_log_since($mark);
            for my $l (grep { /\S/ } split /\n/, $el) {
                Test::More::ok(index($log, $l) < 0, "error log lacks '$l'")
                    or Test::More::diag(join "\n", grep { index($_, $l) >= 0 } split /\n/, $log);
            }
        }
    });
    $tb->todo_end if defined $todo;
}

1;
