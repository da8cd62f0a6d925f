# Stripe does not order its deliveries, and it may send two events of one
# invoice at the same moment.  A deleted draft must stay deleted whatever
# races it: an invoice.deleted in flight together with the invoice.created
# (or invoice.updated) of the same draft, in either order of sending, must
# never leave the row behind; nor may a deleted followed by a late created
# or updated, nor a created redelivered under a new event id after the
# delete.  Invoices that are never deleted, their created (draft),
# finalized (open) and paid events sent in a random order or all at once,
# end with the state of their newest event (paid, the paid event's total
# and PDF).
#
# nginx runs 2 workers with a pool of 8 threads each (16 PostgreSQL
# connections), so that the two events of a pair run at the same time.
# Pairs go in batches: each pair's two deliveries are started back to back
# (start_delivery) and a batch's are all in flight together, then read
# (finish_request).  After each phase one SQL query per check: which of the
# phase's deleted drafts still have a row in invoices (the assertion names
# say "N of M deleted drafts came back"), that every one has its tombstone
# in invoices_deleted, that every answer was 200, and that every event is
# recorded in webhook_events.
#
# Bounded: a fixed number of pairs (fewer under valgrind), each request
# with the harness's timeout, and every phase stops starting batches after
# a deadline scaled by time_factor().  RACE_SEED=N replays an order.

use strict;
use warnings;
use Test::More;
use List::Util qw(shuffle sum0);
use Time::HiRes qw(time sleep);
use Invoices::Test;
use Invoices::Webhook;

my $SEED = $ENV{RACE_SEED} // (int(time * 1000) ^ $$) % 1_000_000_007;
srand $SEED;
note "RACE_SEED=$SEED";

my $W = new_whsec();
start_server(workers => 2, threads => 8,
             server_config => webhook_location(secrets => ['file:' . secret_file($W)]));
default_secret($W);

my $CUS = 'cus_RaceTeam000001';
my $TEAM = insert_team(name => 'Race team', stripe_customer_id => $CUS);
my $T = int(time) - 86400;    # event times: a day ago, then later
my $C = $T - 600;             # the invoices' own created

my $VG = valgrind_mode();
my $PAIRS = $VG ? 20 : 300;   # per phase of races
my $SEQ = $VG ? 5 : 40;       # per out-of-order sequence
my $LIVE = $VG ? 10 : 100;    # never-deleted invoices per way of sending
my $BATCH = 10;               # pairs (or triples) in flight at once
my $PHASE_SECONDS = 120 * time_factor();

my $T0 = time;

#----------------------------------------------------------------------
# helpers

sub draft {
    my ($id, %f) = @_;
    return stripe_invoice(id => $id, status => 'draft', customer => $CUS,
                          created => $C, total => 0, %f);
}

# event($type, $invoice, $created) -> [$event, $body]
sub event {
    my ($type, $inv, $created) = @_;
    my $ev = invoice_event($type, $inv, created => $created);
    return { ev => $ev, body => event_body($ev), type => $type };
}

