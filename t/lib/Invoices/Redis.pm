package Invoices::Redis;

# Helpers for the tests of the Redis list cache (t/cache*.t), on top of
# Invoices::Test.
#
#     use Invoices::Test;
#     use Invoices::Redis;
#
#     my $redis = start_redis();                 # a private redis-server
#     my $whsec = 'whsec_...';
#     start_server(
#         before_start => sub { write_conf_file('whsec', "$whsec\n") },
#         http_config  => cache_http_config($redis->{port}),
#         server_config => webhook_location());
#     my $res = list('?limit=5');                # X-Cache: MISS, then HIT
#     rcmd($redis, 'GET', 'invoices:gen');       # or cache_gen($redis)
#     deliver_event(server_port(), invoice_event('invoice.paid', ...), $whsec);
#
# Also: a tiny TCP proxy in front of Redis that can hold the module's
# traffic or cut it while Redis keeps its data (start_proxy), and a second
# nginx on the same database and Redis (start_nginx).  Core Perl only.

use strict;
use warnings;

use Carp qw(croak);
use Digest::SHA qw(hmac_sha256_hex);
use Exporter 'import';
use File::Temp ();
use IO::Socket::INET;
use JSON::PP ();
use POSIX ();
use Time::HiRes qw(time sleep);

use Invoices::Test;
use Invoices::Test::HTTP ();
use Invoices::Test::Env qw(slurp write_file);
use Invoices::Test::Nginx qw(spawn_nginx);
use Invoices::Webhook ();

our @EXPORT = qw(
    start_redis stop_redis restart_redis redis_alive rcmd rcmd_try
    redis_background reap_background cache_gen redis_calls
    cache_http_config free_port write_conf_file
    start_proxy proxy_mode proxy_held stop_proxy
    start_nginx stop_nginx nginx_log
    list_on list get_on list_is
    webhook_location sign_event deliver_event invoice_event stripe_invoice
    new_stripe_id
);

my $JSON = JSON::PP->new->utf8->canonical;
my @REDIS;      # every redis-server started here, stopped at END
my @PROXIES;
my @NGINX;
my @BG;
my $OWNER = $$;

# free_port(): a loopback port nothing listens on (Invoices::Test::Nginx)
BEGIN { *free_port = \&Invoices::Test::Nginx::free_port }


# write_conf_file($name, $text, [$mode]): PREFIX/conf/$name of this
# file's server (for before_start); returns the path.
sub write_conf_file {
    my ($name, $text, $mode) = @_;
    my $path = server_prefix() . "/conf/$name";
    open my $fh, '>', $path or croak "$path: $!";
    print $fh $text;
    close $fh or croak "$path: $!";
    chmod $mode // 0600, $path;
    return $path;
}

#----------------------------------------------------------------------
# redis-server

# start_redis(%opt) -> { port, dir, ... }: a redis-server of our own on a
# free loopback port, no persistence, DEBUG allowed from loopback.
#   requirepass  a password
sub start_redis {
    my (%o) = @_;
    my $dir = File::Temp::tempdir('invoices-redis-XXXXXX', TMPDIR => 1,
                                  CLEANUP => 1);
    my $r = { dir => $dir, port => $o{port} // free_port(),
              requirepass => $o{requirepass} };
    push @REDIS, $r;
    _redis_spawn($r);
    return $r;
}

