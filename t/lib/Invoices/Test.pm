package Invoices::Test;

# The test harness of ngx_http_invoices_module.
#
#     use Test::More;
#     use Invoices::Test;
#
#     start_server();                 # fresh database + nginx for this file
#     run_blocks(default_headers => 'Api-Key: test-key');
#     ... plain Perl tests ...
#     done_testing();                 # stops nginx, checks its logs
#
#     __DATA__
#     === a block (see Invoices::Test::Blocks and run_blocks below)
#
# start_server(stripe => 1) also starts scripts/fake-stripe for the file
# and points nginx at it (see _stripe_opts); helpers: fake_url,
# fake_control, fake_config, fake_requests, fake_reset, fake_stripe,
# stripe_secret, linked_customer, create_body, create_invoice,
# stripe_invoices_of.  parallel_requests / start_request +
# finish_request keep several requests in flight at once.
#
# One server per test file: a database with a random name (migrated with
# scripts/migrate), a temporary nginx prefix with a generated config on a
# free loopback port.  When done_testing runs, nginx is stopped gracefully
# and the file fails if nginx's error log holds [alert], [crit] or
# [emerg] lines (or, under TEST_NGINX_USE_VALGRIND=1, if valgrind found
# errors; under INVOICES_TEST_SANITIZE=1, if ASan or UBSan reported).  The database is dropped and the prefix removed, unless
# INVOICES_TEST_KEEP=1 and the file failed (then the prefix path is
# printed; INVOICES_TEST_KEEP=2 keeps it always).
#
# Block sections (run_blocks; parser in Invoices::Test::Blocks):
#   request          "METHOD /path[?query] [HTTP/1.x]", optional body after
#                    a blank line (or in request_body)
#   raw_request      bytes sent as they are (use "--- raw_request eval"
#                    with "\r\n" in a Perl string)
#   more_headers     "Name: value" lines ("Name:" sends an empty value)
#   no_default_headers   leave run_blocks' default_headers out
#   setup            SQL, or one word: the name of a sub in main, called
#                    with the block; setup_sql: SQL (both before the request)
#   error_code       the expected status
#   response_headers "Name: exact value" lines, "!Name" for absent
#   response_headers_like  "Name: regex" lines
#   response_body    exact (empty section: no body bytes at all)
#   response_body_like / response_body_unlike   a regex (/s)
#   json_path        typed JSON checks, see Invoices::Test::JSONCheck
#   error_log / no_error_log  substrings of what the error log got during
#                    the block
#   db_unchanged     the database is byte for byte the same afterwards
#                    (teams, invoices, idempotency_keys)
#   stripe_requests  how many /v1 requests the fake Stripe got during the
#                    block (start_server(stripe => ...))
#   timeout, response_time_max  seconds (scaled by time_factor())
#   skip, todo, ONLY the usual
# {{name}} in any section is replaced by block_vars(name => value).
# A block must assert something, unknown sections are errors.
#
# Environment (set by scripts/test): INVOICES_TEST_PGHOST,
# INVOICES_TEST_PGPORT, INVOICES_TEST_PGUSER, INVOICES_TEST_PGDATA,
# INVOICES_TEST_REDIS_PORT, INVOICES_MODULE, INVOICES_REPO.  Optional:
# INVOICES_NGINX (default /usr/sbin/nginx), TEST_NGINX_USE_VALGRIND,
# INVOICES_TEST_KEEP, INVOICES_TEST_SANITIZE (set by `make test
# SANITIZE=1`: INVOICES_MODULE is built with ASan and UBSan; nginx runs
# with the ASan runtime preloaded, reports go to logs/asan.* and
# logs/ubsan.*, and any report fails the file).

use strict;
use warnings;

use Test::More ();
use File::Temp ();
use JSON::PP ();
use POSIX ();
use IO::Socket::INET;
use Time::HiRes qw(time sleep);
use Digest::SHA qw(sha1_hex);
use Carp qw(croak);
use Exporter 'import';

use Invoices::Test::HTTP ();
use Invoices::Test::Blocks qw(parse_blocks);
use Invoices::Test::JSONCheck qw(decode_typed parse_check_lines run_check
                                 canon typed);

our @EXPORT = qw(
    start_server stop_server server_port server_prefix db_name server_info
    request api_request raw_request
    sql sql_do sql_json sql_value quote insert_row insert_rows
    insert_team insert_invoice object_id db_fingerprint
    run_blocks blocks_from_data block_vars
    nginx_config_test config_text
    pg_stop pg_start pg_is_stopped
    error_log_text error_log_mark error_log_since
    json_typed json_check time_factor valgrind_mode sanitize_mode wait_until
    API_KEY API_KEY_2
    parallel_requests start_request finish_request
    fake_url fake_control fake_config fake_requests fake_reset
    fake_stripe stripe_secret linked_customer
    create_body create_invoice stripe_invoices_of
);

use constant API_KEY   => 'test-key';
use constant API_KEY_2 => 'test-key-2';

my @ENV_NEEDED = qw(INVOICES_TEST_PGHOST INVOICES_TEST_PGPORT
                    INVOICES_TEST_PGUSER INVOICES_TEST_PGDATA
                    INVOICES_MODULE INVOICES_REPO);

