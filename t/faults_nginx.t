# nginx's own lifecycle under load (issue 7): a reload (SIGHUP to the
# master) and then a graceful quit (SIGQUIT) while six clients read and
# create invoices through a slow Stripe.
#
# Reload: every request gets its complete answer (the old workers finish
# theirs, the new ones take the listening sockets), the workers are
# replaced, every invoice created is stored.  Quit: the creates in flight
# (waiting on Stripe in the pool threads) still get their 201 and are
# stored, nothing gets half an answer, nginx exits within a bound, and
# the error log has no [alert] (an open socket left, say: checked by the
# harness once nginx is gone).

use strict;
use warnings;
use Test::More;
use Time::HiRes qw(time sleep);
use Invoices::Test;
use Invoices::Load;

plan skip_all => 'timing test: not run under valgrind' if valgrind_mode();

start_server(stripe => 1, workers => 2, threads => 4);
my $master = server_info()->{pid};
my @old = wait_workers(2, $master);
is(scalar @old, 2, 'two workers');

my $A = linked_customer(payment_method => 'pm_card_visa');
insert_rows(invoices => map { {
    stripe_invoice_id => "in_nfault$_", status => 'paid', amount => $_,
    currency => 'eur', stripe_created_at => "2024-06-0${_}T00:00:00.000Z",
} } 1 .. 4);
# every Stripe call takes 150 ms: a create (3 calls) is in flight ~0.5 s
fake_config({ latency_ms => 150 });

sub create_req {
    my ($key) = @_;
    return create_request(admin => { items => [{ name => 'reload', amount => 1234 }],
                                     customer => $A->{customer} }, $key);
}
my $RUN = join '', map { ('a'..'z')[rand 26] } 1 .. 6;
my $load = start_load(clients => 6, timeout => 15, pause => 0.005, requests => sub {
    my ($c, $n) = @_;
    return create_req("load-$RUN-$c-$n") if $c < 2;
    return [GET => '/admin/api/invoices?limit=5'] if $c % 2;
    return [GET => '/admin/api/invoices/in_nfault' . (1 + $n % 4)];
});
ok(wait_until(sub { load_count($load, status => 201) >= 4 }, 10),
   'load: creates and reads under way');

#----------------------------------------------------------------------
# reload

my $t_hup = time;
ok(kill('HUP', $master), 'SIGHUP to the master (reload)');
my @new;
ok(wait_until(sub {
    @new = worker_pids($master);
    my %was = map { $_ => 1 } @old;
    return @new == 2 && !grep { $was{$_} } @new;
}, 15), 'the old workers are gone, two new ones serve');
my $t_new = time;
ok(wait_until(sub { load_count($load, since => $t_new, status => 201) >= 4 }, 10),
   'load: creates answered by the new workers');
ok(kill(0, $master), 'the same master');

#----------------------------------------------------------------------
# graceful quit, with creates waiting on Stripe

my $before = scalar fake_requests(qr{^POST /v1/invoices$});
my @tracked = map { start_request(@{ create_req("quit-$RUN-$_") }) } 1 .. 3;
ok(wait_until(sub { fake_requests(qr{^POST /v1/invoices$}) >= $before + 3 }, 5),
   'three more creates are at Stripe');
my $t_quit = time;
ok(kill('QUIT', $master), 'SIGQUIT to the master (graceful quit)');
# read the answers meanwhile: nginx ends each connection with a lingering
# close, which waits for the client to close its side
my @tracked_res = finish_request(@tracked);
my $quit_ok = stop_server();    # waits for the exit (another QUIT is harmless)
my $quit_took = time - $t_quit;
ok($quit_ok, sprintf 'nginx exited by itself, %.2fs after SIGQUIT', $quit_took);
cmp_ok($quit_took, '<', 5 * time_factor(), 'within 5s');
my @rec = stop_load($load);

subtest 'the creates in flight at SIGQUIT' => sub {
    for my $r (@tracked_res) {
        is($r->status, 201, 'answered 201') or diag $r->describe;
        my $id = ($r->json_or_undef // {})->{id} // '';
        is(sql_value('SELECT status FROM invoices WHERE stripe_invoice_id = ' . quote($id)),
           'open', "$id is stored");
    }
};

# A connection that nginx has not read a request from yet is idle, and a
# graceful quit closes idle connections (and the listening sockets, with
# whatever the kernel had queued on them): a request sent in the last
# moment before SIGQUIT may find its connection closed before nginx read
# a byte of it.  That is nginx's own behaviour, and the client sees it as
# a connection closed with no answer at all; it is allowed only then.
my $RACE = 0.2;
my @before_quit = grep { $_->{t0} < $t_quit - $RACE } @rec;
my @at_quit = grep { $_->{t0} >= $t_quit - $RACE && $_->{t0} < $t_quit } @rec;
my @after_quit = grep { $_->{t0} >= $t_quit } @rec;
subtest 'requests sent before SIGQUIT (through the reload): ' . summarize(@before_quit) => sub {
    my @bad = grep { !$_->{complete}
                     || $_->{status} != ($_->{method} eq 'POST' ? 201 : 200) } @before_quit;
    is(scalar @bad, 0, 'every one a complete 200 (read) or 201 (create)')
        or diag explain [map { +{ %$_, t0_minus_quit => $_->{t0} - $t_quit } }
                         @bad[0 .. ($#bad > 4 ? 4 : $#bad)]];
    my @around = grep { $_->{t0} < $t_new && $_->{t1} > $t_hup } @before_quit;
    cmp_ok(scalar @around, '>=', 6, scalar(@around) . ' of them were in flight during the reload');
    my @ids = map { $_->{id} } grep { $_->{status} == 201 } @before_quit, @at_quit, @after_quit;
    my $stored = @ids ? sql_value('SELECT count(*) FROM invoices WHERE stripe_invoice_id IN ('
                                  . join(',', map { quote($_) } @ids) . ')') : 0;
    is($stored, scalar @ids, 'every invoice created (' . @ids . ') is stored');
};
subtest "requests sent in the ${RACE}s before SIGQUIT: " . summarize(@at_quit) => sub {
    my @bad = grep { $_->{complete}
                     ? $_->{status} != ($_->{method} eq 'POST' ? 201 : 200)
                     : $_->{bytes} > 0 } @at_quit;
    is(scalar @bad, 0, 'a complete 200 or 201, or closed before any byte of an answer')
        or diag explain \@bad;
};
subtest 'requests sent after SIGQUIT: ' . summarize(@after_quit) => sub {
    # nginx stops listening at once: a new connection is refused (or reset
    # before any byte); none may get half an answer
    my @half = grep { !$_->{complete} && $_->{bytes} > 0 } @after_quit;
    is(scalar @half, 0, 'no truncated answer') or diag explain \@half;
    my @odd = grep { $_->{complete}
                     && $_->{status} != ($_->{method} eq 'POST' ? 201 : 200) } @after_quit;
    is(scalar @odd, 0, 'every complete answer a 200 or 201') or diag explain \@odd;
};

done_testing();