sub _redis_spawn {
    my ($r) = @_;
    my @cmd = ('redis-server', '--bind', '127.0.0.1', '--port', $r->{port},
               '--save', '', '--appendonly', 'no',
               '--enable-debug-command', 'local', '--daemonize', 'yes',
               '--dir', $r->{dir}, '--pidfile', "$r->{dir}/redis.pid",
               '--logfile', "$r->{dir}/redis.log");
    push @cmd, '--requirepass', $r->{requirepass} if defined $r->{requirepass};
    unlink "$r->{dir}/redis.pid";
    system(@cmd) == 0 or croak "redis-server failed to start: $?";
    wait_until(sub { redis_alive($r) }, 10)
        or croak "redis-server on port $r->{port} does not answer PING:\n"
               . (slurp("$r->{dir}/redis.log") // '');
    $r->{running} = 1;
}

sub redis_alive {
    my ($r) = @_;
    my ($v) = eval { rcmd_try($r, 'PING') };
    return defined $v && $v eq 'PONG';
}

# stop_redis($r): SIGTERM (no save), wait until the port is closed.
sub stop_redis {
    my ($r) = @_;
    return unless $r->{running};
    my $pid = slurp("$r->{dir}/redis.pid");
    if (defined $pid && $pid =~ /(\d+)/) {
        kill 'TERM', $1;
        my $gone = wait_until(sub { !kill(0, $1) }, 10);
        kill 'KILL', $1 unless $gone;
    }
    $r->{running} = 0;
}

# restart_redis($r): a fresh, empty Redis on the same port.
sub restart_redis {
    my ($r) = @_;
    stop_redis($r);
    _redis_spawn($r);
}

#----------------------------------------------------------------------
# a small RESP client

sub _connect {
    my ($r, $timeout) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $r->{port},
                                  Proto => 'tcp', Timeout => $timeout // 5)
        or croak "connect to redis 127.0.0.1:$r->{port}: $!";
    binmode $s;
    return $s;
}

sub _encode {
    my @a = @_;
    my $s = '*' . @a . "\r\n";
    $s .= '$' . length($_) . "\r\n$_\r\n" for @a;
    return $s;
}

sub _readline {
    my ($s) = @_;
    my $line = <$s>;
    croak "redis: connection closed" unless defined $line;
    $line =~ s/\r\n\z//;
    return $line;
}

# one reply: (value) or (undef, "ERR ...")
sub _read_reply {
    my ($s) = @_;
    my $line = _readline($s);
    my ($t, $rest) = (substr($line, 0, 1), substr($line, 1));
    return ($rest) if $t eq '+';
    return (undef, $rest) if $t eq '-';
    return ($rest + 0) if $t eq ':';
    if ($t eq '$') {
        return (undef) if $rest < 0;
        my $buf = '';
        while (length $buf < $rest + 2) {
            my $n = read($s, $buf, $rest + 2 - length $buf, length $buf);
            croak "redis: short read" unless $n;
        }
        return (substr $buf, 0, $rest);
    }
    if ($t eq '*') {
        return (undef) if $rest < 0;
        my @a;
        for (1 .. $rest) {
            my ($v, $e) = _read_reply($s);
            push @a, defined $e ? { error => $e } : $v;
        }
        return (\@a);
    }
    croak "redis: bad reply line '$line'";
}

# rcmd_try($r, @command) -> ($value, $error): strings, integers, undef for
# nil, arrayrefs.  A fresh connection (authenticated when needed).
sub rcmd_try {
    my ($r, @cmd) = @_;
    my $s = _connect($r, $r->{timeout});
    my $req = '';
    $req .= _encode('AUTH', $r->{requirepass}) if defined $r->{requirepass};
    $req .= _encode(@cmd);
    print {$s} $req;
    if (defined $r->{requirepass}) {
        my (undef, $e) = _read_reply($s);
        croak "redis AUTH: $e" if defined $e;
    }
    my @v = _read_reply($s);
    close $s;
    return @v;
}

# rcmd($r, @command) -> the value; dies on a Redis error.
sub rcmd {
    my ($r, @cmd) = @_;
    my ($v, $e) = rcmd_try($r, @cmd);
    croak "redis @cmd[0..($#cmd > 1 ? 1 : $#cmd)]: $e" if defined $e;
    return $v;
}

# cache_gen($r): the cache generation the module keeps in Redis
# (invoices:gen), 0 while there is none
sub cache_gen {
    my ($r) = @_;
    return rcmd($r, 'GET', 'invoices:gen') // 0;
}

# redis_calls($r, $command) -> how many times Redis ran that command
# (INFO commandstats; 0 before the first)
sub redis_calls {
    my ($r, $cmd) = @_;
    my ($line) = grep { /^cmdstat_\Q$cmd\E:/ }
                 split /\r?\n/, rcmd($r, 'INFO', 'commandstats');
    return $line && $line =~ /calls=(\d+)/ ? $1 : 0;
}

# redis_background($r, @command): sends the command from a child process
# (DEBUG SLEEP), returns at once; the child is reaped by reap_background.
sub redis_background {
    my ($r, @cmd) = @_;
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        eval { rcmd_try({ %$r, timeout => 60 }, @cmd) };
        POSIX::_exit(0);
    }
    push @BG, $pid;
    sleep 0.05;    # the command reaches Redis before we go on
    return $pid;
}

