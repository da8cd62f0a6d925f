package Invoices::Load;

# A small load generator for the fault tests (t/faults_*.t), core Perl:
# forked clients send requests back to back over new connections while
# the test breaks something, and every exchange is recorded.
#
#     my $load = start_load(clients => 6, requests => [
#         [GET => '/admin/api/invoices?limit=5'],
#         [GET => '/admin/api/invoices/in_x'],
#     ]);
#     ... break something, wait_until(sub { load_count($load, since => $t) > 20 }) ...
#     my @rec = stop_load($load);
#
# Each record is a hashref: t0 and t1 (epoch seconds, when the request
# was sent and the answer ended), elapsed, method, path, status (0: no
# answer), complete (the whole answer arrived: a status line, and as
# many body bytes as Content-Length said or a whole chunked body), bytes
# (how many bytes came back), error (the client's reason when there was
# no complete answer: "connect: ...", "timed out", "reset"...), and
# content_type, retry_after, x_cache, code (error.code of a JSON error
# body), json (1 when the body parsed as JSON).
#
# Also: fd_count($pid) from /proc (and worker_pids($master), which is
# Invoices::Test's, exported here too for the tests that import it), and
# lock_invoices() / unlock_invoices($pid): another PostgreSQL session
# that holds an exclusive lock on the invoices table (statements on it
# wait), for "PostgreSQL slow" and for holding a pool thread.

use strict;
use warnings;

use Carp qw(croak);
use Exporter 'import';
use File::Temp ();
use IO::Socket::INET;
use JSON::PP ();
use POSIX ();
use Time::HiRes qw(time sleep);

use Invoices::Test;
use Invoices::Test::HTTP ();

our @EXPORT = qw(start_load stop_load load_records load_count
                 worker_pids fd_count summarize
                 lock_invoices invoices_locked unlock_invoices lock_waiters);

my $JSON = JSON::PP->new->utf8->canonical;
my $OWNER = $$;
my @RUNNING;