# in_flight(\@groups, $label) -> arrayref (one per group) of arrayrefs of
# responses (undef for a group not sent before the deadline).  Each group
# is an arrayref of events, started back to back; $BATCH groups at a time
# are in flight together.
sub in_flight {
    my ($groups, $label) = @_;
    my $deadline = time + $PHASE_SECONDS;
    my @out;
    for (my $i = 0; $i < @$groups; $i += $BATCH) {
        if (time > $deadline) {
            diag "$label: deadline reached after $i of " . scalar(@$groups) . ' groups';
            last;
        }
        my @batch = @$groups[$i .. ($i + $BATCH - 1 < $#$groups ? $i + $BATCH - 1 : $#$groups)];
        my @pending = map { my $g = $_; map { start_delivery($_->{body}) } @$g } @batch;
        my @res = finish_request(@pending);
        for my $g (@batch) {
            push @out, [ splice @res, 0, scalar @$g ];
        }
    }
    push @out, undef while @out < @$groups;
    return \@out;
}

# one_by_one(\@groups) -> as in_flight, each event delivered and answered
# before the next is sent
sub one_by_one {
    my ($groups, $label) = @_;
    my $deadline = time + $PHASE_SECONDS;
    my @out;
    for my $g (@$groups) {
        if (time > $deadline) {
            diag "$label: deadline reached after " . scalar(@out) . ' of '
                . scalar(@$groups) . ' groups';
            last;
        }
        push @out, [ map { deliver($_->{body}) } @$g ];
    }
    push @out, undef while @out < @$groups;
    return \@out;
}

sub id_array { return 'ARRAY[' . join(',', map { quote($_) } @_) . ']::text[]' }

# which of these Stripe invoice ids have a row in invoices
sub with_row {
    my @ids = @_;
    return () unless @ids;
    return map { $_->[0] } sql('SELECT stripe_invoice_id FROM invoices WHERE '
                              . 'stripe_invoice_id = ANY(' . id_array(@ids) . ')');
}

sub tombstones {
    my @ids = @_;
    return 0 unless @ids;
    return sql_value('SELECT count(*) FROM invoices_deleted WHERE stripe_invoice_id = ANY('
                     . id_array(@ids) . ')');
}

sub recorded {
    my @eids = @_;
    return 0 unless @eids;
    return sql_value('SELECT count(*) FROM webhook_events WHERE id = ANY('
                     . id_array(@eids) . ')');
}

# tally of "type => result" over groups of events and their responses
sub tally {
    my ($groups, $responses) = @_;
    my %n;
    for my $i (0 .. $#$groups) {
        my $r = $responses->[$i] or do { $n{'not sent'}++; next };
        for my $j (0 .. $#{ $groups->[$i] }) {
            my $t = $groups->[$i][$j]{type} =~ s/^invoice\.//r;
            $n{"$t: " . result_of($r->[$j])}++;
        }
    }
    return join ', ', map { "$_ $n{$_}" } sort keys %n;
}

sub answers_ok {
    my ($label, $responses) = @_;
    my @all = map { $_ ? @$_ : () } @$responses;
    my $sent = grep { defined } @$responses;
    is($sent, scalar @$responses, "$label: all $sent of " . scalar(@$responses)
       . ' groups sent in time');
    my @bad = grep { ($_->status // 0) != 200 } @all;
    is(scalar @bad, 0, "$label: " . scalar(@bad) . ' of ' . scalar(@all)
       . ' answers were not 200')
        or diag join "\n", map { $_->describe } @bad[0 .. ($#bad < 4 ? $#bad : 4)];
}

# check_deleted($label, \%order_of_id, \@groups, $responses): after a phase
# that deleted every id of %order_of_id (id => a label of how it was sent)
sub check_deleted {
    my ($label, $order, $groups, $responses) = @_;
    my @ids = sort keys %$order;
    my $n = @ids;
    answers_ok($label, $responses);
    note "$label: " . tally($groups, $responses);

    my %back = map { $_ => 1 } with_row(@ids);
    my $back = keys %back;
    is($back, 0, "$label: $back of $n deleted drafts came back")
        or diag "$label: came back, by order of sending: " . join ', ',
            map { my $o = $_; my @of = grep { $order->{$_} eq $o } @ids;
                  scalar(grep { $back{$_} } @of) . " of " . scalar(@of) . " $o" }
            sort { $a cmp $b } keys %{ { map { $_ => 1 } values %$order } };
    my $tomb = tombstones(@ids);
    is($tomb, $n, "$label: $tomb of $n deleted drafts have their tombstone");
    my @eids = map { $_->{ev}{id} } map { @$_ } @$groups;
    my $rec = recorded(@eids);
    is($rec, scalar @eids, "$label: $rec of " . scalar(@eids)
       . ' events recorded in webhook_events');
    return $back;
}

my %FIGURES;    # label => "N of M", for the summary at the end

#----------------------------------------------------------------------
# 1. created and deleted of a fresh draft in flight together, both orders

{
    my $label = 'created/deleted at once';
    my (@groups, %order);
    for my $i (1 .. $PAIRS) {
        my $id = new_id('in');
        my $created = event('invoice.created', draft($id), $T);
        my $deleted = event('invoice.deleted', draft($id), $T + 10);
        if ($i % 2) {
            push @groups, [$created, $deleted];
            $order{$id} = 'created first';
        } else {
            push @groups, [$deleted, $created];
            $order{$id} = 'deleted first';
        }
    }
    my $res = in_flight(\@groups, $label);
    my $back = check_deleted($label, \%order, \@groups, $res);
    $FIGURES{$label} = "$back of $PAIRS";
}

#----------------------------------------------------------------------
# 2. the draft exists (its created delivered first); then updated and
#    deleted in flight together, both orders

{
    my $label = 'updated/deleted at once';
    my (@setup, @groups, %order);
    for my $i (1 .. $PAIRS) {
        my $id = new_id('in');
        push @setup, [event('invoice.created', draft($id), $T)];
        my $updated = event('invoice.updated', draft($id, total => 100 + $i), $T + 5);
        my $deleted = event('invoice.deleted', draft($id, total => 100 + $i), $T + 10);
        if ($i % 2) {
            push @groups, [$updated, $deleted];
            $order{$id} = 'updated first';
        } else {
            push @groups, [$deleted, $updated];
            $order{$id} = 'deleted first';
        }
    }
    my $sres = in_flight(\@setup, "$label (the drafts)");
    my @inserted = grep { $_ && result_of($_->[0]) eq 'inserted' } @$sres;
    is(scalar @inserted, $PAIRS, "$label: " . scalar(@inserted) . " of $PAIRS drafts "
       . 'stored first (inserted)') or note tally(\@setup, $sres);
    my @rows = with_row(keys %order);
    is(scalar @rows, $PAIRS, "$label: " . scalar(@rows) . " of $PAIRS drafts have a row "
       . 'before the race');

    my $res = in_flight(\@groups, $label);
    my $back = check_deleted($label, \%order, \@groups, $res);
    $FIGURES{$label} = "$back of $PAIRS";
}

#----------------------------------------------------------------------
# 3. out of order, one after another: each answered before the next

{
    my $label = 'late events after the delete';
    my (@groups, %order);
    for my $i (1 .. $SEQ) {
        my $id = new_id('in');
        push @groups, [event('invoice.deleted', draft($id), $T + 10),
                       event('invoice.created', draft($id), $T)];
        $order{$id} = 'deleted, then a late created';
    }
    for my $i (1 .. $SEQ) {
        my $id = new_id('in');
        push @groups, [event('invoice.deleted', draft($id), $T + 10),
                       event('invoice.updated', draft($id, total => 700), $T + 20)];
        $order{$id} = 'deleted, then a late updated';
    }
    for my $i (1 .. $SEQ) {
        my $id = new_id('in');
        # the same created again, under a new event id (a redelivery)
        push @groups, [event('invoice.created', draft($id), $T),
                       event('invoice.deleted', draft($id), $T + 10),
                       event('invoice.created', draft($id), $T)];
        $order{$id} = 'created, deleted, created again';
    }
    my $res = one_by_one(\@groups, $label);
    my $back = check_deleted($label, \%order, \@groups, $res);
    $FIGURES{$label} = "$back of " . scalar(keys %order);

    # what each step answered
    my %want = ('deleted, then a late created' => [qw(deleted deleted)],
                'deleted, then a late updated' => [qw(deleted deleted)],
                'created, deleted, created again' => [qw(inserted deleted deleted)]);
    my %wrong;
    for my $i (0 .. $#groups) {
        my $r = $res->[$i] or next;
        my $id = $groups[$i][0]{ev}{data}{object}{id};
        my $got = join ' ', map { result_of($_) } @$r;
        my $exp = join ' ', @{ $want{ $order{$id} } };
        push @{ $wrong{ $order{$id} } }, $got if $got ne $exp;
    }
    for my $o (sort keys %want) {
        my $bad = @{ $wrong{$o} || [] };
        is($bad, 0, "$label: $o: $bad of $SEQ answered otherwise than \"@{ $want{$o} }\"")
            or diag "$o: " . join '; ', @{ $wrong{$o} }[0 .. ($bad < 5 ? $bad - 1 : 4)];
    }
}

#----------------------------------------------------------------------
# 4. never deleted: created (draft), finalized (open), paid, in a random
#    order, one by one and all three at once; each ends as its newest
#    event says

{
    my $label = 'never deleted';
    my (@seq, @par, %want);
    for my $i (1 .. 2 * $LIVE) {
        my $id = new_id('in');
        my $paid = stripe_invoice(id => $id, status => 'paid', customer => $CUS,
                                  created => $C, total => 3000 + $i);
        my @three = (event('invoice.created', draft($id, total => 1000 + $i), $T),
                     event('invoice.finalized',
                           stripe_invoice(id => $id, status => 'open', customer => $CUS,
                                          created => $C, total => 2000 + $i), $T + 10),
                     event('invoice.paid', $paid, $T + 20));
        $want{$id} = { status => 'paid', amount => 3000 + $i,
                       invoice_pdf => $paid->{invoice_pdf}, team_id => $TEAM->{id} };
        push @{ $i <= $LIVE ? \@seq : \@par }, [shuffle @three];
    }
    my $sres = one_by_one(\@seq, "$label, one by one");
    my $pres = in_flight(\@par, "$label, at once");
    answers_ok("$label, one by one", $sres);
    answers_ok("$label, at once", $pres);
    note "$label, one by one: " . tally(\@seq, $sres);
    note "$label, at once: " . tally(\@par, $pres);

    my $rows = sql_json('SELECT stripe_invoice_id, status, amount, invoice_pdf, team_id '
                      . 'FROM invoices WHERE stripe_invoice_id = ANY('
                      . id_array(keys %want) . ')');
    my %row = map { $_->{stripe_invoice_id} => $_ } @$rows;
    my (@missing, @off);
    for my $id (sort keys %want) {
        my $r = $row{$id} or do { push @missing, $id; next };
        my @diff = grep { ($r->{$_} // '') ne ($want{$id}{$_} // '') } sort keys %{ $want{$id} };
        push @off, "$id: " . join ', ', map { "$_ " . ($r->{$_} // 'NULL')
                                                 . ' (want ' . ($want{$id}{$_} // 'NULL') . ')' } @diff
            if @diff;
    }
    my $n = keys %want;
    is(scalar @missing, 0, "$label: " . scalar(@missing) . " of $n invoices have no row")
        or diag "no row: @missing[0 .. ($#missing < 4 ? $#missing : 4)]";
    is(scalar @off, 0, "$label: " . scalar(@off) . " of $n rows are not their newest event "
       . '(paid, its total and PDF)') or diag join "\n", @off[0 .. ($#off < 9 ? $#off : 9)];
    my $rec = recorded(map { $_->{ev}{id} } map { @$_ } @seq, @par);
    is($rec, 3 * $n, "$label: $rec of " . 3 * $n . ' events recorded in webhook_events');
    $FIGURES{$label} = scalar(@missing) + scalar(@off) . " of $n wrong";
}

note sprintf 'figures: %s; %.1f s', join('; ', map { "$_: $FIGURES{$_}" } sort keys %FIGURES),
    time - $T0;

my @off = kept_counts_off();
is(scalar @off, 0, 'the kept counts (total, per group) agree with the rows')
    or diag join "\n", @off;

done_testing();