sub reap_background {
    for my $pid (@BG) {
        waitpid $pid, 0;
    }
    @BG = ();
}

# cache_http_config($port, %opt): the http-level cache directives.
#   timeout (200ms), ttl (none: the default), extra (a string after the
#   address: password=..., db=...)
sub cache_http_config {
    my ($port, %o) = @_;
    my $c = "    invoices_redis 127.0.0.1:$port"
          . (defined $o{extra} ? " $o{extra}" : '') . ";\n";
    $c .= "    invoices_redis_timeout " . ($o{timeout} // '200ms') . ";\n";
    $c .= "    invoices_cache_ttl $o{ttl};\n" if defined $o{ttl};
    $c .= "    invoices_cache_local $o{local};\n" if defined $o{local};
    return $c;
}

#----------------------------------------------------------------------
# a TCP proxy in front of Redis, to hold or cut the module's traffic
# while Redis itself stays up with its data.
#
# proxy_mode($p, $mode): "pass" (forward; anything held is sent on),
# "hold_set" (forward until a client sends a SET, then hold that and
# everything after it from that client), "hold" (hold everything clients
# send), "down" (close every connection, refuse new ones at once).

sub start_proxy {
    my ($upstream_port) = @_;
    my $dir = File::Temp::tempdir('invoices-proxy-XXXXXX', TMPDIR => 1,
                                  CLEANUP => 1);
    my $listen = IO::Socket::INET->new(Listen => 64, LocalAddr => '127.0.0.1',
                                       LocalPort => 0, Proto => 'tcp',
                                       ReuseAddr => 1)
        or die "proxy listen: $!";
    my $p = { dir => $dir, port => $listen->sockport };
    write_file("$dir/mode", "pass\n");
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        $SIG{TERM} = sub { POSIX::_exit(0) };
        eval { _proxy_loop($listen, $upstream_port, $dir) };
        POSIX::_exit(0);
    }
    close $listen;
    $p->{pid} = $pid;
    push @PROXIES, $p;
    return $p;
}

