package Invoices::Webhook;

# Helpers for the tests of POST /stripe/webhook and of the sync
# (t/webhook*.t, t/sync.t), on top of Invoices::Test.
#
#     use Invoices::Test;
#     use Invoices::Webhook;
#
#     my $whsec = new_whsec();
#     start_server(server_config => webhook_location(
#                      secrets => ['file:' . secret_file($whsec)]));
#     default_secret($whsec);
#     my $inv = stripe_invoice(status => 'open', customer => 'cus_x');
#     my $res = deliver_event(invoice_event('invoice.finalized', $inv));
#     my $row = invoice_row($inv->{id});
#
# Signatures are made here with Stripe's real scheme: the header is
# "t=UNIX,v1=HEX", HEX the lowercase hex HMAC-SHA256 keyed with the whole
# "whsec_..." string over "{t}.{raw body}".  t/webhook.t checks sign() on
# a known vector computed with openssl.

use strict;
use warnings;

use Carp qw(croak);
use Digest::SHA qw(hmac_sha256_hex);
use Exporter 'import';
use JSON::PP ();
use POSIX ();
use Time::HiRes qw(time sleep);

use Invoices::Test;

our @EXPORT = qw(
    sign signature_header new_whsec default_secret
    secret_path write_secret secret_file webhook_location
    stripe_invoice invoice_event event_body new_id
    deliver deliver_event start_delivery
    invoice_row invoice_rows event_row event_count db_state stored api_invoice iso_ms
    result_of
);

my $JSON = JSON::PP->new->utf8->canonical;
my $DEFAULT_SECRET;

sub _rand62 { Invoices::Test::Env::random_alnum($_[0]) }

# new_id($prefix): a fresh Stripe-like id (evt_1..., in_1..., cus_...).
sub new_id {
    my ($prefix) = @_;
    return "${prefix}_" . _rand62(14) if $prefix eq 'cus';
    return "${prefix}_1" . _rand62(23);
}

sub new_whsec { return 'whsec_' . _rand62(32) }

# default_secret([$whsec]): the secret deliver() signs with by default.
sub default_secret {
    $DEFAULT_SECRET = $_[0] if @_;
    return $DEFAULT_SECRET // croak "no default webhook secret: default_secret(\$whsec)";
}

# sign($secret, $t, $body) -> lowercase hex HMAC-SHA256 of "$t.$body".
sub sign {
    my ($secret, $t, $body) = @_;
    croak "sign: body has wide characters (encode it first)"
        if $body =~ /[^\x00-\xff]/;
    return hmac_sha256_hex("$t.$body", $secret);
}

# signature_header($body, %opt) -> "t=...,v1=..."
#   secret   (default_secret), or secrets => [...] for one v1 each
#   t        the timestamp (now)
sub signature_header {
    my ($body, %o) = @_;
    my $t = $o{t} // time;
    $t = int $t if $t =~ /^-?\d+(?:\.\d*)?$/;
    my @secrets = $o{secrets} ? @{ $o{secrets} } : ($o{secret} // default_secret());
    return join ',', "t=$t", map { 'v1=' . sign($_, $t, $body) } @secrets;
}

# secret_path($name): PREFIX/conf/$name of this file's server (valid in
# before_start and after).
sub secret_path {
    my ($name) = @_;
    my $p = server_prefix() // croak "secret_path: no server prefix yet";
    return "$p/conf/$name";
}

# write_secret($name_or_path, $whsec, [$mode]): the secret alone in a
# file (mode 0600 unless told); a bare name goes under PREFIX/conf.
sub write_secret {
    my ($name, $secret, $mode) = @_;
    my $path = $name =~ m{/} ? $name : secret_path($name);
    open my $fh, '>', $path or croak "$path: $!";
    print $fh "$secret\n";
    close $fh or croak "$path: $!";
    chmod $mode // 0600, $path or croak "chmod $path: $!";
    return $path;
}

# secret_file($whsec, [$mode]) -> the path of a new file (in a temporary
# directory removed at exit) holding the secret alone: usable in
# server_config before start_server has made the prefix.
my $SECRET_DIR;
sub secret_file {
    my ($secret, $mode) = @_;
    require File::Temp;
    $SECRET_DIR //= File::Temp::tempdir('invoices-whsec-XXXXXX', TMPDIR => 1,
                                        CLEANUP => 1);
    my $path = "$SECRET_DIR/whsec-" . _rand62(8);
    return write_secret($path, $secret, $mode);
}

