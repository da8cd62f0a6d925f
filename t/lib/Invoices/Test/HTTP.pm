package Invoices::Test::HTTP;

# A deliberately small HTTP/1.x client over a plain socket.  Every request
# is sent with "Connection: close" (unless the caller says otherwise) and
# the response is read to EOF, so whatever the server writes after the
# header is the body: a HEAD or 304 answer that leaks a body is seen.
# raw() sends bytes exactly as given, for malformed requests.

use strict;
use warnings;

use IO::Socket::INET;
use Time::HiRes qw(time);
use Carp qw(croak);

# raw($port, $bytes, %opt) -> Invoices::Test::Response
#   timeout  seconds for the whole exchange (default 10)
#   method   the request method, when the caller knows it (HEAD: no body)
sub raw {
    my ($port, $bytes, %opt) = @_;
    return finish(start($port, $bytes, %opt));
}

# start($port, $bytes, %opt) -> a pending exchange: the request is sent,
# the answer is read later by finish($pending).  Several exchanges can be
# in flight at once (see Invoices::Test::parallel_requests).
sub start {
    my ($port, $bytes, %opt) = @_;
    my $timeout = $opt{timeout} // 10;
    my $start = time;

    my $sock = IO::Socket::INET->new(
        PeerAddr => '127.0.0.1',
        PeerPort => $port,
        Proto    => 'tcp',
        Timeout  => $timeout,
    ) or croak "connect to 127.0.0.1:$port failed: $@";
    binmode $sock;

    local $SIG{PIPE} = 'IGNORE';
    my $off = 0;
    my $write_error;
    while ($off < length $bytes) {
        my $n = syswrite($sock, $bytes, length($bytes) - $off, $off);
        if (!defined $n) {
            # The server may answer (413, say) and close before reading
            # all of a large body: keep what it said.
            $write_error = "$!";
            last;
        }
        $off += $n;
    }
    shutdown($sock, 1) if $opt{half_close};

    return { sock => $sock, start => $start, deadline => $start + $timeout,
             write_error => $write_error, method => $opt{method},
             buf => '', done => 0 };
}