# start_load(%opt) -> $load
#   clients   how many processes (4)
#   requests  arrayref of [method, path, headers, body] (Api-Key added
#             unless given), or a sub called with ($client, $n) that
#             returns one such arrayref; each client cycles through them
#   port      (server_port())
#   timeout   per request, seconds (10, scaled by time_factor)
#   pause     seconds between two requests of one client (0)
sub start_load {
    my (%o) = @_;
    my $port = $o{port} // server_port();
    my $clients = $o{clients} // 4;
    my $timeout = ($o{timeout} // 10) * time_factor();
    my $dir = File::Temp::tempdir('invoices-load-XXXXXX', TMPDIR => 1, CLEANUP => 1);
    my $reqs = $o{requests} or croak 'start_load: requests';
    my $pick = ref $reqs eq 'CODE' ? $reqs
             : sub { my ($c, $n) = @_; $reqs->[($c + $n) % @$reqs] };
    my $load = { dir => $dir, pids => [], timeout => $timeout };
    for my $c (0 .. $clients - 1) {
        my $pid = fork // die "fork: $!";
        if (!$pid) {
            _client($port, $c, $pick, $timeout, $o{pause} // 0, $dir);
            POSIX::_exit(0);
        }
        push @{ $load->{pids} }, $pid;
    }
    push @RUNNING, $load;
    return $load;
}

sub _client {
    my ($port, $c, $pick, $timeout, $pause, $dir) = @_;
    $SIG{PIPE} = 'IGNORE';
    open my $out, '>>', "$dir/client-$c" or POSIX::_exit(1);
    $out->autoflush(1);
    for (my $n = 0; !-e "$dir/stop"; $n++) {
        my ($method, $path, $headers, $body) = @{ $pick->($c, $n) };
        my @h = Invoices::Test::HTTP::normalize_headers($headers);
        unshift @h, ['Api-Key', API_KEY] unless grep { lc $_->[0] eq 'api-key' } @h;
        my $t0 = time;
        my $res = eval {
            Invoices::Test::HTTP::request($port, $method, $path, \@h, $body,
                                          timeout => $timeout);
        };
        my $rec = $res ? record($res, $method, $path, $t0)
                : { t0 => $t0, t1 => time, elapsed => time - $t0, method => $method,
                    path => $path, status => 0, complete => 0, bytes => 0,
                    error => 'connect: ' . ($@ =~ s/ at .*//sr) };
        print {$out} $JSON->encode($rec), "\n";
        sleep $pause if $pause;
    }
    close $out;
}

# record($response, $method, $path, $t0): the record of one exchange
sub record {
    my ($res, $method, $path, $t0) = @_;
    my $raw = $res->raw // '';
    my %r = (t0 => $t0, t1 => $t0 + $res->elapsed, elapsed => $res->elapsed,
             method => $method, path => $path, status => $res->status + 0,
             bytes => length $raw);
    my $complete = $res->status && !$res->error;
    if ($complete && $method ne 'HEAD' && $res->status != 304 && $res->status != 204) {
        my $cl = $res->header('Content-Length');
        if (defined $cl) {
            $complete = $cl =~ /^\d+$/ && length($res->raw_body) == $cl;
        } elsif (lc($res->header('Transfer-Encoding') // '') ne 'chunked') {
            $complete = 0;    # neither: we cannot know, count it as broken
        }
    }
    $r{complete} = $complete ? 1 : 0;
    $r{error} = $res->error // ($complete ? undef
                               : $res->{timed_out} ? 'timed out' : 'truncated');
    $r{content_type} = $res->header('Content-Type');
    $r{retry_after} = $res->header('Retry-After');
    $r{x_cache} = $res->header('X-Cache');
    my $j = $res->json_or_undef;
    $r{json} = defined $j ? 1 : 0;
    $r{code} = $j->{error}{code} if ref $j eq 'HASH' && ref $j->{error} eq 'HASH';
    $r{id} = $j->{id} if ref $j eq 'HASH' && !ref $j->{id};
    return \%r;
}

# load_records($load): every record written so far, sorted by t0
sub load_records {
    my ($load) = @_;
    my @r;
    for my $f (glob "$load->{dir}/client-*") {
        open my $fh, '<', $f or next;
        while (my $line = <$fh>) {
            next unless $line =~ /\n\z/;    # a line being written
            push @r, $JSON->decode($line);
        }
    }
    return sort { $a->{t0} <=> $b->{t0} } @r;
}

# load_count($load, %filter): how many records so far; since => t (t0 at
# or after), status => N, x_cache => 'HIT'
sub load_count {
    my ($load, %f) = @_;
    return scalar grep {
        (!defined $f{since} || $_->{t0} >= $f{since})
        && (!defined $f{status} || $_->{status} == $f{status})
        && (!defined $f{x_cache} || ($_->{x_cache} // '') eq $f{x_cache})
    } load_records($load);
}

# stop_load($load) -> every record; the clients end their request in
# flight first (each within its timeout)
sub stop_load {
    my ($load) = @_;
    return () if $load->{stopped}++;
    open my $fh, '>', "$load->{dir}/stop" or die "stop: $!";
    close $fh;
    my $deadline = time + $load->{timeout} + 5;
    for my $pid (@{ $load->{pids} }) {
        while (waitpid($pid, POSIX::WNOHANG()) == 0) {
            if (time > $deadline) {
                kill 'KILL', $pid;
                waitpid $pid, 0;
                last;
            }
            sleep 0.02;
        }
    }
    @RUNNING = grep { $_ != $load } @RUNNING;
    return load_records($load);
}

# summarize(@records): "200 x 31, 503 x 4" (for test names and diags)
sub summarize {
    my %n;
    $n{ $_->{status} . ($_->{complete} ? '' : ' incomplete') }++ for @_;
    return join ', ', map { "$_ x $n{$_}" } sort keys %n;
}

# worker_pids($master): the pids of the master's children, sorted (see
# Invoices::Test::Nginx)
BEGIN { *worker_pids = \&Invoices::Test::Nginx::worker_pids }

# fd_count($pid): how many file descriptors the process holds
sub fd_count {
    my ($pid) = @_;
    opendir my $d, "/proc/$pid/fd" or return undef;
    my $n = grep { !/^\./ } readdir $d;
    return $n;
}

# lock_invoices() -> the pid of a psql that holds ACCESS EXCLUSIVE on
# invoices (for at most 60 s) once invoices_locked() is true
sub lock_invoices {
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        open STDIN, '<', '/dev/null';
        open STDOUT, '>', '/dev/null';
        open STDERR, '>', '/dev/null';
        $ENV{PGAPPNAME} = 'faults_locker';
        { exec 'psql', '-X', '-q', '-h', $ENV{INVOICES_TEST_PGHOST},
               '-p', $ENV{INVOICES_TEST_PGPORT}, '-U', $ENV{INVOICES_TEST_PGUSER},
               '-d', db_name(),
               '-c', 'BEGIN; LOCK TABLE invoices IN ACCESS EXCLUSIVE MODE; '
                   . 'SELECT pg_sleep(60)'; }
        POSIX::_exit(127);
    }
    return $pid;
}

sub invoices_locked {
    return sql_value(q{SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
                       WHERE a.application_name = 'faults_locker' AND l.granted
                         AND l.relation = 'invoices'::regclass
                         AND l.mode = 'AccessExclusiveLock'}) > 0;
}

# statements of the module waiting for that lock
sub lock_waiters {
    return sql_value(q{SELECT count(*) FROM pg_stat_activity
                       WHERE application_name = 'ngx_http_invoices'
                         AND wait_event_type = 'Lock'});
}

sub unlock_invoices {
    my ($pid) = @_;
    sql_value(q{SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                WHERE application_name = 'faults_locker'});
    waitpid $pid, 0 if $pid;
}

END {
    if ($$ == $OWNER) {
        local $?;
        stop_load($_) for @RUNNING;
    }
}

1;