# webhook_location(%opt) -> the text of a location block for
# server_config.  path (/stripe/webhook), secrets (arrayref of specs,
# required unless omitted on purpose with secrets => []), tolerance,
# extra (more directives).
sub webhook_location {
    my (%o) = @_;
    my $path = $o{path} // '/stripe/webhook';
    my $c = "        location = $path {\n";
    $c .= "            invoices_stripe_webhook;\n";
    $c .= "            invoices_stripe_webhook_secret @{ $o{secrets} };\n"
        if $o{secrets} && @{ $o{secrets} };
    $c .= "            invoices_stripe_webhook_tolerance $o{tolerance};\n"
        if defined $o{tolerance};
    $c .= "            $o{extra}\n" if defined $o{extra};
    $c .= "        }\n";
    return $c;
}

# stripe_invoice(%f) -> a Stripe invoice object (a hashref) shaped like
# Stripe's (API version 2023-10-16).  Fields: id, customer (a string or
# an expanded customer object), status (open), total (3300), currency
# (eur), invoice_pdf (a URL once finalized, null for drafts; pass undef
# for null), created (now - 3600), transitions (a hashref merged into
# status_transitions, which is otherwise derived from the status, each
# transition at created + 60 * step).  Anything else given is set as is
# (delete => [keys] removes keys).
sub stripe_invoice {
    my (%f) = @_;
    my $status = delete $f{status} // 'open';
    my $created = exists $f{created} ? delete $f{created} : int(time) - 3600;
    my $id = delete $f{id} // new_id('in');
    my $total = exists $f{total} ? delete $f{total} : 3300;
    my $customer = exists $f{customer} ? delete $f{customer} : new_id('cus');
    my $currency = delete $f{currency} // 'eur';
    my $num = $created =~ /^\d+$/ ? 0 + "$created" : int time - 3600;
    my $pdf = exists $f{invoice_pdf} ? delete $f{invoice_pdf}
        : $status eq 'draft' ? undef
        : "https://pay.stripe.com/invoice/acct_1FakeStripeAcct00/test_"
          . _rand62(40) . '/pdf?s=ap';
    my %tr = (finalized_at => undef, paid_at => undef, voided_at => undef,
              marked_uncollectible_at => undef);
    $tr{finalized_at} = $num + 60 if $status ne 'draft';
    $tr{paid_at} = $num + 120 if $status eq 'paid';
    $tr{voided_at} = $num + 120 if $status eq 'void';
    $tr{marked_uncollectible_at} = $num + 120 if $status eq 'uncollectible';
    my $more = delete $f{transitions} || {};
    $tr{$_} = $more->{$_} for keys %$more;
    my @delete = @{ delete $f{delete} || [] };

    my $paid = $status eq 'paid';
    my $amt = $total =~ /^-?\d+$/ ? 0 + "$total" : 0;    # a copy: keep $total as given
    my %inv = (
        id => $id, object => 'invoice',
        account_country => 'US', account_name => 'Fake Stripe Test Account',
        amount_due => $amt, amount_paid => $paid ? $amt : 0,
        amount_remaining => $paid ? 0 : $amt,
        attempt_count => $paid ? 1 : 0,
        attempted => $paid ? JSON::PP::true : JSON::PP::false,
        auto_advance => JSON::PP::true,
        billing_reason => 'manual', charge => undef,
        collection_method => 'charge_automatically',
        created => $created, currency => $currency,
        customer => $customer, customer_email => undef,
        customer_name => 'Team', default_payment_method => undef,
        description => undef, due_date => undef,
        hosted_invoice_url => defined $pdf
            ? 'https://invoice.stripe.com/i/acct_1FakeStripeAcct00/test_x?s=ap' : undef,
        invoice_pdf => $pdf,
        lines => { object => 'list', data => [], has_more => JSON::PP::false,
                   total_count => 0, url => "/v1/invoices/$id/lines" },
        livemode => JSON::PP::false, metadata => {},
        number => $status eq 'draft' ? undef : 'ABCD1234-0001',
        paid => $paid ? JSON::PP::true : JSON::PP::false,
        period_end => $num, period_start => $num,
        status => $status, status_transitions => \%tr,
        subtotal => $amt, total => $total,
        total_excluding_tax => $amt,
        webhooks_delivered_at => $num,
        %f,
    );
    delete $inv{$_} for @delete;
    return \%inv;
}