# finish($pending) -> Invoices::Test::Response (reads to EOF or timeout)
sub finish {
    my ($p) = @_;
    my $sock = $p->{sock};
    my $timed_out = 0;
    while (!$p->{done}) {
        my $left = $p->{deadline} - time;
        if ($left <= 0) { $timed_out = 1; last; }
        my $rin = '';
        vec($rin, fileno($sock), 1) = 1;
        my $nfound = select(my $rout = $rin, undef, undef, $left);
        next if $nfound < 0 && $!{EINTR};
        if ($nfound <= 0) { $timed_out = 1; last; }
        _read_some($p);
    }
    close $sock;

    return Invoices::Test::Response->parse($p->{buf},
        elapsed     => ($p->{end} // time) - $p->{start},
        timed_out   => $timed_out,
        write_error => $p->{write_error},
        method      => $p->{method},
    );
}

# one read; marks the exchange done (and its end time) at EOF or error
sub _read_some {
    my ($p) = @_;
    my $n = sysread($p->{sock}, $p->{buf}, 65536, length $p->{buf});
    if (!$n) {    # EOF or error (reset)
        $p->{done} = 1;
        $p->{end} = time;
    }
}

# finish_all(@pending) -> responses in the same order; reads them all at
# once, so that each one's elapsed time is its own.
sub finish_all {
    my (@p) = @_;
    while (1) {
        my @open = grep { !$_->{done} && time < $_->{deadline} } @p;
        last unless @open;
        my $rin = '';
        vec($rin, fileno($_->{sock}), 1) = 1 for @open;
        my $nfound = select(my $rout = $rin, undef, undef, 0.2);
        next if $nfound <= 0;
        for my $q (@open) {
            _read_some($q) if vec($rout, fileno($q->{sock}), 1);
        }
    }
    return map { finish($_) } @p;
}

# request($port, $method, $path, $headers, $body, %opt)
#   $headers: arrayref of [name, value] pairs, a hashref, or a string of
#   "Name: value" lines.  Host, Connection: close and Content-Length are
#   added unless given (no_host => 1 leaves Host out).
sub request {
    my ($port, $method, $path, $headers, $body, %opt) = @_;
    return raw($port, build($port, $method, $path, $headers, $body, %opt),
               %opt, method => $method);
}

# build(...): the bytes request() sends (same arguments).
sub build {
    my ($port, $method, $path, $headers, $body, %opt) = @_;
    my @h = normalize_headers($headers);
    my %have = map { lc($_->[0]) => 1 } @h;

    unshift @h, ['Host', "127.0.0.1:$port"] unless $have{host} || $opt{no_host};
    push @h, ['Connection', 'close'] unless $have{connection};
    push @h, ['Content-Length', length $body]
        if defined $body && !$have{'content-length'}
           && !$have{'transfer-encoding'};

    my $proto = $opt{protocol} // 'HTTP/1.1';
    my $req = "$method $path $proto\r\n";
    $req .= "$_->[0]: $_->[1]\r\n" for @h;
    $req .= "\r\n";
    $req .= $body if defined $body;
    return $req;
}

sub normalize_headers {
    my ($headers) = @_;
    return () unless defined $headers;
    if (ref $headers eq 'ARRAY') {
        return map { [@$_] } @$headers if !@$headers || ref $headers->[0];
        my @pairs = @$headers;
        my @h;
        push @h, [splice(@pairs, 0, 2)] while @pairs;
        return @h;
    }
    if (ref $headers eq 'HASH') {
        return map { [$_, $headers->{$_}] } sort keys %$headers;
    }
    my @h;
    for my $line (split /\n/, $headers) {
        next if $line =~ /^\s*$/;
        $line =~ /^([^:\s]+):[ \t]?(.*)$/
            or croak "bad header line '$line' (want 'Name: value')";
        push @h, [$1, $2];
    }
    return @h;
}


package Invoices::Test::Response;

use strict;
use warnings;
use JSON::PP ();
use Carp qw(croak);

sub parse {
    my ($class, $raw, %info) = @_;
    my $self = bless { raw => $raw, headers => [], %info }, $class;

    my $end = index $raw, "\r\n\r\n";
    if ($end < 0) {
        $self->{status} = 0;
        $self->{error} = length $raw ? 'incomplete response header'
                       : $info{timed_out} ? 'timed out, no response'
                       : 'connection closed, no response';
        $self->{body} = '';
        return $self;
    }

    my ($status_line, @lines) = split /\r\n/, substr($raw, 0, $end);
    if ($status_line =~ m{^(HTTP/\d\.\d) (\d{3})(?: (.*))?$}) {
        @$self{qw(protocol status reason)} = ($1, $2, $3 // '');
    } else {
        @$self{qw(status error)} = (0, "bad status line '$status_line'");
    }
    for my $line (@lines) {
        if ($line =~ /^([^:]+):[ \t]*(.*?)[ \t]*$/) {
            push @{ $self->{headers} }, [$1, $2];
        } else {
            $self->{error} //= "bad header line '$line'";
        }
    }

    my $body = substr $raw, $end + 4;
    $self->{raw_body} = $body;
    if (lc($self->header('Transfer-Encoding') // '') eq 'chunked') {
        my ($decoded, $err) = _dechunk($body);
        $self->{error} //= $err if $err;
        $body = $decoded;
    }
    $self->{body} = $body;
    return $self;
}

sub _dechunk {
    my ($in) = @_;
    my $out = '';
    while (1) {
        $in =~ s/^([0-9a-fA-F]+)[^\r]*\r\n//
            or return ($out, 'bad chunk size line');
        my $size = hex $1;
        if ($size == 0) {
            return ($out, undef);
        }
        return ($out, 'truncated chunk') if length($in) < $size + 2;
        $out .= substr $in, 0, $size;
        substr($in, 0, $size + 2) = '';
    }
}

sub status   { $_[0]{status} }
sub body     { $_[0]{body} }
sub raw_body { $_[0]{raw_body} }
sub raw      { $_[0]{raw} }
sub elapsed  { $_[0]{elapsed} }
sub error    { $_[0]{error} }
sub headers  { @{ $_[0]{headers} } }

# header($name): the value; several fields of one name are joined with
# ", " (so a duplicated header never looks like a single good one).
sub header {
    my ($self, $name) = @_;
    my @v = $self->header_all($name);
    return undef unless @v;
    return join ', ', @v;
}

sub header_all {
    my ($self, $name) = @_;
    return map { $_->[1] } grep { lc $_->[0] eq lc $name } @{ $self->{headers} };
}

# json: the body decoded (UTF-8, strict); dies with the body on failure.
sub json {
    my ($self) = @_;
    return $self->{json} if exists $self->{json};
    my $v = eval { JSON::PP->new->utf8->allow_nonref(0)->decode($self->{body}) };
    croak "response body is not JSON ($@): " . _snippet($self->{body})
        if !defined $v && $@;
    return $self->{json} = $v;
}

# json_or_undef: like json, undef instead of dying.
sub json_or_undef {
    my ($self) = @_;
    my $v = eval { $self->json };
    return $v;
}

sub _snippet {
    my ($s) = @_;
    $s = substr($s, 0, 300) . '...' if length $s > 300;
    return $s;
}

# A short description for diagnostics.
sub describe {
    my ($self) = @_;
    my $s = "status " . ($self->{status} // '?');
    $s .= " ($self->{error})" if $self->{error};
    $s .= "\n" . join('', map { "$_->[0]: $_->[1]\n" } @{ $self->{headers} });
    $s .= "\n" . _snippet($self->{body} // '') . "\n";
    return $s;
}

1;
