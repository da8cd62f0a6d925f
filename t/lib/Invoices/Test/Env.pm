package Invoices::Test::Env;

# The ground the rest of the harness stands on (see Invoices::Test): the
# environment scripts/test exports, the run modes (valgrind, sanitizers)
# and the factor they scale every timing bound by, polling, running a
# command, and small file and text helpers.

use strict;
use warnings;

use File::Temp ();
use POSIX ();
use Time::HiRes qw(time sleep);
use Exporter 'import';

our @EXPORT_OK = qw(
    env_or_die valgrind_mode sanitize_mode time_factor wait_until
    run_cmd spawn exit_code slurp write_file tail random_alnum
);
our %EXPORT_TAGS = (all => \@EXPORT_OK);

# The packages of the harness: a croak in one of them names the line of
# the test that called into the harness (each has @CARP_NOT = these).
our @HARNESS = qw(Invoices::Test Invoices::Test::Env Invoices::Test::DB
                  Invoices::Test::Fake Invoices::Test::Nginx
                  Invoices::Test::Requests);
our @CARP_NOT = @HARNESS;

my @ENV_NEEDED = qw(INVOICES_TEST_PGHOST INVOICES_TEST_PGPORT
                    INVOICES_TEST_PGUSER INVOICES_TEST_PGDATA
                    INVOICES_MODULE INVOICES_REPO);

# env_or_die() -> (NAME => value, ...) of the variables scripts/test sets;
# dies saying how to run when one is missing.
sub env_or_die {
    my @missing = grep { !defined $ENV{$_} || $ENV{$_} eq '' } @ENV_NEEDED;
    if (@missing) {
        die "Invoices::Test: @missing not set: run through make test or "
          . "scripts/test\n";
    }
    return map { $_ => $ENV{$_} } @ENV_NEEDED, 'INVOICES_TEST_REDIS_PORT';
}

sub valgrind_mode { ($ENV{TEST_NGINX_USE_VALGRIND} // '') =~ /^[1-9]/ ? 1 : 0 }
sub sanitize_mode { ($ENV{INVOICES_TEST_SANITIZE} // '') =~ /^[1-9]/ ? 1 : 0 }

# Multiply every timing bound by this (valgrind is ~20x slower, ASan ~2x).
sub time_factor { valgrind_mode() ? 15 : sanitize_mode() ? 3 : 1 }

# wait_until($sub, $seconds) -> the first true value of $sub (polled every
# 50 ms), or undef after $seconds (default 10, scaled by time_factor).
sub wait_until {
    my ($code, $seconds) = @_;
    my $deadline = time + ($seconds // 10) * time_factor();
    while (1) {
        my $v = $code->();
        return $v if $v;
        return undef if time > $deadline;
        sleep 0.05;
    }
}

#----------------------------------------------------------------------
# processes

# run_cmd(\@cmd, stdin => $text, env => {...}) -> ($exit_status, $stdout,
# $stderr)
sub run_cmd {
    my ($cmd, %opt) = @_;
    my $errf = File::Temp->new(TEMPLATE => 'invoices-err-XXXXXX', TMPDIR => 1);
    my $inf;
    if (defined $opt{stdin}) {
        $inf = File::Temp->new(TEMPLATE => 'invoices-in-XXXXXX', TMPDIR => 1);
        binmode $inf;
        print $inf $opt{stdin};
        close $inf;
    }
    pipe(my $r, my $w) or die "pipe: $!";
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        close $r;
        open STDOUT, '>&', $w or POSIX::_exit(126);
        open STDERR, '>', "$errf" or POSIX::_exit(126);
        open STDIN, '<', (defined $inf ? "$inf" : '/dev/null')
            or POSIX::_exit(126);
        $ENV{$_} = $opt{env}{$_} for keys %{ $opt{env} || {} };
        exec @$cmd or POSIX::_exit(127);
    }
    close $w;
    binmode $r;
    my $out = do { local $/; <$r> } // '';
    close $r;
    waitpid $pid, 0;
    my $status = $?;
    my $err = do { local $/; open my $fh, '<', "$errf"; <$fh> } // '';
    return ($status, $out, $err);
}

# spawn(\@cmd, $log, %env) -> pid: @cmd in the background, in a process
# group of its own (to be killed with its children), stdin /dev/null,
# stdout and stderr appended to $log, %env added to the environment.
sub spawn {
    my ($cmd, $log, %env) = @_;
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        open STDIN, '<', '/dev/null';
        open STDOUT, '>>', $log;
        open STDERR, '>>', $log;
        POSIX::setpgid(0, 0);
        %ENV = (%ENV, %env);
        exec @$cmd or POSIX::_exit(127);
    }
    return $pid;
}

# exit_code($?) -> the exit code, or 128 + the signal that killed it
sub exit_code { my ($st) = @_; return $st == -1 ? -1 : ($st >> 8) || ($st & 127 ? 128 + ($st & 127) : 0) }

#----------------------------------------------------------------------
# files and text

# slurp($file) -> its bytes, or undef when it cannot be read
sub slurp {
    my ($file) = @_;
    open my $fh, '<', $file or return undef;
    binmode $fh;
    local $/;
    return <$fh>;
}

# write_file($file, $text): through $file.tmp and a rename, so that a
# process reading the file at the same time sees the old or the new text,
# never a part.
sub write_file {
    my ($file, $text) = @_;
    open my $fh, '>', "$file.tmp" or die "$file: $!";
    print $fh $text;
    close $fh or die "$file: $!";
    rename "$file.tmp", $file or die "rename $file: $!";
}

# tail($text, $n): its last $n lines
sub tail {
    my ($text, $n) = @_;
    my @l = split /\n/, $text;
    @l = @l[-$n .. -1] if @l > $n;
    return join "\n", @l;
}

# random_alnum($n): $n random characters of [A-Za-z0-9]
sub random_alnum {
    my ($n) = @_;
    return join '', map { ('A'..'Z', 'a'..'z', 0..9)[rand 62] } 1 .. $n;
}

1;