sub proxy_mode {
    my ($p, $mode) = @_;
    croak "proxy_mode: bad mode $mode" unless $mode =~ /^(?:pass|hold_set|hold|down)$/;
    write_file("$p->{dir}/mode", "$mode\n");
    # the proxy acknowledges in its next round (every 10 ms)
    wait_until(sub { (slurp("$p->{dir}/ack") // '') eq "$mode\n" }, 5)
        or croak "proxy did not take mode $mode";
}

# proxy_held($p): bytes the proxy holds back now
sub proxy_held {
    my ($p) = @_;
    my $n = slurp("$p->{dir}/held");
    return defined $n ? $n + 0 : 0;
}

sub stop_proxy {
    my ($p) = @_;
    return unless $p->{pid};
    kill 'TERM', $p->{pid};
    waitpid $p->{pid}, 0;
    delete $p->{pid};
}

sub _proxy_loop {
    my ($listen, $up_port, $dir) = @_;
    $listen->blocking(0);
    my @pairs;    # { c, u, held => '', holding => 0, to_c => '', to_u => '' }
    my $mode = 'pass';
    my $last_held = -1;
    while (1) {
        my $m = slurp("$dir/mode") // "pass\n";
        chomp $m;
        if ($m ne $mode) {
            $mode = $m;
            if ($mode eq 'down') {
                for my $pr (@pairs) { close $pr->{c}; close $pr->{u} }
                @pairs = ();
            } elsif ($mode eq 'pass') {
                for my $pr (@pairs) {
                    $pr->{to_u} .= $pr->{held};
                    $pr->{held} = '';
                    $pr->{holding} = 0;
                }
            }
        }
        write_file("$dir/ack", "$mode\n") if (slurp("$dir/ack") // '') ne "$mode\n";
        my $held = 0;
        $held += length $_->{held} for @pairs;
        if ($held != $last_held) {
            write_file("$dir/held", "$held\n");
            $last_held = $held;
        }

        my ($rin, $win) = ('', '');
        vec($rin, fileno($listen), 1) = 1;
        for my $pr (@pairs) {
            vec($rin, fileno($pr->{c}), 1) = 1;
            vec($rin, fileno($pr->{u}), 1) = 1;
            vec($win, fileno($pr->{u}), 1) = 1 if length $pr->{to_u};
            vec($win, fileno($pr->{c}), 1) = 1 if length $pr->{to_c};
        }
        my $n = select(my $rout = $rin, my $wout = $win, undef, 0.01);
        next if $n <= 0;

        if (vec($rout, fileno($listen), 1)) {
            while (my $c = $listen->accept) {
                if ($mode eq 'down') {
                    close $c;
                    next;
                }
                my $u = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                              PeerPort => $up_port,
                                              Proto => 'tcp');
                if (!$u) {
                    close $c;
                    next;
                }
                $_->blocking(0) for $c, $u;
                binmode $_ for $c, $u;
                push @pairs, { c => $c, u => $u, held => '', holding => 0,
                               to_c => '', to_u => '' };
            }
        }
        my @keep;
        for my $pr (@pairs) {
            my $alive = 1;
            if (vec($rout, fileno($pr->{c}), 1)) {
                my $got = sysread($pr->{c}, my $buf, 65536);
                if (!$got) {
                    $alive = 0;
                } else {
                    if ($mode eq 'hold'
                        || ($mode eq 'hold_set'
                            && ($pr->{holding} || $buf =~ /\r\n\$3\r\nSET\r\n/i)))
                    {
                        $pr->{holding} = 1 if $mode eq 'hold_set';
                        $pr->{held} .= $buf;
                    } else {
                        $pr->{to_u} .= $buf;
                    }
                }
            }
            if ($alive && vec($rout, fileno($pr->{u}), 1)) {
                my $got = sysread($pr->{u}, my $buf, 65536);
                if (!$got) { $alive = 0 } else { $pr->{to_c} .= $buf }
            }
            if ($alive && length $pr->{to_u} && vec($wout, fileno($pr->{u}), 1)) {
                my $w = syswrite($pr->{u}, $pr->{to_u});
                substr($pr->{to_u}, 0, $w, '') if $w;
            }
            if ($alive && length $pr->{to_c} && vec($wout, fileno($pr->{c}), 1)) {
                my $w = syswrite($pr->{c}, $pr->{to_c});
                substr($pr->{to_c}, 0, $w, '') if $w;
            }
            if ($alive) {
                push @keep, $pr;
            } else {
                close $pr->{c};
                close $pr->{u};
            }
        }
        @pairs = @keep;
    }
}

#----------------------------------------------------------------------
# a second nginx on the same database (and Redis)

# start_nginx(%opt) -> { port, prefix, pid }: config_text's options
# (http_config, server_config, workers, ...); the database is this file's.
sub start_nginx {
    my (%o) = @_;
    my $prefix = File::Temp::tempdir('invoices-second-XXXXXX', TMPDIR => 1,
                                     CLEANUP => 0);
    chmod 0755, $prefix;
    mkdir "$prefix/$_" or die "mkdir $prefix/$_: $!" for qw(conf logs tmp cores);
    my $keys = slurp(server_prefix() . '/conf/keys') // "test-key\n";
    open my $fh, '>', "$prefix/conf/keys" or die $!;
    print $fh $keys;
    close $fh;
    chmod 0600, "$prefix/conf/keys";
    for my $f (@{ $o{copy_files} || [] }) {
        my $text = slurp(server_prefix() . "/conf/$f") // die "no conf/$f";
        open my $out, '>', "$prefix/conf/$f" or die $!;
        print $out $text;
        close $out;
        chmod 0600, "$prefix/conf/$f";
    }
    my $port = free_port();
    my $conf = config_text(%o, prefix => $prefix, port => $port, db => db_name());
    open my $cf, '>', "$prefix/conf/nginx.conf" or die $!;
    print $cf $conf;
    close $cf;
    my $pid = spawn_nginx($prefix);
    my $n = { port => $port, prefix => $prefix, pid => $pid };
    push @NGINX, $n;
    my $up = wait_until(sub {
        return 0 if waitpid($pid, POSIX::WNOHANG()) == $pid && ($n->{dead} = 1);
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
                                      Proto => 'tcp', Timeout => 1);
        return $s ? 1 : 0;
    }, 10);
    croak "second nginx did not start:\n" . nginx_log($n)
        . (slurp("$prefix/logs/stdout.log") // '') unless $up && !$n->{dead};
    return $n;
}

sub nginx_log {
    my ($n) = @_;
    return slurp("$n->{prefix}/logs/error.log") // '';
}

# stop_nginx($n) -> (exited gracefully, exit status)
sub stop_nginx {
    my ($n) = @_;
    return (1, $n->{status}) unless $n->{pid};
    kill 'QUIT', $n->{pid};
    my $ok = wait_until(sub { waitpid($n->{pid}, POSIX::WNOHANG()) == $n->{pid} }, 15);
    if ($ok) {
        $n->{status} = $?;
    } else {
        kill 'KILL', -$n->{pid};
        waitpid $n->{pid}, 0;
    }
    delete $n->{pid};
    system 'rm', '-rf', '--', $n->{prefix}
        if $ok && ($ENV{INVOICES_TEST_KEEP} // '') ne '2';
    return ($ok ? 1 : 0, $n->{status});
}

#----------------------------------------------------------------------
# requests

# list_on($port, $query, @headers): GET /admin/api/invoices$query with
# the admin key, on any nginx.
sub list_on {
    my ($port, $query, @h) = @_;
    return Invoices::Test::HTTP::request($port, GET => '/admin/api/invoices'
        . ($query // ''), [['Api-Key', API_KEY], @h], undef,
        timeout => 10 * time_factor());
}

sub get_on {
    my ($port, $path, @h) = @_;
    return Invoices::Test::HTTP::request($port, GET => $path,
        [['Api-Key', API_KEY], @h], undef, timeout => 10 * time_factor());
}

# list_is($res, $xcache, $name): a 200 list with that X-Cache (HIT, MISS,
# BYPASS); the response described when not.
sub list_is {
    my ($res, $xcache, $name) = @_;
    my $ok = Test::More::is($res->status, 200, "$name: 200");
    $ok &&= Test::More::is($res->header('X-Cache'), $xcache, "$name: X-Cache $xcache");
    Test::More::diag($res->describe) unless $ok;
    return $ok;
}

# list($query, @headers): list_on this file's server.
sub list { return list_on(server_port(), @_) }

#----------------------------------------------------------------------
# Stripe events, signed with Stripe's real scheme

# webhook_location([$secret_file]): the location of POST /stripe/webhook
# with the secret in $secret_file (default whsec: PREFIX/conf/whsec)
sub webhook_location {
    my ($secret_file) = @_;
    return Invoices::Webhook::webhook_location(
        secrets => ['file:' . ($secret_file // 'whsec')]);
}

# new_stripe_id($prefix): "${prefix}_1" and 23 random characters
# (Invoices::Webhook::new_id)
BEGIN { *new_stripe_id = \&Invoices::Webhook::new_id }

# stripe_invoice(%f) -> an invoice object shaped like Stripe's
# (Invoices::Webhook::stripe_invoice)
BEGIN { *stripe_invoice = \&Invoices::Webhook::stripe_invoice }

# invoice_event($type, $invoice, %opt) -> the event; id, created
# (Invoices::Webhook::invoice_event)
BEGIN { *invoice_event = \&Invoices::Webhook::invoice_event }

# sign_event($body, $whsec, [$t]) -> the Stripe-Signature value, made by
# the one signer (Invoices::Webhook)
sub sign_event {
    my ($body, $whsec, $t) = @_;
    return Invoices::Webhook::signature_header($body, secret => $whsec,
                                               defined $t ? (t => $t) : ());
}

# deliver_event($port, $event_or_body, $whsec) -> response of POST
# /stripe/webhook on that nginx.
sub deliver_event {
    my ($port, $ev, $whsec) = @_;
    my $body = ref $ev ? $JSON->encode($ev) : $ev;
    return Invoices::Test::HTTP::request($port, POST => '/stripe/webhook',
        [['Content-Type', 'application/json; charset=utf-8'],
         ['Stripe-Signature', sign_event($body, $whsec)]], $body,
        timeout => 10 * time_factor());
}

END {
    if ($$ == $OWNER) {
        local $?;
        reap_background();
        stop_nginx($_) for @NGINX;
        stop_proxy($_) for @PROXIES;
        stop_redis($_) for @REDIS;
    }
}

1;