our %S;          # the state of this file's server
our %VARS;       # {{name}} substitutions in blocks
our @STRIPE_DIRECTIVES = qw(secret_key api_base version thread_pool
                            connect_timeout timeout max_retries);
my $OWNER = $$;  # END and hooks act only in the process that loaded us
my $TESTING_DONE_HOOKED;
my $PG_STOPPED;

sub env_or_die {
    my @missing = grep { !defined $ENV{$_} || $ENV{$_} eq '' } @ENV_NEEDED;
    if (@missing) {
        die "Invoices::Test: @missing not set: run through make test or "
          . "scripts/test\n";
    }
    return map { $_ => $ENV{$_} } @ENV_NEEDED, 'INVOICES_TEST_REDIS_PORT';
}

sub nginx_binary { $ENV{INVOICES_NGINX} // '/usr/sbin/nginx' }
sub valgrind_mode { ($ENV{TEST_NGINX_USE_VALGRIND} // '') =~ /^[1-9]/ ? 1 : 0 }
sub sanitize_mode { ($ENV{INVOICES_TEST_SANITIZE} // '') =~ /^[1-9]/ ? 1 : 0 }

# Multiply every timing bound by this (valgrind is ~20x slower, ASan ~2x).
sub time_factor { valgrind_mode() ? 15 : sanitize_mode() ? 3 : 1 }

# The environment of an nginx that loads the sanitized module: Debian's
# nginx is not instrumented, so the ASan runtime is preloaded (and may not
# come first); nginx's own allocations are never freed at exit, so leak
# detection is off (valgrind mode checks leaks).  Reports go to files in
# $prefix/logs, which _sanitizer_problems reads.  nginx_env($prefix):
# the variables to set for an nginx with that prefix (none normally).
my $ASAN_LIB;
sub nginx_env {
    my ($prefix) = @_;
    return () unless sanitize_mode();
    $ASAN_LIB //= do {
        my $lib = `gcc -print-file-name=libasan.so`;
        chomp $lib;
        $lib;
    };
    return (LD_PRELOAD => $ASAN_LIB,
            ASAN_OPTIONS => join(':', "log_path=$prefix/logs/asan",
                                 qw(detect_leaks=0 verify_asan_link_order=0
                                    halt_on_error=1 abort_on_error=1
                                    detect_stack_use_after_return=0)),
            UBSAN_OPTIONS => join(':', "log_path=$prefix/logs/ubsan",
                                  qw(print_stacktrace=1 halt_on_error=0)));
}

sub _sanitizer_problems {
    my @problems;
    for my $prefix (grep { defined } $S{prefix},
                    @{ $S{config_test_prefixes} || [] }) {
        for my $f (glob "$prefix/logs/asan.* $prefix/logs/ubsan.*") {
            my $log = _slurp($f) // '';
            next unless $log =~ /\S/;
            push @problems, "$f:\n" . _tail($log, 40);
        }
    }
    return @problems;
}

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

# run_cmd(\@cmd, stdin => $text) -> ($exit_status, $stdout, $stderr)
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

sub _exit_code { my ($st) = @_; return $st == -1 ? -1 : ($st >> 8) || ($st & 127 ? 128 + ($st & 127) : 0) }

#----------------------------------------------------------------------
# PostgreSQL

sub _psql_base {
    my ($db) = @_;
    my %e = env_or_die();
    return ('psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1',
            '-h', $e{INVOICES_TEST_PGHOST}, '-p', $e{INVOICES_TEST_PGPORT},
            '-U', $e{INVOICES_TEST_PGUSER}, '-d', $db // 'postgres');
}

sub _psql {
    my ($db, $sql, @args) = @_;
    my ($st, $out, $err) = run_cmd([_psql_base($db), @args, '-f', '-'],
                                   stdin => $sql,
                                   env => { PGCONNECT_TIMEOUT => 5 });
    croak "psql failed (exit " . _exit_code($st) . "): $err\nSQL: "
        . (length $sql > 2000 ? substr($sql, 0, 2000) . '...' : $sql)
        if $st;
    return $out;
}

sub _db { $S{db} // croak "no database: call start_server first" }

# sql($query) -> list of rows, each an arrayref of strings (undef = NULL).
# One statement; for several, use sql_do.
sub sql {
    my ($query, $db) = @_;
    my $out = _psql($db // _db(), $query, '-A', '-t',
                    '-F', "\x1f", '-R', "\x1e", '-P', "null=\x01N\x01");
    $out =~ s/\n\z//;
    return () if $out eq '';
    return map {
        [ map { $_ eq "\x01N\x01" ? undef : $_ } split /\x1f/, $_, -1 ]
    } split /\x1e/, $out, -1;
}

# sql_value($query): the first column of the first row.
sub sql_value {
    my @rows = sql(@_);
    return @rows ? $rows[0][0] : undef;
}

# sql_do($sql): run any SQL (several statements allowed), return its output.
sub sql_do {
    my ($query, $db) = @_;
    return _psql($db // _db(), $query, '-A', '-t');
}

# sql_json($select) -> arrayref of hashrefs, typed by PostgreSQL's JSON.
sub sql_json {
    my ($query, $db) = @_;
    $query =~ s/;\s*\z//;
    my $out = _psql($db // _db(),
        "SELECT coalesce(json_agg(q), '[]'::json) FROM ($query) q", '-A', '-t');
    return JSON::PP->new->utf8->decode($out);
}

# quote($value): an SQL literal; undef is NULL; a scalar ref is raw SQL.
sub quote {
    my ($v) = @_;
    return 'NULL' unless defined $v;
    return $$v if ref $v eq 'SCALAR';
    croak "quote: cannot quote a " . ref($v) if ref $v;
    croak "quote: NUL byte in value" if $v =~ /\0/;
    my $s = $v;
    utf8::encode($s) if utf8::is_utf8($s);
    $s =~ s/'/''/g;
    return "'$s'";
}

sub _ident {
    my ($name) = @_;
    croak "bad SQL identifier '$name'" unless $name =~ /^[a-z_][a-z0-9_]*$/;
    return $name;
}

# insert_rows($table, @hashrefs) -> the rows as stored (hashrefs, from
# row_to_json), in one psql run.
sub insert_rows {
    my ($table, @rows) = @_;
    return () unless @rows;
    my $sql = "SET client_min_messages = warning;\n";
    for my $row (@rows) {
        my @cols = sort keys %$row;
        $sql .= sprintf "INSERT INTO %s (%s) VALUES (%s) RETURNING row_to_json(%s.*);\n",
            _ident($table), join(', ', map { _ident($_) } @cols),
            join(', ', map { quote($row->{$_}) } @cols), _ident($table);
        $sql =~ s/\(\) VALUES \(\)/DEFAULT VALUES/;
    }
    my $out = _psql(_db(), $sql, '-A', '-t');
    my @got = map { JSON::PP->new->utf8->decode($_) } grep { length } split /\n/, $out;
    croak "insert_rows: expected " . @rows . " rows back, got " . @got
        unless @got == @rows;
    return wantarray ? @got : $got[0];
}

sub insert_row { my ($table, $row) = @_; return (insert_rows($table, $row))[0] }

my $SEQ = 0;

# object_id([$epoch]): a fresh id in ObjectId form (24 lowercase hex).
sub object_id {
    my ($epoch) = @_;
    $epoch //= time;
    my $rand = join '', map { sprintf '%02x', int rand 256 } 1 .. 8;
    return sprintf('%08x', int $epoch) . $rand;
}

sub insert_team {
    my (%f) = @_;
    $SEQ++;
    $f{name} //= "Team $SEQ";
    return insert_row(teams => \%f);
}

# insert_invoice(%fields): defaults for whatever is not given.
sub insert_invoice {
    my (%f) = @_;
    $SEQ++;
    $f{stripe_invoice_id} //= sprintf 'in_test%d%s', $SEQ,
        join '', map { ('A'..'Z', 'a'..'z', 0..9)[rand 62] } 1 .. 12;
    $f{status} //= 'paid';
    $f{amount} //= 1000;
    $f{currency} //= 'eur';
    $f{stripe_created_at} //= \"date_trunc('milliseconds', now())";
    return insert_row(invoices => \%f);
}

# db_fingerprint(): a digest of every row of every table we own, to show
# that a request changed nothing.
sub db_fingerprint {
    my $out = sql_do(<<'SQL');
SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM teams t;
SELECT md5(coalesce(string_agg(i::text, '|' ORDER BY i::text), '')) FROM invoices i;
SELECT md5(coalesce(string_agg(k::text, '|' ORDER BY k::text), '')) FROM idempotency_keys k;
SELECT string_agg(table_name, ',' ORDER BY table_name)
  FROM information_schema.tables WHERE table_schema = 'public';
SQL
    $out =~ s/\s+/ /g;
    return $out;
}

sub pg_stop {
    my %e = env_or_die();
    my ($st, $out, $err) = run_cmd(["$e{INVOICES_REPO}/scripts/pg", 'stop',
                                    $e{INVOICES_TEST_PGDATA}]);
    croak "scripts/pg stop failed: $out$err" if $st;
    $PG_STOPPED = 1;
}

sub pg_start {
    my %e = env_or_die();
    my ($st, $out, $err) = run_cmd(["$e{INVOICES_REPO}/scripts/pg", 'start',
                                    $e{INVOICES_TEST_PGDATA}]);
    croak "scripts/pg start failed: $out$err" if $st;
    $PG_STOPPED = 0;
}

sub pg_is_stopped { $PG_STOPPED }

#----------------------------------------------------------------------
# nginx configuration

sub _free_port {
    my $s = IO::Socket::INET->new(Listen => 1, LocalAddr => '127.0.0.1',
                                  LocalPort => 0, Proto => 'tcp', ReuseAddr => 0)
        or die "cannot find a free port: $!";
    my $port = $s->sockport;
    close $s;
    return $port;
}

my $DEFAULT_KEYS = "# admin API keys, one a line (two during a rotation)\n"
                 . API_KEY . "\n\n" . API_KEY_2 . "\n";

# config_text(%opt): the nginx.conf text.  Options:
#   prefix, port (required), db (database name)
#   module        0: no load_module/thread_pool/invoices_* lines at all
#   database      conninfo string; undef: leave invoices_database out
#   keys_file     path; undef: leave invoices_api_keys_file out
#   workers (1), threads (4), master (1), log_level (info)
#   main_config, http_config, server_config, location_config: extra text
#   location      the whole admin location block instead of the default
#   admin_directive  text of the admin directive ("invoices_admin;")
#   stripe        a hashref (see _stripe_opts): the Stripe directives
sub config_text {
    my (%o) = @_;
    my %e = env_or_die();
    my $p = $o{prefix};
    my $module = $o{module} // 1;
    my $workers = $o{workers} // 1;
    my $threads = $o{threads} // 4;
    my $level = $o{log_level} // 'info';
    my $valgrind = valgrind_mode();
    my $master = $valgrind ? 0 : ($o{master} // 1);

    my $database = exists $o{database} ? $o{database}
        : sprintf 'host=%s port=%s dbname=%s user=%s',
                  $e{INVOICES_TEST_PGHOST}, $e{INVOICES_TEST_PGPORT},
                  $o{db} // 'invoices_none', $e{INVOICES_TEST_PGUSER};
    my $keys_file = exists $o{keys_file} ? $o{keys_file} : "$p/conf/keys";

    my $c = '';
    $c .= "# generated by t/lib/Invoices/Test.pm\n";
    $c .= "daemon off;\n";
    $c .= "master_process " . ($master ? 'on' : 'off') . ";\n";
    $c .= "worker_processes $workers;\n";
    $c .= "user root;\n" if $> == 0;
    $c .= "pid $p/logs/nginx.pid;\n";
    $c .= "error_log $p/logs/error.log $level;\n";
    if ($module) {
        # "static": the nginx binary has the module built in
        $c .= "load_module $e{INVOICES_MODULE};\n"
            unless $e{INVOICES_MODULE} eq 'static';
        $c .= "thread_pool invoices threads=$threads max_queue=1024;\n";
    }
    my $st = $o{stripe} ? _stripe_opts($o{stripe}, $p) : undef;
    if ($st && defined $st->{pool}) {
        $c .= "thread_pool $st->{pool} threads=$st->{threads} "
            . "max_queue=$st->{max_queue};\n";
    }
    # a crashed worker leaves its core here: _final_checks prints its stack
    $c .= "working_directory $p/cores;\nworker_rlimit_core 2g;\n"
        if $master && -d "$p/cores"
           && ($o{main_config} // '') !~ /working_directory/;
    $c .= "$o{main_config}\n" if defined $o{main_config};
    $c .= "events {\n    worker_connections 1024;\n}\n";
    $c .= "http {\n";
    $c .= "    access_log $p/logs/access.log;\n";
    $c .= "    client_body_temp_path $p/tmp/client_body;\n";
    $c .= "    proxy_temp_path $p/tmp/proxy;\n";
    $c .= "    fastcgi_temp_path $p/tmp/fastcgi;\n";
    $c .= "    uwsgi_temp_path $p/tmp/uwsgi;\n";
    $c .= "    scgi_temp_path $p/tmp/scgi;\n";
    if ($module) {
        $c .= "    invoices_database \"$database\";\n" if defined $database;
        $c .= "    invoices_api_keys_file $keys_file;\n" if defined $keys_file;
    }
    if ($st) {
        for my $d (@STRIPE_DIRECTIVES) {
            $c .= "    invoices_stripe_$d $st->{$d};\n" if defined $st->{$d};
        }
    }
    $c .= "$o{http_config}\n" if defined $o{http_config};
    $c .= "    server {\n";
    $c .= "        listen 127.0.0.1:$o{port};\n";
    $c .= "        server_name localhost;\n";
    $c .= "$o{server_config}\n" if defined $o{server_config};
    if (defined $o{location}) {
        $c .= "$o{location}\n";
    } elsif ($module) {
        my $admin = $o{admin_directive} // 'invoices_admin;';
        $c .= "        location /admin/api/invoices {\n";
        $c .= "            $admin\n";
        $c .= "$o{location_config}\n" if defined $o{location_config};
        $c .= "        }\n";
    }
    $c .= "    }\n";
    $c .= "}\n";
    return $c;
}

sub _make_prefix {
    my (%o) = @_;
    my $tag = $0;
    $tag =~ s{.*/}{};
    $tag =~ s/\.t$//;
    $tag =~ s/[^A-Za-z0-9]+/_/g;
    my $prefix = File::Temp::tempdir("invoices-$tag-XXXXXX", TMPDIR => 1,
                                      CLEANUP => 0);
    chmod 0755, $prefix;
    for (qw(conf logs tmp cores)) {
        mkdir "$prefix/$_" or die "mkdir $prefix/$_: $!";
    }
    my $keys = exists $o{keys} ? $o{keys} : $DEFAULT_KEYS;
    if (defined $keys) {
        open my $fh, '>', "$prefix/conf/keys" or die "keys: $!";
        print $fh $keys;
        close $fh;
        chmod $o{keys_mode} // 0600, "$prefix/conf/keys";
    }
    if ($o{stripe}) {
        my $st = _stripe_opts($o{stripe}, $prefix);
        if (defined $st->{key}) {
            _write("$prefix/conf/stripe.key", "$st->{key}\n");
            chmod $st->{key_mode}, "$prefix/conf/stripe.key";
        }
    }
    return $prefix;
}

# nginx_config_test(%opt) -> ($exit_code, $output, $prefix)
# Writes a config (same options as config_text, plus: config => the whole
# text with the placeholders @PREFIX@ and @PORT@, keys/keys_mode for the
# keys file) and runs `nginx -t` on it.  $output is stderr and stdout of
# nginx -t followed by the error log.
sub nginx_config_test {
    my (%o) = @_;
    env_or_die();
    my $prefix = _make_prefix(%o);
    my $port = $o{port} // _free_port();
    my $conf = $o{config} // config_text(%o, prefix => $prefix, port => $port);
    $conf =~ s/\@PREFIX\@/$prefix/g;
    $conf =~ s/\@PORT\@/$port/g;
    _write("$prefix/conf/nginx.conf", $conf);
    my ($st, $out, $err) = run_cmd([nginx_binary(), '-t', '-p', "$prefix/",
                                    '-c', "$prefix/conf/nginx.conf",
                                    '-e', "$prefix/logs/error.log"],
                                   env => { nginx_env($prefix) });
    my $log = _slurp("$prefix/logs/error.log") // '';
    my $output = $err . $out . $log;
    push @{ $S{config_test_prefixes} }, $prefix;
    return (_exit_code($st), $output, $prefix);
}

sub _write {
    my ($file, $text) = @_;
    open my $fh, '>', $file or die "$file: $!";
    print $fh $text;
    close $fh or die "$file: $!";
}

sub _slurp {
    my ($file) = @_;
    open my $fh, '<', $file or return undef;
    binmode $fh;
    local $/;
    return <$fh>;
}


#----------------------------------------------------------------------
# Stripe: the directives, and the fake Stripe of this file

# _stripe_opts($opt, $prefix): the stripe option (1 or a hashref of
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
sub _stripe_opts {
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
        key             => $S{stripe_secret} // _random_secret(),
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

sub _random_secret {
    return 'sk_test_' . join '', map { ('A'..'Z', 'a'..'z', 0..9)[rand 62] } 1 .. 32;
}

# stripe_secret(): the secret key of this file's fake (and of nginx)
sub stripe_secret { $S{stripe_secret} // croak "no Stripe: start_server(stripe => ...)" }

sub _start_fake {
    my ($st) = @_;
    my %e = env_or_die();
    my $p = $S{prefix};
    my $port_file = "$p/logs/fake-stripe.port";
    my @cmd = ("$e{INVOICES_REPO}/scripts/fake-stripe", '--listen', '127.0.0.1:0',
               '--port-file', $port_file, '--secret-key', $S{stripe_secret},
               '--collect-delay', $st->{collect_delay},
               '--log', "$p/logs/fake-stripe.log");
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        open STDIN, '<', '/dev/null';
        open STDOUT, '>>', "$p/logs/fake-stripe.out";
        open STDERR, '>>', "$p/logs/fake-stripe.out";
        POSIX::setpgid(0, 0);
        exec @cmd or POSIX::_exit(127);
    }
    $S{fake} = { pid => $pid };
    my $deadline = time + 10 * time_factor();
    while (time < $deadline) {
        if (waitpid($pid, POSIX::WNOHANG()) == $pid) {
            delete $S{fake}{pid};
            die "fake-stripe exited at start:\n"
                . (_slurp("$p/logs/fake-stripe.out") // '');
        }
        if (-s $port_file) {
            my $port = _slurp($port_file);
            chomp $port;
            $S{fake}{port} = $port;
            return $port;
        }
        sleep 0.05;
    }
    _stop_fake();
    die "fake-stripe wrote no port file within 10s:\n"
        . (_slurp("$p/logs/fake-stripe.out") // '');
}

sub _stop_fake {
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
    my $id = $o{id} // 'cus_T' . join '', map { ('A'..'Z', 'a'..'z', 0..9)[rand 62] } 1 .. 14;
    my $name = $o{name} // "Team of $id";
    fake_control(POST => '/_fake/customers', {
        id => $id, name => $name,
        ($o{payment_method} ? (payment_method => $o{payment_method}) : ()),
    });
    my $team = ($o{team} // 1)
        ? insert_team(name => $name, stripe_customer_id => $id) : undef;
    return { customer => $id, team => $team };
}

# create_body($customer, @amounts) -> a create request's body (a hash):
# one item per amount (none given: one of 1000), named "item 0", "item 1" ...
sub create_body {
    my ($cus, @amounts) = @_;
    @amounts = (1000) unless @amounts;
    my $i = 0;
    return { customer => $cus,
             items => [map { { name => 'item ' . $i++, amount => $_ } } @amounts] };
}

# create_invoice($prefix, \%body or $json, [$idempotency_key]) -> response
# of POST /$prefix/api/invoices with the admin key
sub create_invoice {
    my ($prefix, $body, $key) = @_;
    $body = JSON::PP->new->utf8->canonical->encode($body) if ref $body;
    return api_request(POST => "/$prefix/api/invoices",
                       ['Content-Type' => 'application/json',
                        (defined $key ? ('Idempotency-Key' => $key) : ())],
                       $body);
}

# stripe_invoices_of($customer) -> the fake's invoices of that customer
sub stripe_invoices_of {
    my ($cus) = @_;
    return @{ fake_stripe(GET => "/v1/invoices?customer=$cus&limit=100")->{data} };
}

# The Stripe secret must never reach a client: every response of the file
# is looked at.
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
# the server of this file

# start_server(%opt): database (unless db => 0), prefix, config, nginx.
# Options: those of config_text, plus
#   db            0: no database (the config names a database that
#                 does not exist)
#   keys, keys_mode  content and mode of conf/keys
#   before_start  sub called after the database exists, before nginx
#   allow_log     regex: [alert]/[crit]/[emerg] lines matching it are ok
#   stripe        1 or a hashref of overrides (see _stripe_opts): start
#                 scripts/fake-stripe for this file and configure nginx
#                 to call it; done_testing then also checks that the
#                 secret key is in no response and not in the logs
sub start_server {
    my (%o) = @_;
    my %e = env_or_die();
    croak "start_server: a server is already running" if $S{pid};
    _hook_testing_done();

    %S = (opts => \%o, config_test_prefixes => $S{config_test_prefixes} || []);
    if ($o{stripe}) {
        my $given = ref $o{stripe} eq 'HASH' ? $o{stripe}{key} : undef;
        $S{stripe_secret} = $given // _random_secret();
    }
    $S{prefix} = _make_prefix(%o);
    if ($o{stripe} && _stripe_opts($o{stripe}, $S{prefix})->{fake}) {
        _start_fake(_stripe_opts($o{stripe}, $S{prefix}));
    }

    if ($o{db} // 1) {
        my $tag = $0;
        $tag =~ s{.*/}{};
        $tag =~ s/\.t$//;
        $tag = lc $tag;
        $tag =~ s/[^a-z0-9]+/_/g;
        $S{db} = substr("invoices_t_${tag}", 0, 40) . sprintf('_%d_%04x', $$, int rand 65536);
        _psql('postgres', "CREATE DATABASE $S{db};");
        $S{db_created} = 1;
        my $url = sprintf 'postgres://%s@%s:%s/%s', $e{INVOICES_TEST_PGUSER},
            $e{INVOICES_TEST_PGHOST}, $e{INVOICES_TEST_PGPORT}, $S{db};
        my ($st, $out, $err) = run_cmd(["$e{INVOICES_REPO}/scripts/migrate", $url]);
        croak "scripts/migrate failed: $out$err" if $st;
    }
    $o{before_start}->() if $o{before_start};

    my $tries = 0;
    while (1) {
        $S{port} = $o{port} // _free_port();
        my $conf = config_text(%o, prefix => $S{prefix}, port => $S{port},
                               db => $S{db});
        _write("$S{prefix}/conf/nginx.conf", $conf);
        my $ok = eval { _spawn_nginx(); 1 };
        last if $ok;
        my $why = $@;
        my $log = _slurp("$S{prefix}/logs/error.log") // '';
        if ($log =~ /Address already in use/ && ++$tries < 3 && !$o{port}) {
            unlink "$S{prefix}/logs/error.log";
            next;
        }
        die $why;
    }
    return server_info();
}

sub server_info {
    return { port => $S{port}, prefix => $S{prefix}, db => $S{db},
             pid => $S{pid}, error_log => "$S{prefix}/logs/error.log" };
}

sub server_port   { $S{port} // croak "no server: call start_server first" }
sub server_prefix { $S{prefix} }
sub db_name       { $S{db} }

sub _spawn_nginx {
    my $p = $S{prefix};
    my @cmd = (nginx_binary(), '-p', "$p/", '-c', "$p/conf/nginx.conf",
               '-e', "$p/logs/error.log");
    if (valgrind_mode()) {
        my %e = env_or_die();
        unshift @cmd, 'valgrind', '--tool=memcheck', '--error-exitcode=99',
            '--leak-check=full', '--show-leak-kinds=definite',
            '--errors-for-leak-kinds=definite', '--num-callers=40',
            '--track-fds=no', "--suppressions=$e{INVOICES_REPO}/t/valgrind.supp",
            "--log-file=$p/logs/valgrind.%p.log";
    }
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        open STDIN, '<', '/dev/null';
        open STDOUT, '>>', "$p/logs/stdout.log";
        open STDERR, '>>', "$p/logs/stdout.log";
        POSIX::setpgid(0, 0);
        %ENV = (%ENV, nginx_env($p));
        exec @cmd or POSIX::_exit(127);
    }
    $S{pid} = $pid;

    my $deadline = time + 10 * time_factor();
    while (time < $deadline) {
        if (waitpid($pid, POSIX::WNOHANG()) == $pid) {
            my $st = $?;
            delete $S{pid};
            die "nginx exited at start (status " . _exit_code($st) . "):\n"
                . (_slurp("$p/logs/stdout.log") // '')
                . (_slurp("$p/logs/error.log") // '');
        }
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                      PeerPort => $S{port}, Proto => 'tcp',
                                      Timeout => 1);
        if ($s) {
            close $s;
            return 1;
        }
        sleep 0.05;
    }
    _kill_nginx();
    die "nginx did not accept connections on 127.0.0.1:$S{port} within "
        . 10 * time_factor() . "s:\n" . (_slurp("$p/logs/error.log") // '');
}

# stop_server(): graceful quit; returns 1 when nginx exited by itself.
sub stop_server {
    my $pid = $S{pid} or return 1;
    kill 'QUIT', $pid;
    my $deadline = time + (valgrind_mode() ? 90 : 15);
    my $again = time + 2;
    while (time < $deadline) {
        if (waitpid($pid, POSIX::WNOHANG()) == $pid) {
            $S{exit_status} = $?;
            delete $S{pid};
            return 1;
        }
        # Under valgrind a signal can land just before the single process
        # blocks in epoll_wait() with no timer left, and is then not seen
        # until the next event; another SIGQUIT is that event.
        if (valgrind_mode() && time > $again) {
            kill 'QUIT', $pid;
            $again = time + 2;
        }
        sleep 0.05;
    }
    _kill_nginx();
    return 0;
}

sub _kill_nginx {
    my $pid = $S{pid} or return;
    # nginx runs in its own process group (setpgid above): the master and
    # its workers, nothing else.
    kill 'KILL', -$pid;
    kill 'KILL', $pid;
    waitpid $pid, 0;
    delete $S{pid};
}

sub error_log_text {
    return '' unless $S{prefix};
    return _slurp("$S{prefix}/logs/error.log") // '';
}

# error_log_mark() -> offset; error_log_since($offset) -> text written after.
sub error_log_mark { return length error_log_text() }
sub error_log_since {
    my ($mark) = @_;
    my $t = error_log_text();
    return substr $t, $mark // 0;
}

sub _bad_log_lines {
    my $allow = $S{opts}{allow_log};
    return grep { /\[(?:alert|crit|emerg)\]/ && !($allow && $_ =~ $allow) }
           split /\n/, error_log_text();
}

sub _valgrind_problems {
    my @problems;
    for my $f (glob "$S{prefix}/logs/valgrind.*.log") {
        my $log = _slurp($f) // '';
        if ($log =~ /ERROR SUMMARY: (\d+) errors/ && $1 > 0) {
            push @problems, "$f: ERROR SUMMARY: $1 errors";
        }
        # definite leaks in our code, whatever the summary says
        my @records = split /\n(?===\d+== \S.* are definitely lost)/, $log;
        for my $r (@records) {
            next unless $r =~ /are definitely lost/;
            my ($rec) = $r =~ /^(.*?)(?:\n==\d+== \n|\z)/s;
            push @problems, "$f: definite leak in the module:\n$rec"
                if ($rec // '') =~ /ngx_http_invoices_/;
        }
        push @problems, "$f: no ERROR SUMMARY (valgrind killed?)"
            unless $log =~ /ERROR SUMMARY/;
    }
    return @problems;
}

# The stacks of every thread of each core a crashed worker left (the
# kernel's core_pattern "core" writes it to working_directory), with gdb
# where it is installed; the core is removed afterwards (it is large).
sub _core_stacks {
    my @out;
    for my $core (glob "$S{prefix}/cores/core*") {
        my $bin = nginx_binary();
        my $bt = -x '/usr/bin/gdb'
            ? `/usr/bin/gdb -q -batch -ex 'thread apply all bt 30' '$bin' '$core' 2>&1`
            : '(no gdb to read it)';
        push @out, "a worker's core, $core:\n" . _tail($bt, 200);
        unlink $core unless ($ENV{INVOICES_TEST_KEEP} // '') eq '2';
    }
    return @out;
}

# Runs inside done_testing, before the plan is set: the final checks.
sub _final_checks {
    return unless $$ == $OWNER;
    return unless $S{prefix} && !$S{finished};
    $S{finished} = 1;
    my $tb = Test::More->builder;

    if ($PG_STOPPED) {
        eval { pg_start() };
        $tb->ok(0, 'PostgreSQL was left stopped by the test') ;
    }
    my $stopped = stop_server();
    $tb->ok($stopped, 'nginx quits gracefully (SIGQUIT) in time')
        or $tb->diag("nginx had to be killed; error log:\n"
                     . _tail(error_log_text(), 30));

    if ($stopped) {
        my $st = $S{exit_status} // 0;
        $tb->ok($st == 0, 'nginx exited with status 0 (no crash)')
            or $tb->diag(($st & 127 ? 'killed by signal ' . ($st & 127)
                                    : 'exit status ' . ($st >> 8))
                         . (valgrind_mode() ? ' (see the valgrind log)' : ''));
    }

    my @bad = _bad_log_lines();
    $tb->ok(!@bad, 'no [alert], [crit] or [emerg] in the error log')
        or $tb->diag(join "\n", @bad[0 .. ($#bad > 19 ? 19 : $#bad)]);
    $tb->diag($_) for _core_stacks();

    if (defined(my $secret = $S{stripe_secret})) {
        my @leaks = @{ $S{leaks} || [] };
        $tb->ok(!@leaks, "the Stripe secret key is in none of the file's "
                         . ($S{responses_seen} // 0) . ' responses')
            or $tb->diag("in:\n" . join "\n", @leaks[0 .. ($#leaks > 2 ? 2 : $#leaks)]);
        for my $log (qw(error.log access.log)) {
            my $text = _slurp("$S{prefix}/logs/$log") // '';
            $tb->ok(index($text, $secret) < 0,
                    "the Stripe secret key is not in nginx's $log");
        }
    }

    # every secret this nginx was given (its conf directory: key files,
    # secret files, nginx.conf) must stay out of its logs; the admin keys
    # out of every line the module writes ("invoices: ..."; nginx itself
    # may quote what a client sent, and the access log has request lines)
    {
        my (%secret, %key);
        for my $f (glob "$S{prefix}/conf/*") {
            my $text = _slurp($f) // next;
            $secret{$1} = 1 while $text =~ /\b((?:whsec|sk_test|sk_live|rk_test)_[A-Za-z0-9]{8,})/g;
            if ($f =~ m{/keys\z}) {
                $key{$_} = 1 for grep { length >= 8 && !/^#/ } map { s/^\s+|\s+\z//gr } split /\n/, $text;
            }
        }
        my @found;
        for my $log (qw(error.log access.log)) {
            my $text = _slurp("$S{prefix}/logs/$log") // '';
            push @found, "a secret in $log" if grep { index($text, $_) >= 0 } keys %secret;
            push @found, "an admin key in a line of the module in $log"
                if $log eq 'error.log'
                   && grep { my $k = $_; grep { /invoices: / && index($_, $k) >= 0 } split /\n/, $text } keys %key;
        }
        $tb->ok(!@found, 'none of the ' . (keys(%secret) + keys(%key))
                         . ' configured secrets and keys in the logs')
            or $tb->diag(join "\n", @found);
    }

    if (valgrind_mode()) {
        my @p = _valgrind_problems();
        $tb->ok(!@p, 'valgrind: no errors, no definite leaks in the module')
            or $tb->diag(join "\n", @p);
    }

    if (sanitize_mode()) {
        my @p = _sanitizer_problems();
        $tb->ok(!@p, 'no ASan or UBSan report')
            or $tb->diag(join "\n", @p);
    }
}

sub _tail {
    my ($text, $n) = @_;
    my @l = split /\n/, $text;
    @l = @l[-$n .. -1] if @l > $n;
    return join "\n", @l;
}

sub _cleanup {
    return unless $$ == $OWNER;
    return if $S{cleaned};
    $S{cleaned} = 1;
    _kill_nginx() if $S{pid} && !stop_server();
    _stop_fake();
    eval { pg_start() } if $PG_STOPPED;
    if ($S{db_created}) {
        eval { _psql('postgres', "DROP DATABASE IF EXISTS $S{db} WITH (FORCE);") };
        print STDERR "# could not drop database $S{db}: $@" if $@;
    }
    my $keep = $ENV{INVOICES_TEST_KEEP} // '';
    my $failed = !Test::More->builder->is_passing;
    for my $prefix (grep { defined } $S{prefix}, @{ $S{config_test_prefixes} || [] }) {
        if ($keep eq '2' || ($keep eq '1' && $failed)) {
            print STDERR "# kept nginx prefix: $prefix\n";
        } else {
            system 'rm', '-rf', '--', $prefix;
        }
    }
}

sub _hook_testing_done {
    return if $TESTING_DONE_HOOKED++;
    require Test2::API;
    Test2::API::test2_add_callback_testing_done(\&_final_checks);
}

END {
    if ($$ == $OWNER) {
        local $?;
        if ($S{prefix} && !$S{finished} && $S{pid}) {
            # died before done_testing: still stop nginx
            stop_server();
        }
        _cleanup();
    }
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

# api_request($method, $path, [$headers], [$body]): with Api-Key: test-key.
sub api_request {
    my ($method, $path, $headers, $body, %opt) = @_;
    my @h = Invoices::Test::HTTP::normalize_headers($headers);
    unshift @h, ['Api-Key', API_KEY] unless grep { lc $_->[0] eq 'api-key' } @h;
    return request($method, $path, \@h, $body, %opt);
}

sub raw_request {
    my ($bytes, %opt) = @_;
    $opt{timeout} //= 10 * time_factor();
    return _seen(Invoices::Test::HTTP::raw(server_port(), $bytes, %opt));
}

sub _api_headers {
    my ($headers) = @_;
    my @h = Invoices::Test::HTTP::normalize_headers($headers);
    unshift @h, ['Api-Key', API_KEY] unless grep { lc $_->[0] eq 'api-key' } @h;
    return \@h;
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
    my $first = 1;
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
