# scripts/fake-stripe on its own: the Stripe wire protocol it promises
# (auth, bracketed forms, errors, idempotency), the invoice life cycle with
# automatic collection and signed webhooks, and the test knobs under /_fake/.
# Needs only python3 and core Perl; no PostgreSQL, no nginx.

use strict;
use warnings;
use Test::More;
use HTTP::Tiny;
use JSON::PP ();
use Digest::SHA qw(hmac_sha256_hex);
use IO::Socket::INET;
use POSIX ();
use Time::HiRes qw(time sleep);
use File::Temp ();

use FindBin ();
my $repo = "$FindBin::Bin/..";
my $fake_bin = "$repo/scripts/fake-stripe";
plan skip_all => 'python3 not found'
    unless grep { -x "$_/python3" } split /:/, $ENV{PATH} // '';
-x $fake_bin or BAIL_OUT("$fake_bin is not executable");

my $json = JSON::PP->new->canonical->allow_nonref;
my $tmp = File::Temp->newdir;
my $SK = 'sk_test_fake' . join('', map { ('a'..'z')[rand 26] } 1..20);
my $WHSEC = 'whsec_test' . join('', map { ('A'..'Z')[rand 26] } 1..24);
my (@kids, $fake_pid);

END {
    local $?;    # waitpid must not become the test's exit status
    for my $pid (grep { defined } @kids) {
        kill 'TERM', $pid;
        waitpid $pid, 0;
    }
}

# ------------------------------------------------- the webhook receiver
# Records each POST as one JSON line {headers, body}; answers 500 to the
# first delivery of an invoice.voided event (to see a retry), else 200.

my $hook_log = "$tmp/hooks.jsonl";
my $listener = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                     Listen => 16, ReuseAddr => 1)
    or die "listen: $!";
my $hook_port = $listener->sockport;
my $rx_pid = fork // die "fork: $!";
if ($rx_pid == 0) {
    my %failed;
    while (my $c = $listener->accept) {
        my ($line, %h) = scalar <$c>;
        while (defined(my $l = <$c>)) {
            $l =~ s/\r?\n\z//;
            last if $l eq '';
            my ($k, $v) = split /:\s*/, $l, 2;
            $h{lc $k} = $v;
        }
        my $body = '';
        my $n = $h{'content-length'} // 0;
        while (length $body < $n) {
            my $r = read $c, $body, $n - length $body, length $body;
            last unless $r;
        }
        my $status = 200;
        if ($body =~ /"type": "invoice\.voided"/ && !$failed{voided}++) {
            $status = 500;
        }
        open my $fh, '>>', $hook_log or die;
        print $fh $json->encode({request_line => $line, headers => \%h,
                                 body => $body, answered => $status}), "\n";
        close $fh;
        print $c "HTTP/1.1 $status X\r\nContent-Length: 2\r\n"
               . "Connection: close\r\n\r\nok";
        close $c;
    }
    POSIX::_exit(0);
}
push @kids, $rx_pid;
close $listener;

sub hooks {
    open my $fh, '<', $hook_log or return ();
    return map { $json->decode($_) } <$fh>;
}

# ------------------------------------------------------ the fake itself

my $port_file = "$tmp/port";
$fake_pid = fork // die "fork: $!";
if ($fake_pid == 0) {
    exec $fake_bin, '--listen', '127.0.0.1:0', '--port-file', $port_file,
        '--secret-key', $SK, '--webhook-url',
        "http://127.0.0.1:$hook_port/stripe/webhook",
        '--webhook-secret', $WHSEC, '--collect-delay', '0.3',
        '--log', "$tmp/fake.log";
    die "exec: $!";
}
push @kids, $fake_pid;
for (1 .. 100) { last if -s $port_file; sleep 0.05 }
open my $pf, '<', $port_file or BAIL_OUT('fake-stripe wrote no port file');
chomp(my $port = <$pf>);
my $base = "http://127.0.0.1:$port";

my $http = HTTP::Tiny->new(timeout => 10, keep_alive => 1);

sub form {
    my @pairs = @_;
    my @out;
    while (my ($k, $v) = splice @pairs, 0, 2) {
        push @out, join '=', map {
            (my $s = $_) =~ s/([^A-Za-z0-9_.~-])/sprintf '%%%02X', ord $1/ge;
            $s } $k, $v;
    }
    return join '&', @out;
}

