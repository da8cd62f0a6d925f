# What docs/cache.md tells an operator to run after changing rows in
# PostgreSQL by hand: `redis-cli INCR invoices:gen` or FLUSHALL.  Neither
# publishes anything, yet every worker of every nginx must drop its own
# copies (lists and single invoices) within the documented bound: the
# heartbeat reads the generation every 200 ms.  Two nginx instances with
# two workers each on one database and one Redis; every worker's copy is
# filled, a row is changed with SQL and shown still served from the
# copies, then the command runs and every worker of both instances must
# serve the new row.  Also: the documented one-liner that announces the
# bump reaches them at once, a heartbeat with nothing changed drops
# nothing, and what the heartbeat costs Redis.

use strict;
use warnings;
use Test::More;
use Time::HiRes qw(time sleep);
use Invoices::Test;
use Invoices::Redis;

my $redis = start_redis();
my $X_PID = '            add_header X-Pid $pid always;';

start_server(
    workers         => 2,
    http_config     => cache_http_config($redis->{port}),
    location_config => $X_PID,
);
my $B = start_nginx(
    workers         => 2,
    http_config     => cache_http_config($redis->{port}),
    location_config => $X_PID,
);

# the bound docs/cache.md gives: one heartbeat interval (200 ms) plus its
# answer, at most invoices_redis_timeout (200 ms here, then the copies go
# out of use); a little for the scheduler
my $BOUND = (0.2 + 0.2) * time_factor() + 0.1;

my @nodes = (
    { name => 'A', port => server_port(), pids => [worker_processes(server_info()->{pid})] },
    { name => 'B', port => $B->{port}, pids => [worker_processes($B->{pid})] },
);
my $n_workers = 0;
$n_workers += @{ $_->{pids} } for @nodes;
is($n_workers, valgrind_mode() ? 2 : 4, "$n_workers workers in all");

# the copies are used only once the subscription stands, on every worker
ok(wait_until(sub {
    (rcmd($redis, 'PUBSUB', 'NUMSUB', 'invoices:changed'))->[1] >= $n_workers
}, 10), 'every worker listens on invoices:changed');

my $team = insert_team(name => 'Ops team');
my @inv = map {
    insert_invoice(team_id => $team->{id}, status => 'open', amount => 100 * $_,
                   stripe_invoice_id => sprintf('in_opsseed%02d', $_),
                   stripe_created_at => sprintf('2024-03-%02dT10:00:00.000Z', $_))
} 1 .. 5;
my $row = $inv[2];
my $LIST = '/admin/api/invoices?limit=10';
my $ONE = "/admin/api/invoices/$row->{id}";

sub amount_in {
    my ($res, $path) = @_;
    my $j = $res->json_or_undef // return undef;
    return $j->{amount} if $path eq $ONE;
    my ($inv) = grep { $_->{_id} eq $row->{id} } @{ $j->{invoices} || [] };
    return $inv ? $inv->{amount} : undef;
}

