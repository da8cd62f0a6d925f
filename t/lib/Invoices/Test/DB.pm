package Invoices::Test::DB;

# PostgreSQL for the tests (see Invoices::Test): the database of this
# test file (created with a random name and migrated with scripts/migrate
# by start_server, dropped at the end), SQL through psql, rows to insert,
# a fingerprint of the tables, and stopping / starting the cluster.

use strict;
use warnings;

use JSON::PP ();
use Time::HiRes qw(time);
use Carp qw(croak);
use Exporter 'import';

use Invoices::Test::Env qw(env_or_die run_cmd exit_code random_alnum);

our @EXPORT_OK = qw(
    psql create_db drop_db db_name
    sql sql_do sql_json sql_value quote insert_row insert_rows
    insert_team insert_invoice object_id db_fingerprint db_invoice
    kept_counts_off
    pg_stop pg_start pg_is_stopped
);
our %EXPORT_TAGS = (all => \@EXPORT_OK);
our @CARP_NOT = @Invoices::Test::Env::HARNESS;

# the state of this file's server: the one hash of Invoices::Test
our %S;
BEGIN { no warnings 'once'; *S = \%Invoices::Test::S }

my $PG_STOPPED;  # by pg_stop (kept over start_server, unlike %S)

sub _psql_base {
    my ($db) = @_;
    my %e = env_or_die();
    return ('psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1',
            '-h', $e{INVOICES_TEST_PGHOST}, '-p', $e{INVOICES_TEST_PGPORT},
            '-U', $e{INVOICES_TEST_PGUSER}, '-d', $db // 'postgres');
}

# psql($db, $sql, @psql_args) -> what psql printed; dies when it fails.
sub psql {
    my ($db, $sql, @args) = @_;
    my ($st, $out, $err) = run_cmd([_psql_base($db), @args, '-f', '-'],
                                   stdin => $sql,
                                   env => { PGCONNECT_TIMEOUT => 5 });
    croak "psql failed (exit " . exit_code($st) . "): $err\nSQL: "
        . (length $sql > 2000 ? substr($sql, 0, 2000) . '...' : $sql)
        if $st;
    return $out;
}

sub _db { $S{db} // croak "no database: call start_server first" }

sub db_name { $S{db} }

# create_db(): a database named after the test file (and random), with
# the schema of scripts/migrate; its name goes to $S{db}.
sub create_db {
    my %e = env_or_die();
    my $tag = $0;
    $tag =~ s{.*/}{};
    $tag =~ s/\.t$//;
    $tag = lc $tag;
    $tag =~ s/[^a-z0-9]+/_/g;
    $S{db} = substr("invoices_t_${tag}", 0, 40) . sprintf('_%d_%04x', $$, int rand 65536);
    psql('postgres', "CREATE DATABASE $S{db};");
    $S{db_created} = 1;
    my $url = sprintf 'postgres://%s@%s:%s/%s', $e{INVOICES_TEST_PGUSER},
        $e{INVOICES_TEST_PGHOST}, $e{INVOICES_TEST_PGPORT}, $S{db};
    my ($st, $out, $err) = run_cmd(["$e{INVOICES_REPO}/scripts/migrate", $url]);
    croak "scripts/migrate failed: $out$err" if $st;
}

# drop_db(): drop the database create_db made (if it did); says so on
# STDERR when it cannot.
sub drop_db {
    return unless $S{db_created};
    eval { psql('postgres', "DROP DATABASE IF EXISTS $S{db} WITH (FORCE);") };
    print STDERR "# could not drop database $S{db}: $@" if $@;
}

# sql($query) -> list of rows, each an arrayref of strings (undef = NULL).
# One statement; for several, use sql_do.
sub sql {
    my ($query, $db) = @_;
    my $out = psql($db // _db(), $query, '-A', '-t',
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
    return psql($db // _db(), $query, '-A', '-t');
}

# sql_json($select) -> arrayref of hashrefs, typed by PostgreSQL's JSON.
sub sql_json {
    my ($query, $db) = @_;
    $query =~ s/;\s*\z//;
    my $out = psql($db // _db(),
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
    my $out = psql(_db(), $sql, '-A', '-t');
    my @got = map { JSON::PP->new->utf8->decode($_) } grep { length } split /\n/, $out;
    croak "insert_rows: expected " . @rows . " rows back, got " . @got
        unless @got == @rows;
    return wantarray ? @got : $got[0];
}

sub insert_row { my ($table, $row) = @_; return (insert_rows($table, $row))[0] }

# kept_counts_off() -> the counts the writes keep (migrations 0003, 0006, 0012,
# 0017) that differ from counting the rows: "total 12 (rows 13)", "paid/team/
# cus_x/eur 2 (rows 3)", "paid/team/eur 5 (rows 6)", "range/c/60/<minute> 1
# (rows 2)" (c createdAt, d dueDate, a amount), "value/e/<email> 1 (rows 2)"
# (e email, n name); empty when all agree.
sub kept_counts_off {
    my $rows = sql_json(<<'SQL');
SELECT 'total' AS k, (SELECT coalesce(sum(n), 0) FROM invoices_count) AS kept,
       (SELECT count(*) FROM invoices) AS n
UNION ALL
SELECT concat_ws('/', coalesce(g.status, r.status), coalesce(g.team_key, r.t),
                 coalesce(g.customer_key, r.c), coalesce(g.currency, r.currency)),
       coalesce(g.n, 0), coalesce(r.n, 0)
FROM invoices_group_count g
FULL JOIN (SELECT status, coalesce(team_id, '') AS t,
                  coalesce(stripe_customer_id, '') AS c, currency, count(*) AS n
           FROM invoices GROUP BY 1, 2, 3, 4) r
  ON (g.status, g.team_key, g.customer_key, g.currency) = (r.status, r.t, r.c, r.currency)
UNION ALL
SELECT concat_ws('/', coalesce(g.status, r.status), coalesce(g.team_key, r.t),
                 coalesce(g.currency, r.currency)),
       coalesce(g.n, 0), coalesce(r.n, 0)
FROM (SELECT status, team_key, currency, sum(n) AS n FROM invoices_team_count
      GROUP BY 1, 2, 3) g
FULL JOIN (SELECT status, coalesce(team_id, '') AS t, currency, count(*) AS n
           FROM invoices GROUP BY 1, 2, 3) r
  ON (g.status, g.team_key, g.currency) = (r.status, r.t, r.currency)
UNION ALL
SELECT concat_ws('/', 'range', coalesce(g.field, r.field), coalesce(g.width, r.width),
                 coalesce(g.start, r.start)),
       coalesce(g.n, 0), coalesce(r.n, 0)
FROM (SELECT field, width, start, sum(n) AS n FROM invoices_range_count
      GROUP BY 1, 2, 3 HAVING sum(n) <> 0) g
FULL JOIN (SELECT b.field, b.width, b.start, count(*) AS n
           FROM invoices i
           CROSS JOIN LATERAL invoices_range_buckets(i.stripe_created_at,
                                                     i.due_date, i.amount) b
           GROUP BY 1, 2, 3) r
  ON (g.field, g.width, g.start) = (r.field, r.width, r.start)
UNION ALL
SELECT concat_ws('/', 'value', coalesce(g.field, r.field), coalesce(g.value, r.value)),
       coalesce(g.n, 0), coalesce(r.n, 0)
FROM (SELECT field::text, value, sum(n) AS n FROM invoices_search_value_count
      GROUP BY 1, 2 HAVING sum(n) <> 0) g
FULL JOIN (SELECT x.field, x.value, count(*) AS n
           FROM invoices i
           CROSS JOIN LATERAL (VALUES ('e', i.customer_email),
                                      ('n', i.customer_name)) x (field, value)
           WHERE x.value IS NOT NULL
           GROUP BY 1, 2) r
  ON (g.field, g.value) = (r.field, r.value)
SQL
    return map { "$_->{k} $_->{kept} (rows $_->{n})" }
           grep { $_->{kept} != $_->{n} } @$rows;
}

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
    $f{stripe_invoice_id} //= sprintf 'in_test%d%s', $SEQ, random_alnum(12);
    $f{status} //= 'paid';
    $f{amount} //= 1000;
    $f{currency} //= 'eur';
    $f{stripe_created_at} //= \"date_trunc('milliseconds', now())";
    return insert_row(invoices => \%f);
}

# db_invoice($stripe_invoice_id) -> the invoices row of that Stripe id,
# every column (a hashref from sql_json; undef: no such row).
sub db_invoice {
    my ($id) = @_;
    return sql_json('SELECT * FROM invoices WHERE stripe_invoice_id = ' . quote($id))->[0];
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

#----------------------------------------------------------------------
# the cluster itself (scripts/pg on INVOICES_TEST_PGDATA)

sub _pg {
    my ($action) = @_;
    my %e = env_or_die();
    my ($st, $out, $err) = run_cmd(["$e{INVOICES_REPO}/scripts/pg", $action,
                                    $e{INVOICES_TEST_PGDATA}]);
    croak "scripts/pg $action failed: $out$err" if $st;
}

sub pg_stop  { _pg('stop');  $PG_STOPPED = 1 }
sub pg_start { _pg('start'); $PG_STOPPED = 0 }

sub pg_is_stopped { $PG_STOPPED }

1;
