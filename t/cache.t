# The Redis list cache when Redis is healthy: MISS then HIT with the
# same bytes and ETag, one entry per (page, limit), 304 from the cache,
# the single GET never cached, the key and its TTL in Redis; every kind
# of write (webhook, create, sync) moves the generation and the next list
# shows the new data, while writes that change nothing do not; two nginx
# instances share the generation; invoices_cache_ttl expires pages; bad
# invoices_redis values fail nginx -t.  Failures of Redis: t/cache_faults.t.

use strict;
use warnings;
use Test::More;
use JSON::PP ();
use Time::HiRes qw(time sleep);
use Invoices::Test;
use Invoices::Redis;

my $redis = start_redis();
my $WHSEC = 'whsec_' . join '', map { ('A'..'Z', 'a'..'z', 0..9)[rand 62] } 1 .. 32;
my $J = JSON::PP->new->utf8->canonical;

start_server(
    workers      => 1,
    stripe       => 1,
    before_start => sub { write_conf_file('whsec', "$WHSEC\n") },
    http_config  => cache_http_config($redis->{port}),
    server_config => webhook_location(),
);
my $PORT = server_port();

sub ids { my ($res) = @_; return [map { $_->{_id} } @{ ($res->json_or_undef // {})->{invoices} || [] }] }

#----------------------------------------------------------------------
# seed: a team linked to a customer of the fake Stripe, 12 old invoices

my $A = linked_customer(payment_method => 'pm_card_visa');
my @seed = map {
    insert_invoice(team_id => $A->{team}{id}, stripe_customer_id => $A->{customer},
                   amount => 100 * $_, status => 'open',
                   stripe_invoice_id => sprintf('in_cacheseed%02d', $_),
                   stripe_created_at => sprintf('2023-01-%02dT10:00:00.000Z', $_))
} 1 .. 12;

ok(redis_alive($redis), 'our redis-server answers');
is(rcmd($redis, 'DBSIZE'), 0, 'Redis starts empty');

#----------------------------------------------------------------------
# MISS, then HIT: the same bytes, the same ETag

my $miss = list('?page=1&limit=5');
list_is($miss, 'MISS', 'first list page=1 limit=5');
my $etag = $miss->header('ETag');
like($etag // '', qr/^"[^"]+"$/, 'the MISS has a strong ETag');
is(scalar @{ ids($miss) }, 5, 'five invoices on the page');

my $hit = list('?page=1&limit=5');
list_is($hit, 'HIT', 'same page again');
is($hit->body, $miss->body, 'HIT body byte-identical to the MISS body');
is($hit->header('ETag'), $etag, 'HIT has the same ETag');
is($hit->header('Content-Type'), $miss->header('Content-Type'), 'same Content-Type');
is($hit->header('Content-Length') // length($hit->body), length $miss->body,
   'Content-Length of the HIT is the body length');

my $hit_default_page = list('?limit=5');
list_is($hit_default_page, 'HIT', 'limit=5 without page is the same entry as page=1');
is($hit_default_page->body, $miss->body, '... same bytes');

my $g0 = cache_gen($redis);
my $key = "invoices:list:$g0:1:5";
is(rcmd($redis, 'EXISTS', $key), 1, "the page is stored under $key");
is(rcmd($redis, 'GET', $key), "$etag\n" . $miss->body,
   'the stored value is "<etag>\n<body>"');
my $ttl = rcmd($redis, 'TTL', $key);
ok($ttl > 0 && $ttl <= 60, "the key has a TTL within invoices_cache_ttl 60s (got $ttl)");

# other pages and limits are other entries
my $p2 = list('?page=2&limit=5');
list_is($p2, 'MISS', 'page=2 limit=5 (first time)');
isnt($p2->body, $miss->body, 'page 2 differs from page 1');
list_is(list('?page=2&limit=5'), 'HIT', 'page=2 limit=5 again');
my $l6 = list('?page=1&limit=6');
list_is($l6, 'MISS', 'page=1 limit=6 is another entry');
is(scalar @{ ids($l6) }, 6, '... with six invoices');
list_is(list('?page=1&limit=6'), 'HIT', 'page=1 limit=6 again');
list_is(list('?page=1&limit=5'), 'HIT', 'page=1 limit=5 is still a HIT');
my $empty = list('?page=9&limit=5');
list_is($empty, 'MISS', 'a page past the end');
my $empty2 = list('?page=9&limit=5');
list_is($empty2, 'HIT', 'a page past the end, again');
is($empty2->body, $empty->body, '... same bytes');
my @keys = sort @{ rcmd($redis, 'KEYS', 'invoices:list:*') };
is_deeply(\@keys, [sort map { "invoices:list:$g0:$_" } qw(1:5 2:5 1:6 9:5)],
          'one key per (page, limit) read');

# 304 from the cache
my $nm = list('?page=1&limit=5', ['If-None-Match', $etag]);
is($nm->status, 304, 'If-None-Match with the ETag: 304') or diag $nm->describe;
is($nm->raw_body, '', '304 has no body');
is($nm->header('X-Cache'), 'HIT', '304 came from the cache');
is($nm->header('ETag'), $etag, '304 carries the ETag');
my $nm2 = list('?page=1&limit=5', ['If-None-Match', '"0000000000000000"']);
is($nm2->status, 200, 'If-None-Match with another ETag: 200');
is($nm2->header('X-Cache'), 'HIT', '... from the cache');
is($nm2->body, $miss->body, '... the whole body');

# HEAD of a cached page
my $head = Invoices::Test::HTTP::request($PORT, HEAD => '/admin/api/invoices?page=1&limit=5',
                                         [['Api-Key', API_KEY]], undef, method => 'HEAD');
is($head->status, 200, 'HEAD of a cached page: 200');
is($head->raw_body, '', 'HEAD: no body');
is($head->header('X-Cache'), 'HIT', 'HEAD: X-Cache HIT');
is($head->header('Content-Length'), length $miss->body, 'HEAD: the GET\'s Content-Length');

# errors are not cached and say nothing of a cache
my $bad = list('?limit=abc');
is($bad->status, 400, 'a bad limit is still 400');
is(scalar @{ rcmd($redis, 'KEYS', 'invoices:list:*') }, 4, 'no key for a 400');

# the single GET is kept only in the worker's own copy, never in Redis
my @one = map { get_on($PORT, "/admin/api/invoices/$seed[0]{id}") } 1, 2;
is_deeply([map { $_->status . ' ' . ($_->header('X-Cache') // '-') } @one],
          ['200 MISS', '200 HIT'], 'single GET: MISS, then HIT from the worker');
is($one[1]->body, $one[0]->body, 'single GET HIT: the same bytes');
is($one[1]->header('ETag'), $one[0]->header('ETag'), 'single GET HIT: the same ETag');
is(scalar @{ rcmd($redis, 'KEYS', 'invoices:list:*') }, 4, 'the single GET stored nothing in Redis');
is(cache_gen($redis), $g0, 'reads do not move the generation');

#----------------------------------------------------------------------
# the cache really serves: a change behind the module's back is not seen

my $all = list('?limit=100');
list_is($all, 'MISS', 'the whole list (limit=100)');
is(scalar @{ ids($all) }, 12, '12 invoices');
sql_do("UPDATE invoices SET amount = 777777 WHERE stripe_invoice_id = 'in_cacheseed01'");
my $stale = list('?limit=100');
list_is($stale, 'HIT', 'after a direct SQL UPDATE');
is(listed_invoice($stale, 'in_cacheseed01')->{amount}, 100,
   'the cached page still shows the old amount (served from Redis, not PostgreSQL)');
is($stale->body, $all->body, '... byte for byte the page before');

#----------------------------------------------------------------------
# webhook writes

sub deliver { return deliver_event($PORT, @_, $WHSEC) }
sub result  { my ($res) = @_; return ($res->json_or_undef // {})->{result} // '<' . $res->status . '>' }

# a new invoice: inserted
my $new_inv = stripe_invoice(customer => $A->{customer}, status => 'open', total => 4242);
my $ev1 = invoice_event('invoice.finalized', $new_inv);
my $g = cache_gen($redis);
my $res = deliver($ev1);
is(result($res), 'inserted', 'webhook: a new invoice is inserted') or diag $res->describe;
is(cache_gen($redis), $g + 1, 'webhook inserted: the generation moved by one');
my $after = list('?limit=100');
list_is($after, 'MISS', 'list after the webhook insert');
is(scalar @{ ids($after) }, 13, '... shows 13 invoices');
ok(listed_invoice($after, $new_inv->{id}), '... including the new one');
is(listed_invoice($after, 'in_cacheseed01')->{amount}, 777777,
   '... and the earlier SQL change (read from PostgreSQL)');
list_is(list('?limit=100'), 'HIT', 'and the list after that is a HIT again');
list_is(list('?page=1&limit=5'), 'MISS', 'other pages miss too (new generation)');

# a duplicate delivery of the same event: nothing changes, no bump
$g = cache_gen($redis);
$res = deliver($ev1);
is(result($res), 'duplicate', 'webhook: the same event again is a duplicate');
is(cache_gen($redis), $g, 'duplicate: invoices:gen unchanged');
list_is(list('?limit=100'), 'HIT', 'list after the duplicate is still a HIT');

# a new event that changes nothing: unchanged, no bump
$res = deliver(invoice_event('invoice.updated', $new_inv));
is(result($res), 'unchanged', 'webhook: an event that changes nothing is unchanged');
is(cache_gen($redis), $g, 'unchanged: invoices:gen unchanged');
list_is(list('?limit=100'), 'HIT', 'list after the unchanged event is still a HIT');

# an event of another kind: ignored, no bump
$res = deliver({ id => new_stripe_id('evt'), object => 'event', type => 'customer.created',
                 created => int time, data => { object => { id => 'cus_x', object => 'customer' } } });
is(result($res), 'ignored', 'webhook: customer.created is ignored');
is(cache_gen($redis), $g, 'ignored: invoices:gen unchanged');

# a forged event: 400, no bump
my $forged = $J->encode(invoice_event('invoice.paid', { %$new_inv, status => 'paid' }));
$res = Invoices::Test::HTTP::request($PORT, POST => '/stripe/webhook',
    [['Content-Type', 'application/json'],
     ['Stripe-Signature', sign_event($forged, 'whsec_wrong')]], $forged);
is($res->status, 400, 'webhook with a wrong signature: 400');
is(cache_gen($redis), $g, 'forged: invoices:gen unchanged');
list_is(list('?limit=100'), 'HIT', 'list after the forged event is still a HIT');

# an update of an existing row: updated, bump
my $one_before = get_on($PORT, '/admin/api/invoices/in_cacheseed03');
$one_before = get_on($PORT, '/admin/api/invoices/in_cacheseed03');
is(($one_before->header('X-Cache') // '-') . ' ' . $one_before->json->{status},
   'HIT open', 'single GET of in_cacheseed03 before the update: HIT, open');
sql_do("UPDATE invoices SET amount = 888888 WHERE stripe_invoice_id = 'in_cacheseed02'");
my $seed3 = stripe_invoice(id => 'in_cacheseed03', customer => $A->{customer},
                           status => 'paid', total => 300,
                           created => 1672740000);    # 2023-01-03T10:00:00Z
$res = deliver(invoice_event('invoice.paid', $seed3));
is(result($res), 'updated', 'webhook: invoice.paid of a seeded open invoice is updated')
    or diag $res->describe;
is(cache_gen($redis), $g + 1, 'updated: the generation moved by one');
$after = list('?limit=100');
list_is($after, 'MISS', 'list after the webhook update');
is(listed_invoice($after, 'in_cacheseed03')->{status}, 'paid', '... shows the new status');
is(listed_invoice($after, 'in_cacheseed02')->{amount}, 888888, '... and the SQL change made before it');
my $one_after = get_on($PORT, '/admin/api/invoices/in_cacheseed03');
is(($one_after->header('X-Cache') // '-') . ' ' . $one_after->json->{status},
   'MISS paid', 'single GET after the webhook update: MISS, paid');

# a draft deleted: deleted, bump
my $draft = stripe_invoice(customer => $A->{customer}, status => 'draft', invoice_pdf => undef);
is(result(deliver(invoice_event('invoice.created', $draft))), 'inserted', 'webhook: a draft inserted');
ok(listed_invoice(list('?limit=100'), $draft->{id}), 'the draft is listed');
list_is(list('?limit=100'), 'HIT', '(cached)');
$g = cache_gen($redis);
is(result(deliver(invoice_event('invoice.deleted', $draft))), 'deleted', 'webhook: the draft deleted');
is(cache_gen($redis), $g + 1, 'deleted: the generation moved by one');
$after = list('?limit=100');
list_is($after, 'MISS', 'list after the delete');
ok(!listed_invoice($after, $draft->{id}), '... no longer shows the draft');

#----------------------------------------------------------------------
# create through POST /admin/api/invoices

list_is(list('?limit=100'), 'HIT', 'before the create: HIT');
sql_do("UPDATE invoices SET amount = 999999 WHERE stripe_invoice_id = 'in_cacheseed04'");
is(listed_invoice(list('?limit=100'), 'in_cacheseed04')->{amount}, 400,
   'a direct SQL change is not seen while cached');
$g = cache_gen($redis);
my $n_before = scalar @{ ids(list('?limit=100')) };
my $create_body = $J->encode({ customer => $A->{customer},
                               items => [{ name => 'cache test', amount => 5151 }] });
my $idem = 'cache-create-' . int(rand 1e9);
my $cr = api_request(POST => '/admin/api/invoices',
                     ['Content-Type' => 'application/json', 'Idempotency-Key' => $idem],
                     $create_body);
is($cr->status, 201, 'create: 201') or diag $cr->describe;
my $created = $cr->json_or_undef // {};
is(cache_gen($redis), $g + 1, 'create: the generation moved by one');
$after = list('?limit=100');
list_is($after, 'MISS', 'list after the create');
is(scalar @{ ids($after) }, $n_before + 1, '... one more invoice');
ok(listed_invoice($after, $created->{id} // 'none'), '... the created one is listed')
    or diag $cr->describe;
is(listed_invoice($after, 'in_cacheseed04')->{amount}, 999999, '... and the SQL change');
list_is(list('?limit=100'), 'HIT', 'then HIT');

# a replay of the same create changes nothing: no bump
$g = cache_gen($redis);
my $replay = api_request(POST => '/admin/api/invoices',
                         ['Content-Type' => 'application/json', 'Idempotency-Key' => $idem],
                         $create_body);
is($replay->status, 201, 'create replay: 201');
is($replay->header('Idempotent-Replayed'), 'true', 'create replay: Idempotent-Replayed');
is(cache_gen($redis), $g, 'create replay: invoices:gen unchanged');
list_is(list('?limit=100'), 'HIT', 'list after the replay: still a HIT');

#----------------------------------------------------------------------
# sync through POST /admin/api/invoices/sync

sql_do("UPDATE invoices SET amount = 555555 WHERE stripe_invoice_id = 'in_cacheseed05'");
is(listed_invoice(list('?limit=100'), 'in_cacheseed05')->{amount}, 500,
   'before the sync: the SQL change is not seen (cached)');
my ($st, $in_fake) = fake_stripe(POST => '/v1/invoices', { customer => $A->{customer} });
is($st, 200, 'an invoice made in the fake Stripe behind our back') or diag explain $in_fake;
$g = cache_gen($redis);
my $sync = api_request(POST => '/admin/api/invoices/sync');
is($sync->status, 200, 'sync: 200') or diag $sync->describe;
is(($sync->json_or_undef // {})->{inserted}, 1, 'sync: inserted 1');
is(cache_gen($redis), $g + 1, 'sync that inserted: the generation moved by one');
$after = list('?limit=100');
list_is($after, 'MISS', 'list after the sync');
ok(listed_invoice($after, $in_fake->{id} // 'none'), '... shows the synced invoice');
is(listed_invoice($after, 'in_cacheseed05')->{amount}, 555555, '... and the SQL change');
list_is(list('?limit=100'), 'HIT', 'then HIT');

$g = cache_gen($redis);
$sync = api_request(POST => '/admin/api/invoices/sync');
is($sync->status, 200, 'sync again: 200');
my $sj = $sync->json_or_undef // {};
is(($sj->{inserted} // -1) + ($sj->{updated} // -1) + ($sj->{deleted} // -1), 0,
   'sync again: nothing inserted, updated or deleted') or diag $sync->describe;
is(cache_gen($redis), $g, 'a sync that changed nothing: invoices:gen unchanged');
list_is(list('?limit=100'), 'HIT', 'list after it: still a HIT');

#----------------------------------------------------------------------
# an action: DELETE of the draft the sync brought, seen by every cached
# filter at once

my $drafts = list('?status=draft&limit=100');
ok(listed_invoice($drafts, $in_fake->{id} // 'none'), 'before the DELETE: listed as a draft');
list_is(list('?status=draft&limit=100'), 'HIT', '... the filtered page cached');
$g = cache_gen($redis);
my $del = api_request(DELETE => '/admin/api/invoices/' . ($in_fake->{id} // 'none'));
is($del->status, 200, 'DELETE of the draft: 200') or diag $del->describe;
is(cache_gen($redis), $g + 1, 'DELETE: the generation moved by one');
$after = list('?status=draft&limit=100');
list_is($after, 'MISS', 'the filtered page after the DELETE');
ok(!listed_invoice($after, $in_fake->{id}), '... no longer lists it');
ok(!listed_invoice(list('?limit=100'), $in_fake->{id}), '... nor does the plain list');

#----------------------------------------------------------------------
# two nginx instances on the same database and Redis (2 workers each
# here, 1 on the main one)

my $B = start_nginx(workers => 2,
                    http_config => cache_http_config($redis->{port}),
                    server_config => webhook_location(),
                    copy_files => ['whsec']);
my $onA = list('?limit=100');
list_is($onA, 'HIT', 'instance A: cached');
my $onB = list_on($B->{port}, '?limit=100');
list_is($onB, 'HIT', 'instance B: the page A stored is a HIT on B');
is($onB->body, $onA->body, '... the same bytes');
is($onB->header('ETag'), $onA->header('ETag'), '... the same ETag');

# a write through A, seen by B on the very next request
my $x = stripe_invoice(customer => $A->{customer}, status => 'open', total => 6161);
is(result(deliver_event($PORT, invoice_event('invoice.finalized', $x), $WHSEC)),
   'inserted', 'a webhook insert through A');
$onB = list_on($B->{port}, '?limit=100');
list_is($onB, 'MISS', 'instance B, the very next list');
ok(listed_invoice($onB, $x->{id}), '... shows the invoice written through A');
# B has two workers: whichever gets the next request, it is a HIT now
list_is(list_on($B->{port}, '?limit=100'), 'HIT', 'instance B again: HIT');
list_is(list('?limit=100'), 'HIT', 'instance A: the page B stored is a HIT');

# a write through B, seen by A on the very next request
my $y = stripe_invoice(customer => $A->{customer}, status => 'open', total => 6262);
is(result(deliver_event($B->{port}, invoice_event('invoice.finalized', $y), $WHSEC)),
   'inserted', 'a webhook insert through B');
$onA = list('?limit=100');
list_is($onA, 'MISS', 'instance A, the very next list');
ok(listed_invoice($onA, $y->{id}), '... shows the invoice written through B');
for my $i (1 .. 4) {    # both of B's workers
    my $r = list_on($B->{port}, '?limit=100');
    ok(listed_invoice($r, $y->{id}), "instance B list #$i shows it too ("
       . ($r->header('X-Cache') // '?') . ')');
}
my ($okB, $stB) = stop_nginx($B);
ok($okB && !$stB, 'instance B quits gracefully, status 0');
my @badB = grep { /\[(?:alert|crit|emerg)\]/ } split /\n/, nginx_log($B);
ok(!@badB, 'instance B: no [alert], [crit] or [emerg]') or diag join "\n", @badB;

#----------------------------------------------------------------------
# invoices_cache_ttl, and no invoices_redis at all

my $C = start_nginx(workers => 1,
                    http_config => cache_http_config($redis->{port}, ttl => '2s'));
my $c1 = list_on($C->{port}, '?page=1&limit=7');
list_is($c1, 'MISS', 'ttl 2s instance: page=1 limit=7');
my $k7 = 'invoices:list:' . cache_gen($redis) . ':1:7';
my $ttl7 = rcmd($redis, 'TTL', $k7);
ok($ttl7 > 0 && $ttl7 <= 2, "the key has a TTL within 2s (got $ttl7)");
# a second later: the worker's copy made from this hit must go with the
# key, not live its own 2s from now
select(undef, undef, undef, 1);
list_is(list_on($C->{port}, '?page=1&limit=7'), 'HIT', 'ttl 2s instance: HIT a second later');
ok(wait_until(sub { !rcmd($redis, 'EXISTS', $k7) }, 4), 'the key expires by itself');
list_is(list_on($C->{port}, '?page=1&limit=7'), 'MISS', 'ttl 2s instance: MISS after expiry');
stop_nginx($C);

my $D = start_nginx(workers => 1);
my $d1 = list_on($D->{port}, '?limit=100');
list_is($d1, 'BYPASS', 'no invoices_redis: BYPASS');
list_is(list_on($D->{port}, '?limit=100'), 'BYPASS', 'no invoices_redis: BYPASS again');
my $a1 = list('?limit=100');
list_is($a1, 'HIT', 'the cached instance: HIT');
is($a1->body, $d1->body, 'the cached body is byte-identical to the uncached one');
is($a1->header('ETag'), $d1->header('ETag'), '... and so is the ETag');
stop_nginx($D);

#----------------------------------------------------------------------
# the worker's own copy in front of Redis (invoices_cache_local): a HIT
# from it sends Redis nothing; without the subscription it is not used

list('?limit=33') for 1, 2;
my $calls = redis_calls($redis, 'evalsha');
my @local = map { list('?limit=33') } 1 .. 20;
is_deeply([map { $_->header('X-Cache') // '-' } @local], [('HIT') x 20],
          'the worker\'s copy: 20 lists, all HIT');
is(redis_calls($redis, 'evalsha'), $calls, '... and not one of them asked Redis');

ok(rcmd($redis, 'CLIENT', 'KILL', 'TYPE', 'pubsub') >= 1, 'the subscription is cut');
sql_do("UPDATE invoices SET amount = 424242 WHERE stripe_invoice_id = 'in_cacheseed01'");
rcmd($redis, 'INCR', 'invoices:gen');    # a write whose message nobody heard
my $unheard = list('?limit=33');
list_is($unheard, 'MISS', 'without the subscription the copy is not used');
is(listed_invoice($unheard, 'in_cacheseed01')->{amount}, 424242, '... the write shows');
ok(wait_until(sub { (rcmd($redis, 'PUBSUB', 'NUMSUB', 'invoices:changed'))->[1] >= 1 }, 5),
   'the worker subscribes again by itself');
# Redis counts the subscriber when it runs SUBSCRIBE; the worker uses its
# copy once it has read the confirmation, a moment later: ask until then
my $again;
ok(wait_until(sub {
       list('?limit=33');
       my $before = redis_calls($redis, 'evalsha');
       $again = list('?limit=33');
       ($again->header('X-Cache') // '') eq 'HIT'
           && redis_calls($redis, 'evalsha') == $before
   }, 5), 'then the copy serves again, without asking Redis');
list_is($again, 'HIT', '... its answer');

# invoices_cache_local off: every HIT is a Redis round trip
my $E = start_nginx(workers => 1,
                    http_config => cache_http_config($redis->{port}, local => 'off'));
list_on($E->{port}, '?limit=33');
$calls = redis_calls($redis, 'evalsha');
my @redis_hits = map { list_on($E->{port}, '?limit=33') } 1 .. 5;
is_deeply([map { $_->header('X-Cache') // '-' } @redis_hits], [('HIT') x 5],
          'invoices_cache_local off: 5 lists, all HIT');
is(redis_calls($redis, 'evalsha'), $calls + 5, '... each one asked Redis');
is(get_on($E->{port}, "/admin/api/invoices/$seed[0]{id}")->header('X-Cache'), 'BYPASS',
   '... and a single GET is not cached');
stop_nginx($E);

#----------------------------------------------------------------------
# bad invoices_redis values fail nginx -t

for my $case (
    ['localhost:6379', 'a host name'],
    ['redis.example.com:6379', 'a DNS name'],
    ['127.0.0.1', 'no port'],
    ['127.0.0.1:', 'an empty port'],
    ['127.0.0.1:0', 'port 0'],
    ['127.0.0.1:65536', 'port 65536'],
    ['127.0.0.1:6379 password=secret', 'a literal password'],
    ['127.0.0.1:6379 password=file:/nonexistent/redis.pw', 'a password file that does not exist'],
    ['127.0.0.1:6379 db=x', 'a db that is not a number'],
    ['127.0.0.1:6379 size=3', 'an unknown parameter'],
    ['garbage', 'garbage'],
) {
    my ($value, $what) = @$case;
    my ($code, $out) = nginx_config_test(http_config => "    invoices_redis $value;");
    isnt($code, 0, "nginx -t fails for $what ($value)");
    like($out, qr/\[emerg\].*invoices_redis/, "... with an [emerg] naming invoices_redis")
        or diag $out;
}
{
    my ($code, $out) = nginx_config_test(
        http_config => "    invoices_redis 127.0.0.1:6379;\n    invoices_redis 127.0.0.1:6380;");
    isnt($code, 0, 'nginx -t fails for invoices_redis given twice');
    like($out, qr/\[emerg\].*invoices_redis/, '... naming it') or diag $out;
}
{
    my ($code, $out) = nginx_config_test(server_config => "        invoices_redis 127.0.0.1:6379;");
    isnt($code, 0, 'nginx -t fails for invoices_redis in a server block (http level only)');
    like($out, qr/\[emerg\].*invoices_redis/, '... naming it') or diag $out;
}
for my $case (['1k', 'too small'], ['lots', 'not a size'], ['-1m', 'negative']) {
    my ($value, $what) = @$case;
    my ($code, $out) = nginx_config_test(http_config =>
        "    invoices_redis 127.0.0.1:6379;\n    invoices_cache_local $value;");
    isnt($code, 0, "nginx -t fails for invoices_cache_local $value ($what)");
    like($out, qr/\[emerg\].*invoices_cache_local/, '... naming it') or diag $out;
}
{
    my ($code, $out) = nginx_config_test(http_config =>
        "    invoices_cache_local off;\n    invoices_cache_local 1m;");
    isnt($code, 0, 'nginx -t fails for invoices_cache_local given twice');
}
for my $value ('off', '64k', '16m') {
    my ($code, $out) = nginx_config_test(http_config =>
        "    invoices_redis 127.0.0.1:6379;\n    invoices_cache_local $value;");
    is($code, 0, "nginx -t accepts invoices_cache_local $value") or diag $out;
}
for my $value ('127.0.0.1:6379', '[::1]:6379', 'unix:/tmp/redis.sock',
               '127.0.0.1:6379 db=3') {
    my ($code, $out) = nginx_config_test(http_config => "    invoices_redis $value;\n"
        . "    invoices_redis_timeout 50ms;\n    invoices_cache_ttl 5m;");
    is($code, 0, "nginx -t accepts invoices_redis $value") or diag $out;
}

done_testing();