# answers($max, $want): ask both instances, both paths, until every
# worker has answered each path $want times (or $max rounds); returns
# the records { node, path, pid, t0, status, x_cache, amount }
sub answers {
    my ($max, $want) = @_;
    my (@rec, %n);
    for my $round (1 .. $max) {
        for my $node (@nodes) {
            for my $path ($LIST, $ONE) {
                my $t0 = time;
                my $res = get_on($node->{port}, $path);
                my $pid = $res->header('X-Pid') // '?';
                $n{"$node->{name} $path $pid"}++;
                push @rec, { node => $node->{name}, path => $path, pid => $pid,
                             t0 => $t0, status => $res->status,
                             x_cache => $res->header('X-Cache') // '-',
                             amount => amount_in($res, $path) };
            }
        }
        my $missing = grep {
            my $node = $_;
            grep {
                my $pid = $_;
                grep { ($n{"$node->{name} $_ $pid"} // 0) < $want } $LIST, $ONE
            } @{ $node->{pids} }
        } @nodes;
        last unless $missing;
    }
    return @rec;
}

# every_worker(\@records, $name): each worker of each instance is among
# the records, for both paths
sub every_worker {
    my ($rec, $name) = @_;
    my %seen = map { ("$_->{node} $_->{path} $_->{pid}" => 1) } @$rec;
    my @missing;
    for my $node (@nodes) {
        for my $pid (@{ $node->{pids} }) {
            push @missing, grep { !$seen{"$node->{name} $_ $pid"} } $LIST, $ONE;
        }
    }
    ok(!@missing, "$name: every worker of both instances answered both paths")
        or diag "missing: @missing";
}

sub describe {
    return join ', ', map {
        sprintf '%s %s pid %s: %s %s amount %s', $_->{node},
            $_->{path} eq $LIST ? 'list' : 'one', $_->{pid}, $_->{status},
            $_->{x_cache}, $_->{amount} // '-'
    } @_;
}

# fill(): every worker holds the list and the invoice in its copy: each
# has answered both with X-Cache HIT (a HIT from Redis is copied too)
sub fill {
    my ($name) = @_;
    my (%hit, @rec);
    for my $round (1 .. 300) {
        for my $r (answers(1, 1)) {
            push @rec, $r;
            $hit{"$r->{node} $r->{path} $r->{pid}"}++ if $r->{x_cache} eq 'HIT';
        }
        my @need = map {
            my $node = $_;
            map { my $pid = $_; map { "$node->{name} $_ $pid" } $LIST, $ONE }
                @{ $node->{pids} }
        } @nodes;
        if (!grep { !$hit{$_} } @need) {
            pass("$name: every worker's copy holds the list and the invoice ("
                 . @rec . ' requests)');
            return;
        }
    }
    fail("$name: every worker's copy holds the list and the invoice");
    diag describe(@rec[-8 .. -1]);
}

# stale($amount, $name): the SQL change is not seen: every worker still
# answers from its copy (a HIT, and no lookup reaches Redis)
sub stale {
    my ($old, $name) = @_;
    my $calls = redis_calls($redis, 'evalsha') + redis_calls($redis, 'eval');
    my @rec = answers(200, 2);
    every_worker(\@rec, "$name, before the command");
    my @bad = grep { $_->{status} != 200 || $_->{x_cache} ne 'HIT'
                     || ($_->{amount} // -1) != $old } @rec;
    ok(!@bad, "$name, before the command: all " . @rec
       . " answers are HITs with the old amount $old") or diag describe(@bad);
    is(redis_calls($redis, 'evalsha') + redis_calls($redis, 'eval'), $calls,
       "$name, before the command: served from the copies, Redis not asked");
}

# redis_cli(@args): the operator's command, exactly as documented
sub redis_cli {
    my (@args) = @_;
    open my $fh, '-|', 'redis-cli', '-p', $redis->{port}, @args
        or die "redis-cli: $!";
    my $out = do { local $/; <$fh> };
    close $fh;
    is($?, 0, "redis-cli @args[0 .. 0]: exit status 0");
    return $out;
}

# fresh($new, $since, $bound, $name): from $since + $bound on, every
# worker of both instances answers both paths with the new amount; an
# old answer before that is allowed
sub fresh {
    my ($new, $since, $bound, $name) = @_;
    my @rec;
    my $deadline = $since + $bound;
    # ask all along the window, then until every worker answered after it
    while (time < $deadline) {
        push @rec, answers(1, 1);
    }
    my @after = answers(200, 2);
    push @rec, @after;
    every_worker(\@after, "$name, after the bound");
    my @late = grep { $_->{t0} >= $deadline
                      && ($_->{status} != 200 || ($_->{amount} // -1) != $new) } @rec;
    ok(!@late, sprintf '%s: every answer from %.2f s after the command on has the new '
       . 'amount %s (%d answers)', $name, $bound, $new, scalar grep { $_->{t0} >= $deadline } @rec)
        or diag describe(@late);
    my @old = grep { ($_->{amount} // -1) != $new } @rec;
    my ($last_old) = sort { $b <=> $a } map { $_->{t0} - $since } @old;
    diag sprintf '%s: last old answer %s', $name,
        defined $last_old ? sprintf('%.3f s after the command', $last_old) : 'none';
}

#----------------------------------------------------------------------
# the heartbeat alone: nothing changed, nothing dropped; what it costs

fill('at start');
my ($get0, $ping0, $lookups0) = (redis_calls($redis, 'get'), redis_calls($redis, 'ping'),
                                 redis_calls($redis, 'evalsha') + redis_calls($redis, 'eval'));
my $t_quiet = time;
sleep 2;
my $quiet = time - $t_quiet;
my ($gets, $pings) = (redis_calls($redis, 'get') - $get0, redis_calls($redis, 'ping') - $ping0);
my $per_worker = $gets / $quiet / $n_workers;
diag sprintf 'heartbeat: %d GET invoices:gen in %.2f s from %d workers: %.1f per second '
    . 'per worker', $gets, $quiet, $n_workers, $per_worker;
cmp_ok($per_worker, '<=', 5.5, 'the heartbeat: at most 5 GETs a second per worker');
cmp_ok($per_worker, '>=', 2, '... and it runs');
is($pings, 0, '... in place of the PING, not on top of it');
is(redis_calls($redis, 'evalsha') + redis_calls($redis, 'eval'), $lookups0,
   '... and no lookup meanwhile');
stale(300, 'nothing changed for 2 s (10 heartbeats)');

#----------------------------------------------------------------------
# a row changed with SQL, then `redis-cli INCR invoices:gen`

sql_do("UPDATE invoices SET amount = 424242 WHERE id = '$row->{id}'");
stale(300, 'SQL UPDATE, no command yet');
my $t_cmd = time;
is(redis_cli('INCR', 'invoices:gen'), "1\n", 'redis-cli INCR invoices:gen: the generation is 1');
fresh(424242, $t_cmd, $BOUND, 'after redis-cli INCR invoices:gen');

#----------------------------------------------------------------------
# the same with FLUSHALL: the generation is gone (reads as 0), so are the
# pages

fill('again');
sql_do("UPDATE invoices SET amount = 515151 WHERE id = '$row->{id}'");
stale(424242, 'second SQL UPDATE');
$t_cmd = time;
is(redis_cli('FLUSHALL'), "OK\n", 'redis-cli FLUSHALL');
fresh(515151, $t_cmd, $BOUND, 'after redis-cli FLUSHALL');
is(rcmd($redis, 'GET', 'invoices:gen'), undef, '(the generation key is still missing)');

#----------------------------------------------------------------------
# the documented one-liner that also announces the bump, like a write
# through the module: every worker at once, on the first answer after it

fill('a third time');
sql_do("UPDATE invoices SET amount = 616161 WHERE id = '$row->{id}'");
stale(515151, 'third SQL UPDATE');
$t_cmd = time;
like(redis_cli('EVAL', "local g = redis.call('INCR', KEYS[1]) "
               . "redis.call('PUBLISH', ARGV[1], g) return g",
               '1', 'invoices:gen', 'invoices:changed'),
     qr/^1\n\z/, 'redis-cli EVAL (INCR and PUBLISH): the generation is 1 again');
my $t_done = time;
fresh(616161, $t_done, 0, 'after the announced INCR');
cmp_ok($t_done - $t_cmd, '<', 1, '(redis-cli took ' . sprintf('%.3f', $t_done - $t_cmd) . ' s)');

my ($okB, $stB) = stop_nginx($B);
ok($okB && !$stB, 'instance B quits gracefully, status 0');
my @badB = grep { /\[(?:alert|crit|emerg)\]/ } split /\n/, nginx_log($B);
ok(!@badB, 'instance B: no [alert], [crit] or [emerg]') or diag join "\n", @badB;

done_testing();