# api(METHOD, PATH, [pairs], {headers}) -> (status, body, headers)
sub api {
    my ($method, $path, $pairs, $hdr, $client) = @_;
    my %h = (Authorization => "Bearer $SK", %{ $hdr // {} });
    delete $h{Authorization} if exists $hdr->{Authorization}
        && !defined $hdr->{Authorization};
    my %opt = (headers => \%h);
    my $f = form(@{ $pairs // [] });
    if ($method eq 'GET' || $method eq 'DELETE') {
        $path .= ($path =~ /\?/ ? '&' : '?') . $f if length $f;
    } else {
        $h{'Content-Type'} = 'application/x-www-form-urlencoded';
        $opt{content} = $f;
    }
    my $r = ($client // $http)->request($method, "$base$path", \%opt);
    my $b = eval { $json->decode($r->{content}) };
    return ($r->{status}, $b, $r->{headers});
}

sub control {
    my ($method, $path, $body) = @_;
    my $r = $http->request($method, "$base/_fake/$path", {
        headers => {'Content-Type' => 'application/json'},
        (defined $body ? (content => $json->encode($body)) : ())});
    die "control $method $path: $r->{status} $r->{content}"
        unless $r->{status} =~ /^2/;
    return $json->decode($r->{content});
}

sub wait_for {
    my ($cond, $secs) = @_;
    my $end = time + $secs;
    while (time < $end) {
        my $v = $cond->();
        return $v if $v;
        sleep 0.05;
    }
    return $cond->();
}

sub signature_ok {
    my ($hook) = @_;
    my $sig = $hook->{headers}{'stripe-signature'} // return 0;
    my ($t) = $sig =~ /(?:^|,)t=(\d+)/ or return 0;
    my @v1 = $sig =~ /(?:^|,)v1=([0-9a-f]+)/g or return 0;
    my $want = hmac_sha256_hex("$t.$hook->{body}", $WHSEC);
    return (grep { $_ eq $want } @v1) && abs(time - $t) < 300;
}

sub events_for {
    my ($invoice) = @_;
    my @out;
    for my $h (hooks()) {
        my $ev = eval { $json->decode($h->{body}) } or next;
        push @out, [$ev, $h] if ($ev->{data}{object}{id} // '') eq $invoice;
    }
    return @out;
}

# ---------------------------------------------------------------- tests

subtest 'auth' => sub {
    my ($s, $b, $h) = api('GET', '/v1/invoices', [], {Authorization => undef});
    is($s, 401, 'no key: 401');
    is($b->{error}{type}, 'invalid_request_error', 'Stripe type');
    like($b->{error}{message}, qr/did not provide an API key/, 'message');
    ($s, $b) = api('GET', '/v1/invoices', [],
                   {Authorization => 'Bearer sk_test_wrongwrongwrong1234'});
    is($s, 401, 'wrong key: 401');
    like($b->{error}{message}, qr/^Invalid API Key provided: sk_test_\*+1234$/,
         'key masked');
    require MIME::Base64;
    ($s) = api('GET', '/v1/invoices', [],
               {Authorization => 'Basic '
                    . MIME::Base64::encode_base64("$SK:", '')});
    is($s, 200, 'HTTP Basic with the key as user');
    ($s, $b, $h) = api('GET', '/v1/invoices');
    is($s, 200, 'Bearer');
    like($h->{'request-id'}, qr/^req_[0-9A-Za-z]{14}$/, 'Request-Id');
    is($h->{'stripe-version'}, '2023-10-16', 'default Stripe-Version');
    ($s, $b, $h) = api('GET', '/v1/invoices', [],
                       {'Stripe-Version' => '2022-11-15'});
    is($h->{'stripe-version'}, '2022-11-15', 'Stripe-Version echoed');
    ($s, $b) = api('GET', '/v1/invoices', [], {'Stripe-Version' => 'latest!'});
    is($s, 400, 'malformed Stripe-Version: 400');
};

subtest 'form parsing and unknown parameters' => sub {
    control('DELETE', 'requests');
    my ($s, $b) = api('POST', '/v1/invoices',
                      ['customer', 'cus_x', 'lines[0][amount]', '5',
                       'lines[1][amount]', '7', 'expand[]', 'customer',
                       'metadata[a b]', 'c&d']);
    is($s, 400, 'unknown parameter: 400');
    is($b->{error}{code}, 'parameter_unknown', 'code');
    is($b->{error}{param}, 'lines', 'param');
    is($b->{error}{message}, 'Received unknown parameter: lines', 'message');
    ($s, $b) = api('GET', '/v1/invoices',
                   ['created[gte]', '0', 'expand[]', 'data.customer',
                    'limit', '1']);
    is($s, 200, 'GET with bracketed query');
    my $reqs = control('GET', 'requests');
    is_deeply($reqs->[0]{params},
              {customer => 'cus_x', lines => [{amount => '5'},
                                              {amount => '7'}],
               expand => ['customer'], metadata => {'a b' => 'c&d'}},
              'POST body parsed into nested params');
    is_deeply($reqs->[1]{params},
              {created => {gte => '0'}, expand => ['data.customer'],
               limit => '1'}, 'query string parsed the same way');
    is($reqs->[0]{status}, 400, 'answered status recorded');
    ok($reqs->[0]{authorized}, 'authorized recorded');
    like($reqs->[0]{content_type}, qr/x-www-form-urlencoded/, 'content type');
    ($s, $b) = api('POST', '/v1/invoiceitems',
                   ['customer', 'cus_x', 'amount', '12.5']);
    is($b->{error}{code}, 'parameter_invalid_integer', 'bad integer');
    ($s, $b) = api('POST', '/v1/invoices', ['description', 'x']);
    is($b->{error}{code}, 'parameter_missing', 'missing customer');
    ($s, $b) = api('POST', '/v1/invoices', ['customer', 'cus_nope']);
    is($s, 400, 'unknown customer in a parameter: 400');
    is($b->{error}{code}, 'resource_missing', 'resource_missing');
    is($b->{error}{message}, "No such customer: 'cus_nope'", 'message');
    is($b->{error}{param}, 'customer', 'param');
};

my ($cus, $pm, $inv);
subtest 'customer, payment method, invoice, items, finalize' => sub {
    my ($s, $b) = api('POST', '/v1/customers',
                      ['name', 'Acme GmbH', 'email', 'billing@acme.test',
                       'metadata[team]', 't1']);
    is($s, 200, 'customer created');
    $cus = $b->{id};
    like($cus, qr/^cus_[0-9A-Za-z]+$/, 'customer id');
    is_deeply($b->{metadata}, {team => 't1'}, 'metadata');
    ($s, $b) = api('POST', '/v1/payment_methods/pm_card_visa/attach',
                   ['customer', $cus]);
    is($s, 200, 'pm_card_visa attached');
    $pm = $b->{id};
    like($pm, qr/^pm_/, 'a new pm_ id');
    is($b->{customer}, $cus, 'attached to the customer');
    ($s, $b) = api('POST', "/v1/customers/$cus",
                   ['invoice_settings[default_payment_method]', $pm]);
    is($b->{invoice_settings}{default_payment_method}, $pm, 'default pm');
    ($s, $b) = api('POST', '/v1/invoices',
                   ['customer', $cus, 'default_payment_method', 'pm_nope']);
    is($s, 400, 'unknown default_payment_method: 400');
    is($b->{error}{param}, 'default_payment_method', 'param');

    ($s, $b) = api('POST', '/v1/invoices',
                   ['customer', $cus, 'collection_method',
                    'charge_automatically', 'auto_advance', 'true',
                    'pending_invoice_items_behavior', 'exclude',
                    'currency', 'eur', 'description', 'Resources',
                    'metadata[source]', 'ngx_http_invoices_module']);
    is($s, 200, 'invoice created');
    $inv = $b->{id};
    like($inv, qr/^in_1[0-9A-Za-z]{23}$/, 'invoice id like Stripe');
    is($b->{status}, 'draft', 'draft');
    is($b->{total}, 0, 'total 0');
    is($b->{lines}{url}, "/v1/invoices/$inv/lines", 'lines url');
    is($b->{invoice_pdf}, undef, 'no pdf yet');
    ok(!$b->{livemode}, 'livemode false');
    my $fixture = '/work/shared/fixtures/stripe-invoice-draft.json';
    SKIP: {
        skip 'no fixture', 2 unless -r $fixture;
        open my $fh, '<', $fixture or die;
        my $fx = $json->decode(do { local $/; <$fh> });
        is_deeply([sort keys %$b], [sort keys %$fx],
                  'same key set as a real Stripe draft');
        my @nested = grep { ref $fx->{$_} eq 'HASH' && $_ ne 'metadata'
                            && $_ ne 'customer_address' } keys %$fx;
        is_deeply({map { $_ => [sort keys %{ $b->{$_} }] } @nested},
                  {map { $_ => [sort keys %{ $fx->{$_} }] } @nested},
                  'same nested key sets');
    }
    ($s, $b) = api('POST', '/v1/invoiceitems',
                   ['customer', $cus, 'invoice', $inv, 'amount', '3300',
                    'description', 'All resources']);
    is($s, 200, 'item 1');
    like($b->{id}, qr/^ii_/, 'ii_ id');
    ($s, $b) = api('POST', '/v1/invoiceitems',
                   ['customer', $cus, 'invoice', $inv, 'unit_amount', '250',
                    'quantity', '2', 'description', 'Storage']);
    is($s, 200, 'item 2');
    ($s, $b) = api('GET', "/v1/invoices/$inv");
    is($b->{total}, 3800, 'total of both lines');
    is($b->{lines}{total_count}, 2, 'two lines');
    like($b->{lines}{data}[0]{id}, qr/^il_/, 'il_ line id');
    ($s, $b) = api('POST', "/v1/invoices/$inv/finalize");
    is($s, 200, 'finalized');
    is($b->{status}, 'open', 'open');
    is($b->{amount_due}, 3800, 'amount_due');
    is($b->{amount_remaining}, 3800, 'amount_remaining');
    like($b->{number}, qr/^[0-9A-Z]+-0001$/, 'number');
    like($b->{invoice_pdf},
         qr{^https://pay\.stripe\.com/invoice/acct_\w+/test_\w+/pdf\?s=ap$},
         'invoice_pdf');
    ok($b->{status_transitions}{finalized_at}, 'finalized_at');
    ($s, $b) = api('POST', '/v1/invoiceitems',
                   ['customer', $cus, 'invoice', $inv, 'amount', '1']);
    is($s, 400, 'no items on an open invoice');
};

subtest 'automatic collection and signed webhooks' => sub {
    my $paid = wait_for(sub {
        my (undef, $b) = api('GET', "/v1/invoices/$inv");
        $b->{status} eq 'paid' ? $b : undef }, 5);
    ok($paid, 'paid after the collect delay') or return;
    is($paid->{amount_paid}, 3800, 'amount_paid');
    is($paid->{amount_remaining}, 0, 'amount_remaining 0');
    is($paid->{attempt_count}, 1, 'attempt_count');
    ok($paid->{paid} && $paid->{attempted}, 'paid, attempted');
    ok($paid->{status_transitions}{paid_at}, 'paid_at');
    my @want = qw(invoice.created invoice.finalized invoice.updated
                  invoice.paid invoice.payment_succeeded);
    my $got = wait_for(sub {
        my %t = map { $_->[0]{type} => 1 } events_for($inv);
        (grep { !$t{$_} } @want) ? undef : 1 }, 5);
    ok($got, 'receiver got ' . join(', ', @want));
    my @ev = events_for($inv);
    my $bad = grep { !signature_ok($_->[1]) } @ev;
    is($bad, 0, scalar(@ev) . ' signatures valid (HMAC-SHA256 of "t.body")');
    my $h = $ev[0][1]{headers};
    is($h->{'content-type'}, 'application/json; charset=utf-8', 'type');
    is($h->{'user-agent'}, 'Stripe/1.0 (+https://stripe.com/docs/webhooks)',
       'User-Agent');
    my ($e) = map { $_->[0] } grep { $_->[0]{type} eq 'invoice.paid' } @ev;
    like($e->{id}, qr/^evt_/, 'evt_ id');
    is($e->{object}, 'event', 'object event');
    is($e->{data}{object}{status}, 'paid', 'snapshot status');
    ok(exists $e->{request}{id} && exists $e->{request}{idempotency_key},
       'request {id, idempotency_key}');
    ok(!$e->{livemode} && defined $e->{pending_webhooks}
       && $e->{api_version}, 'livemode, pending_webhooks, api_version');
    my ($u) = map { $_->[0] } grep { $_->[0]{type} eq 'invoice.updated'
                                     && $_->[0]{data}{object}{paid} } @ev;
    is($u->{data}{previous_attributes}{status}, 'open',
       'previous_attributes on invoice.updated');
    my ($s, $b) = api('GET', '/v1/events', ['type', 'invoice.paid',
                                            'limit', '1']);
    is($b->{data}[0]{type}, 'invoice.paid', 'GET /v1/events by type');
    my $tampered = {%{ $ev[0][1] }, body => $ev[0][1]{body} . ' '};
    ok(!signature_ok($tampered), 'a changed body fails the check');
};

subtest 'declined card' => sub {
    my (undef, $c) = api('POST', '/v1/customers', ['name', 'Globex']);
    my ($s, $b) = api('POST', '/v1/invoices',
                      ['customer', $c->{id}, 'default_payment_method',
                       'pm_card_chargeDeclined', 'currency', 'eur']);
    is($s, 200, 'token usable as default_payment_method');
    my $id = $b->{id};
    api('POST', '/v1/invoiceitems', ['customer', $c->{id}, 'invoice', $id,
                                     'amount', '4900']);
    api('POST', "/v1/invoices/$id/finalize");
    my $adv = control('POST', 'advance');
    ok((grep { $_ eq $id } @{ $adv->{collected} }), 'advance collected it');
    ($s, $b) = api('GET', "/v1/invoices/$id");
    is($b->{status}, 'open', 'still open');
    is($b->{attempt_count}, 1, 'attempt_count 1');
    ok($b->{attempted}, 'attempted');
    ok($b->{next_payment_attempt}, 'next_payment_attempt set');
    ok(wait_for(sub { grep { $_->[0]{type} eq 'invoice.payment_failed' }
                  events_for($id) }, 5), 'invoice.payment_failed delivered');
    ($s, $b) = api('POST', "/v1/invoices/$id/pay");
    is($s, 402, 'pay: 402');
    is($b->{error}{type}, 'card_error', 'card_error');
    is($b->{error}{code}, 'card_declined', 'card_declined');
    is($b->{error}{decline_code}, 'generic_decline', 'decline_code');
    ($s, $b) = api('POST', "/v1/invoices/$id/void");
    is($b->{status}, 'void', 'voided');
    # The receiver answers 500 to the first invoice.voided: retried.
    control('POST', 'config', {webhooks => {retry_backoff_ms => [200]}});
    my $ok = wait_for(sub {
        my @d = grep { $_->{type} eq 'invoice.voided' }
            @{ control('GET', 'webhooks') };
        (grep { ($_->{status} // 0) == 200 } @d) ? \@d : undef }, 5);
    ok($ok, 'invoice.voided retried after a 500') or return;
    is_deeply([map { [$_->{attempt}, $_->{status}] } @$ok],
              [[1, 500], [2, 200]], 'attempt 1: 500, attempt 2: 200');
};

subtest 'send: only send_invoice invoices, never a draft' => sub {
    my (undef, $c) = api('POST', '/v1/customers', ['name', 'Sendco']);
    my ($s, $b) = api('POST', '/v1/invoices',
                      ['customer', $c->{id}, 'collection_method', 'send_invoice',
                       'days_until_due', '30']);
    is($s, 200, 'a send_invoice draft');
    my $id = $b->{id};
    api('POST', '/v1/invoiceitems', ['customer', $c->{id}, 'invoice', $id,
                                     'amount', '1500']);
    ($s, $b) = api('POST', "/v1/invoices/$id/send");
    is($s, 400, 'send of a draft: 400');
    is($b->{error}{type}, 'invalid_request_error', 'invalid_request_error');
    api('POST', "/v1/invoices/$id/finalize");
    ($s, $b) = api('POST', "/v1/invoices/$id/send");
    is($s, 200, 'send of the open invoice: 200');
    is($b->{id}, $id, 'the invoice');
    is($b->{status}, 'open', 'still open');
    ok(wait_for(sub { grep { $_->[0]{type} eq 'invoice.sent' } events_for($id) }, 5),
       'invoice.sent emitted');

    ($s, $b) = api('POST', '/v1/invoices', ['customer', $c->{id}]);
    my $auto = $b->{id};
    api('POST', '/v1/invoiceitems', ['customer', $c->{id}, 'invoice', $auto,
                                     'amount', '1500']);
    api('POST', "/v1/invoices/$auto/finalize");
    ($s, $b) = api('POST', "/v1/invoices/$auto/send");
    is($s, 400, 'send of a charge_automatically invoice: 400');
    like($b->{error}{message}, qr/collection method is 'send_invoice'/,
         "Stripe's reason");
};

subtest 'idempotency' => sub {
    my @p = (name => 'Initech', email => 'a@initech.test');
    my ($s1, $b1, $h1) = api('POST', '/v1/customers', \@p,
                             {'Idempotency-Key' => 'key-one'});
    my ($s2, $b2, $h2) = api('POST', '/v1/customers', \@p,
                             {'Idempotency-Key' => 'key-one'});
    is($s2, $s1, 'same status');
    is_deeply($b2, $b1, 'same body, same customer');
    is($h2->{'idempotent-replayed'}, 'true', 'Idempotent-Replayed');
    is($h1->{'idempotency-key'}, 'key-one', 'key echoed');
    ok(!$h1->{'idempotent-replayed'}, 'first answer not replayed');
    my ($s, $b) = api('POST', '/v1/customers', [name => 'Other'],
                      {'Idempotency-Key' => 'key-one'});
    is($s, 400, 'different params: 400');
    is($b->{error}{type}, 'idempotency_error', 'idempotency_error');
    like($b->{error}{message}, qr/can only be used with the same parameters/,
         'message');
    ($s, $b) = api('POST', '/v1/customers', [name => 'Long'],
                   {'Idempotency-Key' => 'k' x 256});
    is($s, 400, 'key over 255 characters: 400');

    control('POST', 'config', {latency_ms => 800});
    my $pid = fork // die;
    if ($pid == 0) {
        my ($st) = api('POST', '/v1/customers', [name => 'Slow'],
                       {'Idempotency-Key' => 'key-two'},
                       HTTP::Tiny->new(timeout => 10));
        POSIX::_exit($st == 200 ? 0 : 1);
    }
    sleep 0.3;
    ($s, $b) = api('POST', '/v1/customers', [name => 'Slow'],
                   {'Idempotency-Key' => 'key-two'});
    is($s, 409, 'same key while the first runs: 409');
    is($b->{error}{code}, 'idempotency_key_in_use', 'idempotency_key_in_use');
    waitpid $pid, 0;
    is($? >> 8, 0, 'the first one succeeded');
    control('POST', 'config', {latency_ms => 0});
    my ($s3, $b3, $h3) = api('POST', '/v1/customers', [name => 'Slow'],
                             {'Idempotency-Key' => 'key-two'});
    is($h3->{'idempotent-replayed'}, 'true', 'and is replayed afterwards');
};

subtest 'faults' => sub {
    control('POST', 'config', {faults => [
        {path => 'POST /v1/customers', status => 500, count => 1}]});
    my ($s, $b) = api('POST', '/v1/customers', [name => 'F1']);
    is($s, 500, 'count 1: first 500');
    is($b->{error}{type}, 'api_error', 'api_error');
    ($s) = api('POST', '/v1/customers', [name => 'F1']);
    is($s, 200, 'then success');

    # when=after: the action happens, the client sees an error; a retry with
    # the same key gets the real result, nothing new is created.
    my (undef, $c) = api('POST', '/v1/customers', [name => 'After']);
    control('POST', 'config', {faults => [
        {path => 'POST /v1/invoices', status => 500, count => 1,
         when => 'after'}]});
    my @p = (customer => $c->{id}, currency => 'eur');
    ($s, $b) = api('POST', '/v1/invoices', \@p, {'Idempotency-Key' => 'k-aft'});
    is($s, 500, 'when=after: 500');
    my (undef, $l) = api('GET', '/v1/invoices', [customer => $c->{id}]);
    is(scalar @{ $l->{data} }, 1, 'but the invoice exists');
    my ($s2, $b2, $h2) = api('POST', '/v1/invoices', \@p,
                             {'Idempotency-Key' => 'k-aft'});
    is($s2, 200, 'retry with the key: 200');
    is($b2->{id}, $l->{data}[0]{id}, 'the same invoice');
    is($h2->{'idempotent-replayed'}, 'true', 'replayed');
    (undef, $l) = api('GET', '/v1/invoices', [customer => $c->{id}]);
    is(scalar @{ $l->{data} }, 1, 'still one invoice');

    control('POST', 'config', {faults => [
        {path => 'POST /v1/customers/[^/]+', hang_seconds => 1, count => 1}]});
    # (POST: HTTP::Tiny would silently resend a GET once.)
    my $t0 = time;
    ($s) = api('POST', "/v1/customers/$c->{id}", [name => 'Hung'], {},
               HTTP::Tiny->new(timeout => 5, keep_alive => 0));
    my $dt = time - $t0;
    is($s, 599, 'hang: connection closed without an answer');
    ok($dt >= 0.9 && $dt < 4, sprintf 'after the hang (%.1f s)', $dt);
    ($s, $b) = api('POST', "/v1/customers/$c->{id}", [name => 'Hung']);
    is($s, 200, 'then answered');

    control('POST', 'config', {faults => [
        {path => 'POST /v1/invoices/[^/]+/finalize', status => 429,
         count => 1, retry_after => 2, should_retry => JSON::PP::true}]});
    ($s, $b, my $h) = api('POST', "/v1/invoices/$l->{data}[0]{id}/finalize");
    is($s, 429, 'status 429');
    is($h->{'retry-after'}, '2', 'Retry-After');
    is($h->{'stripe-should-retry'}, 'true', 'Stripe-Should-Retry');
    is($b->{error}{code}, 'rate_limit', 'rate_limit code');
    my $cfg = control('GET', 'config');
    ok($cfg->{faults}[0]{spent}, 'the rule is spent');

    # query: a regex found in the query string (a list's later pages only)
    control('POST', 'config', {faults => [
        {path => 'GET /v1/events', query => 'starting_after=', status => 500}]});
    my $first;
    ($s, $first) = api('GET', '/v1/events', [limit => 1]);
    is($s, 200, 'query rule: a first page is answered');
    ($s, $b) = api('GET', '/v1/events', [limit => 1, starting_after => $first->{data}[0]{id}]);
    is($s, 500, 'query rule: the next page is 500');
    ($s, $b) = api('GET', '/v1/events', [limit => 1, starting_after => $first->{data}[0]{id}]);
    is($s, 500, '... and again, until the rule goes');
    my $r = $http->request('POST', "$base/_fake/config", {
        content => $json->encode({faults => [{path => 'GET /v1/events',
                                              query => '(', status => 500}]})});
    is($r->{status}, 400, 'query rule: a bad regex is refused');
    control('POST', 'config', {faults => []});
};

subtest 'lists and 404' => sub {
    my (undef, $c) = api('POST', '/v1/customers', [name => 'Lister']);
    my @ids;
    for (1 .. 3) {
        my (undef, $b) = api('POST', '/v1/invoices', [customer => $c->{id}]);
        push @ids, $b->{id};
    }
    my ($s, $p1) = api('GET', '/v1/invoices',
                       [customer => $c->{id}, limit => 2]);
    is($p1->{object}, 'list', 'list object');
    is($p1->{url}, '/v1/invoices', 'url');
    is_deeply([map { $_->{id} } @{ $p1->{data} }], [@ids[2, 1]],
              'newest first');
    ok($p1->{has_more}, 'has_more');
    my (undef, $p2) = api('GET', '/v1/invoices',
                          [customer => $c->{id}, limit => 2,
                           starting_after => $p1->{data}[-1]{id}]);
    is_deeply([map { $_->{id} } @{ $p2->{data} }], [$ids[0]],
              'starting_after: the rest');
    ok(!$p2->{has_more}, 'no more');
    my (undef, $p3) = api('GET', '/v1/invoices',
                          [customer => $c->{id}, ending_before => $ids[0]]);
    is_deeply([map { $_->{id} } @{ $p3->{data} }], [@ids[2, 1]],
              'ending_before');
    ($s, my $b) = api('GET', '/v1/invoices', [limit => 101]);
    is($s, 400, 'limit 101: 400');
    ($s, $b) = api('GET', '/v1/invoices/in_1NoSuchInvoice00000000000');
    is($s, 404, 'unknown invoice in the path: 404');
    is($b->{error}{code}, 'resource_missing', 'resource_missing');
    is($b->{error}{message}, "No such invoice: 'in_1NoSuchInvoice00000000000'",
       'message');
    ($s) = api('DELETE', "/v1/invoices/$ids[0]");
    is($s, 200, 'draft deleted');
    ($s) = api('GET', "/v1/invoices/$ids[0]");
    is($s, 404, 'then 404');
    ($s, $b) = api('GET', '/v1/nothing');
    is($s, 404, 'unknown route: 404');
};

sub invoice_status {
    my ($id) = @_;
    my ($s, $b) = api('GET', "/v1/invoices/$id");
    return $s == 200 ? $b->{status} : "($s)";
}

sub event_types_for {
    my ($id) = @_;
    my (undef, $l) = api('GET', '/v1/events', [limit => 100]);
    return map { $_->{type} }
        grep { ($_->{data}{object}{id} // '') eq $id } reverse @{ $l->{data} };
}

subtest 'invoice lines: pagination in the order added, item metadata' => sub {
    my (undef, $c) = api('POST', '/v1/customers', [name => 'Lines']);
    my (undef, $d) = api('POST', '/v1/invoices',
                         [customer => $c->{id}, auto_advance => 'false']);
    my $id = $d->{id};
    my @items;
    for my $i (1 .. 12) {
        my ($s, $b) = api('POST', '/v1/invoiceitems',
                          [customer => $c->{id}, invoice => $id,
                           amount => 100 * $i, description => "line $i",
                           'metadata[index]' => $i, 'metadata[kind]' => 'x']);
        is($s, 200, "item $i") or return;
        is_deeply($b->{metadata}, {index => $i, kind => 'x'},
                  "item $i metadata") if $i == 1;
        push @items, $b->{id};
    }
    my (undef, $inv) = api('GET', "/v1/invoices/$id");
    is(scalar @{ $inv->{lines}{data} }, 10, 'the invoice shows ten lines');
    ok($inv->{lines}{has_more}, 'and has_more');
    is($inv->{lines}{total_count}, 12, 'total_count 12');
    my (@got, @pages, $after);
    while (1) {
        my ($s, $p) = api('GET', "/v1/invoices/$id/lines",
                          [limit => 5, ($after ? (starting_after => $after)
                                                : ())]);
        is($s, 200, 'lines page ' . (@pages + 1)) or return;
        is($p->{object}, 'list', 'a list');
        is($p->{url}, "/v1/invoices/$id/lines", 'its url');
        push @pages, [scalar @{ $p->{data} }, $p->{has_more} ? 1 : 0];
        push @got, @{ $p->{data} };
        last unless $p->{has_more} && @pages < 5;
        $after = $p->{data}[-1]{id};
    }
    is_deeply(\@pages, [[5, 1], [5, 1], [2, 0]],
              'limit 5: pages of 5, 5, 2 with has_more, has_more, none');
    is_deeply([map { $_->{invoice_item} } @got], \@items,
              'lines in the order their items were added');
    is_deeply([map { $_->{metadata}{index} } @got], [1 .. 12],
              'each line carries the metadata of its invoice item');
    ok(!(grep { $_->{type} ne 'invoiceitem' || $_->{metadata}{kind} ne 'x' }
         @got), 'every line of type invoiceitem, metadata whole');
    is_deeply([map { $_->{amount} } @got], [map { 100 * $_ } 1 .. 12],
              'amounts');
    my (undef, $p) = api('GET', "/v1/invoices/$id/lines",
                         [limit => 3, ending_before => $got[5]{id}]);
    is_deeply([map { $_->{id} } @{ $p->{data} }],
              [map { $_->{id} } @got[2 .. 4]], 'ending_before: the three before');
    my ($s, $e) = api('GET', "/v1/invoices/$id/lines",
                      [starting_after => 'il_1NoSuchLine']);
    is($s, 400, 'unknown starting_after: 400');
    is($e->{error}{code}, 'resource_missing', 'resource_missing');
    api('DELETE', "/v1/invoices/$id");
};

subtest 'automatic finalization of drafts (auto_advance)' => sub {
    # $cus pays with pm_card_visa by default.
    my $cfg = control('GET', 'config');
    is($cfg->{auto_finalize_delay_ms}, 3600000, 'default: an hour, as Stripe');
    my ($s, $b) = api('POST', '/v1/invoices', [customer => $cus]);
    my $early = $b->{id};
    ok($b->{auto_advance}, 'auto_advance defaults to true');
    my $npa = $b->{next_payment_attempt} - $b->{created};
    ok($npa >= 3599 && $npa <= 3601,
       "next_payment_attempt an hour after creation ($npa s)");
    my $r = eval {
        $http->request('POST', "$base/_fake/config", {
            headers => {'Content-Type' => 'application/json'},
            content => $json->encode({auto_finalize_delay_ms => -1})}) };
    is($r->{status}, 400, 'a negative delay is refused');

    control('POST', 'config', {auto_finalize_delay_ms => 300,
                               collect_delay_ms => 1500});
    my $t0 = time;
    ($s, $b) = api('POST', '/v1/invoices',
                   [customer => $cus, auto_advance => 'true',
                    description => 'auto']);
    my $auto = $b->{id};
    is($b->{status}, 'draft', 'created as a draft');
    api('POST', '/v1/invoiceitems', [customer => $cus, invoice => $auto,
                                     amount => 1200]);
    (undef, $b) = api('POST', '/v1/invoices',
                      [customer => $cus, auto_advance => 'false']);
    my $manual = $b->{id};
    api('POST', '/v1/invoiceitems', [customer => $cus, invoice => $manual,
                                     amount => 700]);
    (undef, $b) = api('POST', '/v1/invoices', [customer => $cus]);
    my $deleted = $b->{id};
    ($s) = api('DELETE', "/v1/invoices/$deleted");
    is($s, 200, 'a third draft deleted before the delay');
    (undef, $b) = api('POST', '/v1/invoices', [customer => $cus]);
    my $stopped = $b->{id};
    ($s, $b) = api('POST', "/v1/invoices/$stopped",
                   [auto_advance => 'false', 'metadata[k]' => 'v']);
    is($s, 200, 'POST /v1/invoices/ID update');
    ok(!$b->{auto_advance}, 'a fourth draft turned to auto_advance=false');
    is($b->{next_payment_attempt}, undef, 'so no next_payment_attempt');
    is_deeply($b->{metadata}, {k => 'v'}, 'metadata updated');

    my $open = wait_for(sub {
        my (undef, $i) = api('GET', "/v1/invoices/$auto");
        $i->{status} ne 'draft' ? $i : undef }, 5);
    ok($open, sprintf 'the auto_advance draft left draft by itself (%.1f s)',
       time - $t0) or return;
    is($open->{status}, 'open', 'open (collection waits collect_delay_ms)');
    ok(time - $t0 >= 0.3, 'not before the delay');
    like($open->{number}, qr/-\d{4}$/, 'numbered');
    ok($open->{status_transitions}{finalized_at}, 'finalized_at');
    ok($open->{next_payment_attempt}, 'next_payment_attempt set');
    my $paid = wait_for(sub {
        invoice_status($auto) eq 'paid' }, 5);
    ok($paid, 'then paid with pm_card_visa by the automatic collection');
    (undef, $b) = api('GET', "/v1/invoices/$auto");
    is($b->{amount_paid}, 1200, 'amount_paid');
    is_deeply([event_types_for($auto)],
              [qw(invoice.created invoice.updated invoice.finalized
                  invoice.updated invoice.paid invoice.payment_succeeded)],
              'the events of a finalize and a collection');
    my (undef, $l) = api('GET', '/v1/events', [type => 'invoice.finalized',
                                               limit => 100]);
    my ($fe) = grep { $_->{data}{object}{id} eq $auto } @{ $l->{data} };
    is($fe->{request}{id}, undef, 'invoice.finalized from no request');
    ok(wait_for(sub { grep { $_->[0]{type} eq 'invoice.finalized' }
                      events_for($auto) }, 5),
       'invoice.finalized delivered as a webhook');

    sleep 0.5;
    is(invoice_status($manual), 'draft', 'auto_advance=false: still a draft');
    is(invoice_status($stopped), 'draft',
       'auto_advance turned false before the delay: still a draft');
    is(invoice_status($deleted), '(404)', 'the deleted draft stays deleted');
    ok(!(grep { $_->{id} eq $deleted }
         @{ (api('GET', '/v1/invoices', [customer => $cus, limit => 100]))[1]
            {data} }), 'and is not listed');
    is_deeply([event_types_for($deleted)],
              [qw(invoice.created invoice.deleted)],
              'no event after invoice.deleted');
    is(invoice_status($early), 'draft',
       'a draft created under the hour default keeps its hour');
    my $adv = control('POST', 'advance');
    is_deeply($adv->{finalized}, [], 'advance finalizes no draft before its time');
    is(invoice_status($early), 'draft', 'still a draft');

    # Turned back to true: finalized as soon as its delay from creation is over.
    ($s, $b) = api('POST', "/v1/invoices/$stopped", [auto_advance => 'true']);
    ok($b->{auto_advance}, 'auto_advance back to true');
    ok(wait_for(sub { invoice_status($stopped) ne 'draft' }, 5),
       'then finalized by itself');
    # finalize auto_advance=false: finalized now, no automatic collection.
    ($s, $b) = api('POST', "/v1/invoices/$manual/finalize",
                   [auto_advance => 'false']);
    is($b->{status}, 'open', 'finalize auto_advance=false: open');
    sleep 2;
    is(invoice_status($manual), 'open', 'and never collected by itself');
    control('POST', 'config', {auto_finalize_delay_ms => 3600000,
                               collect_delay_ms => 300});
    api('DELETE', "/v1/invoices/$early");
};

subtest 'omit_total_count' => sub {
    my (undef, $c) = api('POST', '/v1/customers', [name => 'NoCount']);
    my @p = (customer => $c->{id}, auto_advance => 'false');
    my ($s, $before) = api('POST', '/v1/invoices', \@p,
                           {'Idempotency-Key' => 'k-count'});
    ok(exists $before->{lines}{total_count}, 'by default: total_count');
    my $cfg = control('POST', 'config', {omit_total_count => JSON::PP::true});
    ok($cfg->{omit_total_count}, 'knob set');
    my (undef, $b, $h) = api('POST', '/v1/invoices', \@p,
                             {'Idempotency-Key' => 'k-count'});
    is($h->{'idempotent-replayed'}, 'true', 'a replay');
    ok(!exists $b->{lines}{total_count}, 'a replay leaves it out too');
    ($s, $b) = api('POST', '/v1/invoices', \@p);
    my $id = $b->{id};
    ok(!exists $b->{lines}{total_count}, 'create: no total_count');
    ok(exists $b->{lines}{has_more} && $b->{lines}{url}, 'the rest is there');
    api('POST', '/v1/invoiceitems', [customer => $c->{id}, invoice => $id,
                                     amount => 500]);
    ($s, $b) = api('GET', "/v1/invoices/$id");
    ok(!exists $b->{lines}{total_count}, 'get: no total_count');
    is(scalar @{ $b->{lines}{data} }, 1, 'lines still shown');
    ($s, $b) = api('GET', '/v1/invoices', [customer => $c->{id}]);
    ok(!(grep { exists $_->{lines}{total_count} } @{ $b->{data} }),
       'list: no total_count in any invoice');
    ($s, $b) = api('GET', "/v1/invoices/$id/lines");
    ok(!exists $b->{total_count}, 'lines list: no total_count');
    is(scalar @{ $b->{data} }, 1, 'one line');
    ($s, $b) = api('POST', "/v1/invoices/$id/finalize");
    ok(!exists $b->{lines}{total_count}, 'finalize: no total_count');
    ($s, $b) = api('POST', "/v1/invoices/$id/pay",
                   [paid_out_of_band => 'true']);
    is($b->{status}, 'paid', 'paid out of band');
    ok(!exists $b->{lines}{total_count}, 'pay: no total_count');
    my $hooks = wait_for(sub {
        my @e = events_for($id);
        (grep { $_->[0]{type} eq 'invoice.paid' } @e) ? \@e : undef }, 5);
    ok($hooks, 'webhooks delivered') or return;
    ok(!(grep { exists $_->[0]{data}{object}{lines}{total_count} } @$hooks),
       'no total_count in any delivered event (' . @$hooks . ')');
    my ($upd) = grep { $_->[0]{type} eq 'invoice.updated'
                       && $_->[0]{data}{previous_attributes}{lines} } @$hooks;
    ok($upd && !exists $upd->[0]{data}{previous_attributes}{lines}{total_count},
       'nor in previous_attributes.lines');
    ($s, $b) = api('GET', "/v1/events/$hooks->[0][0]{id}");
    ok(!exists $b->{data}{object}{lines}{total_count},
       'GET /v1/events/ID: none');
    control('POST', 'config', {omit_total_count => JSON::PP::false});
    ($s, $b) = api('GET', "/v1/invoices/$id");
    is($b->{lines}{total_count}, 1, 'knob off: the stored count is back');
};

subtest 'idempotency: what is stored, and forgetting' => sub {
    my (undef, $c) = api('POST', '/v1/customers', [name => 'Idem']);
    # 400 for parameters that fail validation: not stored.
    my @bad = (customer => $c->{id}, bogus => 1);
    my ($s, $b, $h) = api('POST', '/v1/invoices', \@bad,
                          {'Idempotency-Key' => 'k-400'});
    is($s, 400, 'validation failure: 400');
    is($b->{error}{code}, 'parameter_unknown', 'parameter_unknown');
    ($s, $b, $h) = api('POST', '/v1/invoices', \@bad,
                       {'Idempotency-Key' => 'k-400'});
    ok(!$h->{'idempotent-replayed'}, 'the same request again: not a replay');
    ($s, $b, $h) = api('POST', '/v1/invoices', [customer => $c->{id}],
                       {'Idempotency-Key' => 'k-400'});
    is($s, 200, 'the key then serves a valid request (nothing was stored)');
    ok(!$h->{'idempotent-replayed'}, 'executed, not replayed');

    # 402 card error: stored and replayed, no second attempt.
    my (undef, $d) = api('POST', '/v1/invoices',
                         [customer => $c->{id}, auto_advance => 'false',
                          default_payment_method => 'pm_card_chargeDeclined']);
    my $id = $d->{id};
    api('POST', '/v1/invoiceitems', [customer => $c->{id}, invoice => $id,
                                     amount => 900]);
    api('POST', "/v1/invoices/$id/finalize");
    my ($s1, $b1, $h1) = api('POST', "/v1/invoices/$id/pay", [],
                             {'Idempotency-Key' => 'k-402'});
    is($s1, 402, 'declined: 402');
    my ($s2, $b2, $h2) = api('POST', "/v1/invoices/$id/pay", [],
                             {'Idempotency-Key' => 'k-402'});
    is($s2, 402, 'again: 402');
    is($h2->{'idempotent-replayed'}, 'true', 'replayed');
    is($h2->{'original-request'}, $h1->{'request-id'}, 'Original-Request');
    is_deeply($b2, $b1, 'the same error body');
    (undef, $b) = api('GET', "/v1/invoices/$id");
    is($b->{attempt_count}, 1, 'one payment attempt only');

    # Forgetting (Stripe: after 24 hours).
    my @p = (name => 'Forgotten');
    my (undef, $x1) = api('POST', '/v1/customers', \@p,
                          {'Idempotency-Key' => 'k-forget'});
    my (undef, $x2, $hx) = api('POST', '/v1/customers', \@p,
                               {'Idempotency-Key' => 'k-forget'});
    is($x2->{id}, $x1->{id}, 'replayed before forgetting');
    # A key in flight stays.
    control('POST', 'config', {latency_ms => 800});
    my $pid = fork // die;
    if ($pid == 0) {
        my ($st) = api('POST', '/v1/customers', [name => 'InFlight'],
                       {'Idempotency-Key' => 'k-flight'},
                       HTTP::Tiny->new(timeout => 10));
        POSIX::_exit($st == 200 ? 0 : 1);
    }
    sleep 0.3;
    my $f = control('POST', 'forget-idempotency');
    ok($f->{forgotten} >= 3, "forgotten: $f->{forgotten}");
    ($s, $b) = api('POST', '/v1/customers', [name => 'InFlight'],
                   {'Idempotency-Key' => 'k-flight'});
    is($s, 409, 'a key in flight is kept: its twin still gets a 409');
    waitpid $pid, 0;
    is($? >> 8, 0, 'the request in flight succeeded');
    control('POST', 'config', {latency_ms => 0});
    (undef, undef, $h) = api('POST', '/v1/customers', [name => 'InFlight'],
                             {'Idempotency-Key' => 'k-flight'});
    is($h->{'idempotent-replayed'}, 'true', 'and is stored when it ends');
    my (undef, $x3, $h3) = api('POST', '/v1/customers', \@p,
                               {'Idempotency-Key' => 'k-forget'});
    isnt($x3->{id}, $x1->{id}, 'after forgetting: executed anew, a second '
         . 'customer');
    ok(!$h3->{'idempotent-replayed'}, 'not a replay');
    my ($s4, undef, $h4) = api('POST', "/v1/invoices/$id/pay", [],
                               {'Idempotency-Key' => 'k-402'});
    is($s4, 402, 'the forgotten 402 runs again');
    ok(!$h4->{'idempotent-replayed'}, 'not a replay');
    (undef, $b) = api('GET', "/v1/invoices/$id");
    is($b->{attempt_count}, 2, 'a second payment attempt');
    ($s, $b) = api('POST', '/v1/customers', [name => 'Other params'],
                   {'Idempotency-Key' => 'k-forget'});
    is($s, 400, 'the key is stored again (other params: idempotency_error)');
    $f = control('POST', 'forget-idempotency');
    ok($f->{forgotten} >= 2, 'forgotten again');
    is_deeply(control('POST', 'forget-idempotency'), {forgotten => 0},
              'nothing left: {"forgotten": 0}');
};

# ------------------------------------------- GET /v1/events, as Stripe's
# API reference lists events: newest first; limit 1..100 (default 10);
# has_more; starting_after / ending_before; type, one name or a group with
# * as a wildcard; types[], up to 20 exact names, not with type; created
# as an exact time or bounded by gte, gt, lte, lt.  A known history, in
# three distinct seconds: 105 customers, an invoice with an item, its
# finalization (each a customer.created, the invoice's invoice.* events
# and an invoiceitem.created).

# all_events([pairs]) -> every event the list has for those parameters,
# followed page by page (limit 100, starting_after)
# (one connection a request: with keep-alive each POST here waits ~80 ms)
my $quick = HTTP::Tiny->new(timeout => 10, keep_alive => 0);
sub qapi { my ($m, $p, $pairs) = @_; return api($m, $p, $pairs, {}, $quick) }

sub all_events {
    my @p = @{ $_[0] // [] };
    my (@out, $after);
    for (1 .. 50) {
        my ($s, $b) = qapi('GET', '/v1/events', [@p, limit => 100,
                                                 ($after ? (starting_after => $after) : ())]);
        return "($s)" unless $s == 200;
        push @out, @{ $b->{data} };
        return \@out unless $b->{has_more} && @{ $b->{data} };
        $after = $b->{data}[-1]{id};
    }
    return \@out;
}
sub ids { [map { $_->{id} } @{ ref $_[0] eq 'ARRAY' ? $_[0] : [] }] }
sub next_second { my $t = int time; sleep 0.02 while int(time) == $t }

my (@hist_cus, $hist_inv, $hist_all, $hist_mid);
subtest 'events list: a known history' => sub {
    control('POST', 'reset', {state => JSON::PP::true});
    control('POST', 'config', {webhooks => {enabled => JSON::PP::false}});
    my $make = sub {
        my ($n) = @_;
        for (1 .. $n) {
            my (undef, $c) = qapi('POST', '/v1/customers',
                                 [name => 'History ' . (@hist_cus + 1)]);
            push @hist_cus, $c->{id};
        }
    };
    $make->(50);
    my ($s, $b) = qapi('POST', '/v1/invoices',
                      [customer => $hist_cus[0], auto_advance => 'false']);
    $hist_inv = $b->{id};
    ($s) = qapi('POST', '/v1/invoiceitems',
               [customer => $hist_cus[0], invoice => $hist_inv,
                amount => 700, currency => 'usd']);
    is($s, 200, 'an item on the draft');
    next_second();
    $make->(20);
    ($s) = qapi('POST', "/v1/invoices/$hist_inv/finalize");
    is($s, 200, 'finalized a second later');
    next_second();
    $make->(35);
    is(scalar @hist_cus, 105, '105 customers, each with its event');
    $hist_all = all_events();
    my %types;
    $types{$_->{type}}++ for @$hist_all;
    is($types{'customer.created'}, 105, 'the list has every customer.created');
    ok($types{'invoice.created'} && $types{'invoice.updated'}
       && $types{'invoice.finalized'} && $types{'invoiceitem.created'},
       'and the invoice\'s events: ' . join ', ', sort keys %types);
    my ($fin) = grep { $_->{type} eq 'invoice.finalized' } @$hist_all;
    $hist_mid = $fin->{created};
    my %secs = map { $_->{created} => 1 } @$hist_all;
    ok((grep { $_ < $hist_mid } keys %secs) && (grep { $_ > $hist_mid } keys %secs),
       'events before, at and after the second of the finalization');
};

subtest 'events list: newest first, limit, has_more' => sub {
    my @created = map { $_->{created} } @$hist_all;
    is_deeply(\@created, [sort { $b <=> $a } @created],
              'newest first: created never grows down the list');
    my @cus_order = map { $_->{data}{object}{id} }
                    grep { $_->{type} eq 'customer.created' } @$hist_all;
    is_deeply(\@cus_order, [reverse @hist_cus],
              'newest first: the customers\' events in the reverse order of creation');
    my ($s, $b) = qapi('GET', '/v1/events');
    is($s, 200, 'no parameters: 200');
    is($b->{object}, 'list', 'a list object');
    is($b->{url}, '/v1/events', 'its url');
    is_deeply(ids($b->{data}), [@{ ids($hist_all) }[0 .. 9]],
              'limit by default: 10, the newest');
    ok($b->{has_more}, 'has_more: true, 10 of more');
    for my $n (1, 37, 100) {
        ($s, $b) = qapi('GET', '/v1/events', [limit => $n]);
        is_deeply(ids($b->{data}), [@{ ids($hist_all) }[0 .. $n - 1]],
                  "limit $n: the newest $n");
    }
    ok(@$hist_all > 100 && $b->{has_more}, 'limit 100 of ' . @$hist_all . ': has_more');
    for my $bad (0, 101, -1, 'ten') {
        ($s, $b) = qapi('GET', '/v1/events', [limit => $bad]);
        is($s, 400, "limit $bad: 400");
        is($b->{error}{param}, 'limit', '... on the param limit');
        is($b->{error}{type}, 'invalid_request_error', '... invalid_request_error');
    }
    my $inv_n = grep { $_->{type} =~ /^invoice\./ } @$hist_all;
    ($s, $b) = qapi('GET', '/v1/events', [type => 'invoice.*', limit => $inv_n]);
    ok(!$b->{has_more} && @{ $b->{data} } == $inv_n,
       "has_more: false when the page holds the last one ($inv_n of $inv_n)");
    ($s, $b) = qapi('GET', '/v1/events', [type => 'invoice.*', limit => $inv_n - 1]);
    ok($b->{has_more}, 'has_more: true when one is left over');
};

subtest 'events list: starting_after, ending_before' => sub {
    my @all = @{ ids($hist_all) };
    my (@walk, $after, $pages, $more_seen);
    while (1) {
        my ($s, $b) = qapi('GET', '/v1/events',
                          [limit => 30, ($after ? (starting_after => $after) : ())]);
        last unless $s == 200 && ++$pages < 20;
        push @walk, @{ ids($b->{data}) };
        $more_seen .= $b->{has_more} ? 'm' : '.';
        last unless $b->{has_more};
        $after = $b->{data}[-1]{id};
    }
    is_deeply(\@walk, \@all, 'pages of 30 with starting_after: every event once, in order');
    my $want = 'm' x (int((@all - 1) / 30)) . '.';
    is($more_seen, $want, 'has_more on every page but the last');
    my ($s, $b) = qapi('GET', '/v1/events', [limit => 5, starting_after => $all[9]]);
    is_deeply(ids($b->{data}), [@all[10 .. 14]],
              'starting_after: the older ones right after it, not itself');
    ($s, $b) = qapi('GET', '/v1/events', [limit => 5, starting_after => $all[-2]]);
    is_deeply(ids($b->{data}), [$all[-1]], 'starting_after the last but one: the last');
    ok(!$b->{has_more}, '... no more');
    ($s, $b) = qapi('GET', '/v1/events', [limit => 5, starting_after => $all[-6]]);
    is_deeply(ids($b->{data}), [@all[-5 .. -1]], 'starting_after: a page just holding the rest');
    ok(!$b->{has_more}, '... no more');
    ($s, $b) = qapi('GET', '/v1/events', [limit => 10, ending_before => $all[50]]);
    is_deeply(ids($b->{data}), [@all[40 .. 49]],
              'ending_before: the newer ones right before it, newest first');
    ok($b->{has_more}, '... has_more: there are newer still');
    ($s, $b) = qapi('GET', '/v1/events', [limit => 10, ending_before => $all[4]]);
    is_deeply(ids($b->{data}), [@all[0 .. 3]], 'ending_before near the top: what is left');
    ok(!$b->{has_more}, '... no more');
    ($s, $b) = qapi('GET', '/v1/events', [ending_before => $all[0]]);
    is_deeply(ids($b->{data}), [], 'ending_before the newest: none');
    ($s, $b) = qapi('GET', '/v1/events', [starting_after => 'evt_1NoSuchEvent0000000000000']);
    is($s, 400, 'starting_after an unknown event: 400');
    is($b->{error}{code}, 'resource_missing', '... resource_missing');
    is($b->{error}{param}, 'starting_after', '... on starting_after');
};

subtest 'events list: type (a wildcard), types[] (exact names)' => sub {
    my $of = sub { my ($re) = @_; [map { $_->{id} } grep { $_->{type} =~ $re } @$hist_all] };
    my $inv = $of->(qr/^invoice\./);
    my $got = all_events([type => 'invoice.*']);
    is_deeply(ids($got), $inv,
              'type=invoice.*: every invoice.* event, newest first, none other');
    ok(!grep({ $_->{type} eq 'invoiceitem.created' } @$got),
       '... not invoiceitem.created (the wildcard is invoice. and more)');
    is_deeply(ids(all_events([type => 'invoice.finalized'])), $of->(qr/^invoice\.finalized$/),
              'type=invoice.finalized: that one');
    is_deeply(ids(all_events([type => 'invoice'])), [],
              'type=invoice: without the wildcard a name, and no event has it');
    my ($s, $b) = qapi('GET', '/v1/events', [type => 'customer.created', limit => 100]);
    is_deeply(ids($b->{data}), [@{ $of->(qr/^customer\.created$/) }[0 .. 99]],
              'type=customer.created: a page of 100 of its 105');
    ok($b->{has_more}, '... has_more');
    is_deeply(ids(all_events(['types[]' => 'invoice.created',
                              'types[]' => 'invoiceitem.created'])),
              $of->(qr/^(?:invoice\.created|invoiceitem\.created)$/),
              'types[]: the events of each name given, newest first');
    is_deeply(ids(all_events(['types[]' => 'invoice.*'])), [],
              'types[]=invoice.*: no wildcard in types, it names no event');
    is_deeply(ids(all_events(['types[]' => 'invoice.*', 'types[]' => 'invoice.finalized'])),
              $of->(qr/^invoice\.finalized$/),
              'types[]=invoice.*&types[]=invoice.finalized: only the exact name');
    ($s, $b) = qapi('GET', '/v1/events',
                   [map { ('types[]' => "invoice.t$_") } 1 .. 20]);
    is($s, 200, 'types[]: 20 names are allowed');
    ($s, $b) = qapi('GET', '/v1/events',
                   [map { ('types[]' => "invoice.t$_") } 1 .. 21]);
    is($s, 400, 'types[]: 21 names: 400');
    is($b->{error}{param}, 'types', '... on types');
    ($s, $b) = qapi('GET', '/v1/events', [type => 'invoice.*',
                                         'types[]' => 'invoice.created']);
    is($s, 400, 'type and types[] together: 400');
    is($b->{error}{param}, 'types', '... on types');
};

subtest 'events list: created, exact or bounded by gte, gt, lte, lt' => sub {
    my $t = $hist_mid;
    my $of = sub { my ($ok) = @_; [map { $_->{id} } grep { $ok->($_->{created}) } @$hist_all] };
    my %want = (gte => $of->(sub { $_[0] >= $t }), gt => $of->(sub { $_[0] > $t }),
                lte => $of->(sub { $_[0] <= $t }), lt => $of->(sub { $_[0] < $t }));
    for my $op (qw(gte gt lte lt)) {
        ok(@{ $want{$op} } && @{ $want{$op} } < @$hist_all,
           "created[$op]: some events but not all are wanted");
        is_deeply(ids(all_events(["created[$op]" => $t])), $want{$op},
                  "created[$op]=T: the events created " . {gte => 'at or after', gt => 'after',
                  lte => 'at or before', lt => 'before'}->{$op} . ' T, newest first');
    }
    my $at = $of->(sub { $_[0] == $t });
    is_deeply(ids(all_events(["created[gte]" => $t, "created[lte]" => $t])), $at,
              'created[gte]=T&created[lte]=T: those of that second');
    is_deeply(ids(all_events([created => $t])), $at, 'created=T: the same');
    is_deeply(ids(all_events(["created[gt]" => $t, "created[lt]" => $t])), [],
              'created[gt]=T&created[lt]=T: none');
    is_deeply(ids(all_events([type => 'invoice.*', "created[gte]" => $t])),
              [map { $_->{id} } grep { $_->{type} =~ /^invoice\./ && $_->{created} >= $t } @$hist_all],
              'type=invoice.*&created[gte]=T (what the reconciler asks)');
    my ($s, $b) = qapi('GET', '/v1/events', ['created[gte]' => 'soon']);
    is($s, 400, 'created[gte] not a number: 400');
    control('POST', 'reset', {state => JSON::PP::true});
};

subtest 'control API' => sub {
    my $c = control('POST', 'customers',
                    {id => 'cus_DemoAcme0001', name => 'Acme GmbH',
                     payment_method => 'pm_card_visa',
                     payment_method_id => 'pm_DemoAcmeVisa0001'});
    is($c->{id}, 'cus_DemoAcme0001', 'customer with a chosen id');
    is($c->{invoice_settings}{default_payment_method}, 'pm_DemoAcmeVisa0001',
       'with a chosen default payment method');
    my ($s, $b) = api('GET', '/v1/customers/cus_DemoAcme0001');
    is($b->{name}, 'Acme GmbH', 'served by /v1');
    ok(scalar @{ control('GET', 'requests') }, 'requests recorded');
    control('POST', 'reset', {});
    is(scalar @{ control('GET', 'requests') }, 0, 'reset clears requests');
    ($s) = api('GET', '/v1/customers/cus_DemoAcme0001');
    is($s, 200, 'but keeps state');
    control('POST', 'reset', {state => JSON::PP::true});
    ($s) = api('GET', '/v1/customers/cus_DemoAcme0001');
    is($s, 404, 'state => true clears state too');
};

subtest 'SIGTERM' => sub {
    kill 'TERM', $fake_pid;
    my $t0 = time;
    my $r;
    while (time - $t0 < 5) {
        $r = waitpid $fake_pid, POSIX::WNOHANG();
        last if $r;
        sleep 0.05;
    }
    is($r, $fake_pid, 'exits on SIGTERM');
    is($?, 0, 'with status 0');
    @kids = grep { $_ != $fake_pid } @kids;
};

done_testing;
