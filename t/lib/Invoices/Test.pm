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
#     === a block (see Invoices::Test::Blocks and the sections below)
#
# start_server(stripe => 1) also starts scripts/fake-stripe for the file
# and points nginx at it (see stripe_opts in Invoices::Test::Fake);
# helpers: fake_url, fake_control, fake_config, fake_requests,
# fake_posts, fake_reset, fake_stripe, stripe_secret, linked_customer,
# create_body, create_request, create_invoice, stripe_invoices_of.
# parallel_requests / start_request + finish_request keep several
# requests in flight at once.
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
#
# The code, by concern (each module says what it owns):
#   Invoices::Test::Env       environment, run modes, time_factor,
#                             wait_until, run_cmd, file helpers
#   Invoices::Test::DB        psql, sql*, quote, insert_*, db_invoice, kept_counts_off,
#                             db_fingerprint, the database of the file,
#                             pg_stop / pg_start
#   Invoices::Test::Nginx     config_text, nginx_config_test, prefixes,
#                             start_server / stop_server, the error log,
#                             worker processes, the final checks and END
#   Invoices::Test::Fake      the Stripe directives and the fake Stripe
#   Invoices::Test::Requests  request helpers, json_check, run_blocks
#   (and below those: Invoices::Test::HTTP, ::Blocks, ::JSONCheck)
#   Invoices::Test::OpenAPI   answers checked against docs/openapi.yaml
#                             (t/openapi.t uses it directly)
# This module only holds the state they share and exports their helpers:
# tests use Invoices::Test alone.

use strict;
use warnings;

use Exporter 'import';

# The state the modules above share (each aliases these hashes); other
# modules and tests may read them as %Invoices::Test::S and
# %Invoices::Test::VARS.
our %S;          # the state of this file's server
our %VARS;       # {{name}} substitutions in blocks (block_vars)

use Invoices::Test::Env qw(:all);
use Invoices::Test::DB qw(:all);
use Invoices::Test::Fake qw(:all);
use Invoices::Test::Nginx qw(:all);
use Invoices::Test::Requests qw(:all);

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
    db_invoice kept_counts_off fake_posts create_request listed_invoice
    worker_pids worker_processes wait_workers
);

1;