# invoice_event($type, $object, %opt) -> an event (hashref).  Options: id,
# created (now), previous (data.previous_attributes).
sub invoice_event {
    my ($type, $object, %o) = @_;
    return {
        id => $o{id} // new_id('evt'),
        object => 'event',
        api_version => '2023-10-16',
        created => int($o{created} // time),
        data => { object => $object,
                  ($o{previous} ? (previous_attributes => $o{previous}) : ()) },
        livemode => JSON::PP::false,
        pending_webhooks => 1,
        request => { id => undef, idempotency_key => undef },
        type => $type,
    };
}

# event_body($event) -> the bytes Stripe would send (pretty, as Stripe does).
sub event_body {
    my ($ev) = @_;
    return JSON::PP->new->utf8->canonical->pretty->encode($ev);
}

# deliver($body, %opt) -> response of POST $path (default /stripe/webhook)
#   signature   the whole Stripe-Signature value (undef: no header at all)
#   secret, secrets, t   as signature_header (when signature is not given)
#   headers     more [name, value] pairs
sub deliver {
    my ($body, %o) = @_;
    my $path = $o{path} // '/stripe/webhook';
    my @h = (['Content-Type', 'application/json; charset=utf-8'],
             ['User-Agent', 'Stripe/1.0 (+https://stripe.com/docs/webhooks)']);
    my $sig = exists $o{signature} ? $o{signature}
            : signature_header($body, %o);
    push @h, ['Stripe-Signature', $sig] if defined $sig;
    push @h, @{ $o{headers} || [] };
    return request(POST => $path, \@h, $body);
}

# deliver_event($event, %opt): deliver(event_body($event), %opt)
sub deliver_event {
    my ($ev, %o) = @_;
    return deliver(event_body($ev), %o);
}

# start_delivery($body, %opt): like deliver, but returns at once (a
# pending exchange for finish_request).  No Api-Key needed, but
# start_request adds one: harmless for the webhook.
sub start_delivery {
    my ($body, %o) = @_;
    my @h = (['Content-Type', 'application/json; charset=utf-8'],
             ['Stripe-Signature', signature_header($body, %o)]);
    return start_request(POST => $o{path} // '/stripe/webhook', \@h, $body);
}

# result_of($response): the "result" of a 200, or "<status>" otherwise.
sub result_of {
    my ($res) = @_;
    return '<' . ($res->status // 0) . '>' unless ($res->status // 0) == 200;
    my $j = $res->json_or_undef;
    return ref $j eq 'HASH' ? ($j->{result} // '<no result>') : '<not JSON>';
}

my $ROW_SQL = <<'SQL';
SELECT i.id, i.stripe_invoice_id, i.stripe_customer_id, i.team_id,
       i.status, i.amount, i.currency, i.invoice_pdf,
       extract(epoch FROM i.stripe_created_at)::bigint AS created,
       i.updated_at::text AS updated_at
  FROM invoices i
SQL

# invoice_row($stripe_invoice_id) -> hashref of the row (undef: none).
sub invoice_row {
    my ($id) = @_;
    my $rows = sql_json($ROW_SQL . ' WHERE i.stripe_invoice_id = ' . quote($id));
    return $rows->[0];
}

# invoice_rows() -> { stripe_invoice_id => row } of every invoice.
sub invoice_rows {
    my $rows = sql_json($ROW_SQL);
    return { map { $_->{stripe_invoice_id} => $_ } @$rows };
}

# event_row($event_id) -> the webhook_events row (undef: none).
sub event_row {
    my ($id) = @_;
    my $rows = sql_json('SELECT id, type, extract(epoch FROM stripe_created_at)::bigint '
                      . 'AS created FROM webhook_events WHERE id = ' . quote($id));
    return $rows->[0];
}

sub event_count { return sql_value('SELECT count(*) FROM webhook_events') }

# db_state(): one string that changes when any row of webhook_events,
# invoices, invoices_deleted or teams changes (one psql run).
sub db_state {
    return sql_value(<<'SQL');
SELECT concat_ws('|',
  (SELECT count(*) FROM webhook_events),
  (SELECT md5(coalesce(string_agg(e::text, ',' ORDER BY e::text), '')) FROM webhook_events e),
  (SELECT md5(coalesce(string_agg(i::text, ',' ORDER BY i::text), '')) FROM invoices i),
  (SELECT md5(coalesce(string_agg(d::text, ',' ORDER BY d::text), '')) FROM invoices_deleted d),
  (SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM teams t))
SQL
}

# stored($event_id, $stripe_invoice_id) -> (event row or undef, invoice
# row or undef), in one psql run.
sub stored {
    my ($eid, $iid) = @_;
    my $r = sql_json("SELECT (SELECT row_to_json(e) FROM (SELECT id, type, "
        . "extract(epoch FROM stripe_created_at)::bigint AS created FROM webhook_events "
        . "WHERE id = " . quote($eid) . ") e) AS event, "
        . "(SELECT row_to_json(r) FROM ($ROW_SQL WHERE i.stripe_invoice_id = "
        . quote($iid) . ") r) AS invoice");
    return ($r->[0]{event}, $r->[0]{invoice});
}

# api_invoice($id) -> the decoded GET /admin/api/invoices/$id (undef: not 200)
sub api_invoice {
    my ($id) = @_;
    my $res = api_request(GET => "/admin/api/invoices/$id");
    return undef unless $res->status == 200;
    return $res->json_or_undef;
}

# iso_ms($unix) -> "2023-11-06T15:07:28.000Z"
sub iso_ms {
    my ($t) = @_;
    return POSIX::strftime('%Y-%m-%dT%H:%M:%S.000Z', gmtime $t);
}


1;
