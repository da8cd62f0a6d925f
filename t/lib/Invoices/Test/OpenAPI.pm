package Invoices::Test::OpenAPI;

# docs/openapi.yaml as the oracle of real responses (t/openapi.t).
#
#     my $api = Invoices::Test::OpenAPI->load("$repo/docs/openapi.yaml");
#     my @problems = $api->check(GET => '/admin/api/invoices?limit=2', $res);
#     my @errors = $api->validate($api->schema('Invoice'), $node);
#     my @never = $api->unexercised;      # "GET /admin/api/invoices/{id}", ...
#     @never = $api->unexercised_parameters;  # "GET /admin/api/invoices: q", ...
#     @never = $api->unsent_headers;      # "POST /admin/api/invoices 201: Location"
#
# check() finds the operation of a request (path templates, concrete
# segments before {parameters}, as OpenAPI says; HEAD as the path's GET),
# and says what in the answer the operation does not document: the
# status, a header's value against its schema (a required header
# missing), a 405's Allow against the path's methods, the Content-Type
# among the documented media types, a JSON body against its schema (a
# body where none is documented), a query parameter not documented yet
# not refused, a request body answered 2xx that its schema refuses.  Each
# request that found its operation counts that operation (and, for a 2xx
# or 304, its query parameters) as exercised.
#
# validate() is a small JSON Schema validator for what openapi.yaml uses:
# $ref (local "#/..." only), type (a name or a list; "integer" is a
# "number"; nullable: true of OpenAPI 3.0), const, enum, properties,
# required, additionalProperties (false or a schema), items, minItems,
# maxItems, minLength, maxLength, pattern, minimum, maximum,
# exclusiveMinimum, exclusiveMaximum, oneOf, anyOf, allOf, not, and
# format date-time (loosely: RFC 3339's shape).  It works on the typed
# nodes of Invoices::Test::JSONCheck (decode_typed), so that "3300" and
# 3300 stay different.  A keyword it does not know is an error, not a
# check that silently passes.

use strict;
use warnings;

use Carp qw(croak);
use JSON::PP ();
use YAML::XS ();

use Invoices::Test::JSONCheck qw(typed decode_typed canon);

# keywords that only describe: nothing to check
my %ANNOTATION = map { $_ => 1 } qw(description example examples default
    title deprecated readOnly writeOnly $comment externalDocs xml);

my @METHODS = qw(get put post delete options head patch trace);

# RFC 3339's date-time, its shape only (format: date-time)
my $DATE_TIME = qr/^\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(?:\.\d+)?(?:[Zz]|[-+]\d\d:\d\d)$/;

# load($file) -> the API of that file
sub load {
    my ($class, $file) = @_;
    my $doc = do {
        local $YAML::XS::Boolean = 'JSON::PP';
        YAML::XS::LoadFile($file);
    };
    croak "$file: not an OpenAPI document"
        unless ref $doc eq 'HASH' && $doc->{openapi} && ref $doc->{paths} eq 'HASH';
    my $self = bless { doc => $doc, file => $file, seen => {}, params_seen => {} },
                     $class;
    $self->{ops} = $self->_operations;
    return $self;
}

sub doc { $_[0]{doc} }

# copy() -> a deep copy with nothing exercised: change its doc() to see
# that a response no longer passes (the validator's own test)
sub copy {
    my ($self) = @_;
    require Storable;
    my $c = bless { doc => Storable::dclone($self->{doc}),
                    file => "a copy of $self->{file}", seen => {},
                    params_seen => {} }, ref $self;
    $c->{ops} = $c->_operations;
    return $c;
}

#----------------------------------------------------------------------
# references

# resolve($node) -> the node with every $ref at its top followed (its
# other keys dropped: for Parameter, Response and Header objects)
sub resolve {
    my ($self, $node) = @_;
    my %seen;
    while (ref $node eq 'HASH' && defined $node->{'$ref'}) {
        my $ref = $node->{'$ref'};
        croak "\$ref loop at $ref" if $seen{$ref}++;
        $node = $self->pointer($ref);
    }
    return $node;
}

# pointer('#/components/schemas/Invoice') -> that node (croaks if absent)
sub pointer {
    my ($self, $ref) = @_;
    croak "only local \$refs are supported: $ref" unless $ref =~ m{^#(/.*)?$};
    my $node = $self->{doc};
    for my $seg (grep { length } split m{/}, $1 // '') {
        $seg =~ s/~1/\//g;
        $seg =~ s/~0/~/g;
        if (ref $node eq 'HASH' && exists $node->{$seg}) {
            $node = $node->{$seg};
        } elsif (ref $node eq 'ARRAY' && $seg =~ /^\d+$/ && $seg < @$node) {
            $node = $node->[$seg];
        } else {
            croak "\$ref $ref does not resolve in $self->{file}";
        }
    }
    return $node;
}

# schema($name) -> components.schemas.$name
sub schema {
    my ($self, $name) = @_;
    return $self->pointer("#/components/schemas/$name");
}

#----------------------------------------------------------------------
# operations

sub _operations {
    my ($self) = @_;
    my @ops;
    for my $tpl (sort keys %{ $self->{doc}{paths} }) {
        my $item = $self->resolve($self->{doc}{paths}{$tpl});
        my @segs = split m{/}, $tpl, -1;
        my $re = join '/', map {
            /^\{[^}]+\}$/ ? '([^/]+)' : quotemeta
        } @segs;
        my $literal = grep { !/^\{/ } @segs;
        for my $m (@METHODS) {
            next unless $item->{$m};
            push @ops, { method => uc $m, template => $tpl, op => $item->{$m},
                         re => qr/^$re$/, literal => $literal,
                         name => uc($m) . " $tpl" };
        }
    }
    return \@ops;
}

# operations() -> "METHOD /template" of every documented operation
sub operations { map { $_->{name} } @{ $_[0]{ops} } }

# operation($method, $path) -> the operation (a hashref: method,
# template, op, name) or undef.  $path may carry a query string.  The
# path is matched first (concrete before templated: .../sync is not an
# {id}), then the method on it.
sub operation {
    my ($self, $method, $path) = @_;
    my @ops = $self->_path_operations($path);
    my ($op) = grep { $_->{method} eq uc $method } @ops;
    # "Every GET below also answers HEAD" (the file's info.description)
    ($op) = grep { $_->{method} eq 'GET' } @ops if !$op && uc $method eq 'HEAD';
    return $op;
}

# allowed_methods($path) -> the methods documented for the path, with
# HEAD wherever GET is, sorted: what a 405's Allow must list
sub allowed_methods {
    my ($self, $path) = @_;
    my %m = map { $_->{method} => 1 } $self->_path_operations($path);
    $m{HEAD} = 1 if $m{GET};
    return sort keys %m;
}

# the operations of the template that matches $path best, whatever the
# method: the most concrete segments, then the longest template
sub _path_operations {
    my ($self, $path) = @_;
    my ($p) = _split_path($path);
    my @m = grep { $p =~ $_->{re} } @{ $self->{ops} };
    return () unless @m;
    my ($best) = sort { $b->{literal} <=> $a->{literal}
                        || length $b->{template} <=> length $a->{template} } @m;
    return grep { $_->{template} eq $best->{template} } @m;
}

sub _split_path {
    my ($path) = @_;
    my ($p, $q) = split /\?/, $path, 2;
    return ($p, $q);
}

# exercised() -> { "METHOD /template" => { status => count } }
sub exercised { $_[0]{seen} }

# unexercised() -> the operations no checked request reached
sub unexercised {
    my ($self) = @_;
    return grep { !$self->{seen}{$_} } $self->operations;
}

#----------------------------------------------------------------------
# responses

# check($method, $path, $response, [body => $request_body]) -> problems
# (strings), none when the response is what the contract documents (and a
# JSON request body answered 2xx is one the requestBody schema allows; a
# 405's Allow lists the methods documented for the path).  HEAD is checked
# as the path's GET (without a body), as the file's info says.  A method
# the path does not document is checked against the path's 405 answer
# (the only answer OpenAPI lets a path give to a method it does not have)
# and exercises nothing.
sub check {
    my ($self, $method, $path, $res, %opt) = @_;
    my $status = $res->status;
    my $what = "$method $path -> $status";
    my $op = $self->operation($method, $path);
    my ($responses, $name);
    if ($op) {
        ($responses, $name) = ($op->{op}{responses} || {}, $op->{name});
    } else {
        my @on_path = $self->_path_operations($path);
        return ("$what: no operation in $self->{file} matches $method $path")
            unless @on_path;
        return ("$what: $method is not documented for "
                . "$on_path[0]{template}, so only a 405 may answer it")
            unless $status == 405;
        my ($with) = grep { $_->{op}{responses}{405} } @on_path;
        return ("$what: no operation of $on_path[0]{template} documents 405")
            unless $with;
        $responses = { 405 => $with->{op}{responses}{405} };
        $name = "$method $with->{template}";
    }

    my $doc = $responses->{$status}
           // $responses->{ substr($status, 0, 1) . 'XX' }
           // $responses->{default};
    return ("$what: status $status is not documented for $name (it documents "
            . join(', ', sort keys %$responses) . ')')
        unless $doc;
    $doc = $self->resolve($doc);

    my @p;
    if ($status == 405) {
        my $allow = join ', ', sort split /\s*,\s*/, $res->header('Allow') // '';
        my $want = join ', ', $self->allowed_methods($path);
        push @p, "Allow: $allow, but the path documents $want" if $allow ne $want;
    }
    push @p, $self->_check_query($op, $path, $status) if $op;
    push @p, $self->_check_request_body($op, $opt{body}, $status)
        if $op && defined $opt{body} && $status >= 200 && $status < 300;
    push @p, $self->_check_headers($doc, $res, $op ? $op->{name} : undef, $status);
    push @p, $self->_check_content($doc, $res);
    $self->{seen}{ $op->{name} }{$status}++ if $op;
    return map { "$what: $_" } @p;
}

# A JSON request body the code accepted (a 2xx) must be one the contract
# allows: otherwise the requestBody schema is narrower than the code.
sub _check_request_body {
    my ($self, $op, $body, $status) = @_;
    my $rb = $self->resolve($op->{op}{requestBody} // return ());
    my $schema = ($rb->{content}{'application/json'} // return ())->{schema}
        // return ();
    return () unless length $body;
    my $node = eval { decode_typed($body, 'the request body') };
    return ("answered $status to a request body that is not JSON") unless $node;
    return map { "answered $status to a request body the contract refuses: $_" }
           $self->validate($schema, $node, 'request');
}

# the query parameters of the operation (its own and its path's), by name
sub _query_parameters {
    my ($self, $op) = @_;
    my $item = $self->resolve($self->{doc}{paths}{ $op->{template} });
    my %q;
    for my $p (@{ $item->{parameters} || [] }, @{ $op->{op}{parameters} || [] }) {
        my $r = $self->resolve($p);
        $q{ $r->{name} } = $r if ($r->{in} // '') eq 'query';
    }
    return \%q;
}

# A query parameter the operation does not document must be refused (a
# 400): one the code accepts is a parameter the contract lacks.  Those of
# a 2xx or 304 answer count as exercised (unexercised_parameters).
sub _check_query {
    my ($self, $op, $path, $status) = @_;
    my (undef, $query) = _split_path($path);
    return () unless defined $query && length $query;
    my $known = $self->_query_parameters($op);
    my @p;
    for my $pair (split /&/, $query) {
        my ($name) = split /=/, $pair, 2;
        $name =~ s/%([0-9A-Fa-f]{2})/chr hex $1/ge;
        if (!$known->{$name}) {
            push @p, "query parameter $name is not documented, yet answered $status"
                unless $status == 400;
        } elsif ($status < 300 || $status == 304) {
            $self->{params_seen}{ $op->{name} }{$name}++;
        }
    }
    return @p;
}

# unsent_headers() -> "METHOD /template status: Name" of each header
# documented for a status that was answered, yet never came with it
sub unsent_headers {
    my ($self) = @_;
    my @never;
    my $seen = $self->{headers_seen} || {};
    for my $op (sort keys %$seen) {
        for my $status (sort keys %{ $seen->{$op} }) {
            my $h = $seen->{$op}{$status};
            push @never, map { "$op $status: $_" } grep { !$h->{$_} } sort keys %$h;
        }
    }
    return @never;
}

# unexercised_parameters() -> "METHOD /template: name" of each documented
# query parameter no 2xx or 304 answer was given with
sub unexercised_parameters {
    my ($self) = @_;
    my @never;
    for my $op (@{ $self->{ops} }) {
        my $q = $self->_query_parameters($op);
        push @never, map { "$op->{name}: $_" }
                     grep { !$self->{params_seen}{ $op->{name} }{$_} } sort keys %$q;
    }
    return @never;
}

sub _check_headers {
    my ($self, $doc, $res, $opname, $status) = @_;
    my @p;
    my $headers = $doc->{headers} || {};
    for my $name (sort keys %$headers) {
        my $h = $self->resolve($headers->{$name});
        my @v = $res->header_all($name);
        $self->{headers_seen}{$opname}{$status}{$name} += @v ? 1 : 0 if defined $opname;
        if (!@v) {
            push @p, "header $name is required but absent" if $h->{required};
            next;
        }
        if (@v > 1) {
            push @p, "header $name given " . scalar(@v) . ' times';
            next;
        }
        next unless $h->{schema};
        my $node = _header_node($self->resolve($h->{schema}), $v[0]);
        push @p, map { "header $name: $_" } $self->validate($h->{schema}, $node, $name);
    }
    return @p;
}

# a header's text as the node its schema's type expects
sub _header_node {
    my ($schema, $text) = @_;
    my $type = ref $schema eq 'HASH' ? $schema->{type} // 'string' : 'string';
    my @t = ref $type eq 'ARRAY' ? @$type : ($type);
    if (grep { $_ eq 'integer' || $_ eq 'number' } @t) {
        return { t => 'integer', v => $text } if $text =~ /^-?\d+$/;
        return { t => 'number', v => $text } if $text =~ /^-?\d+(\.\d+)?([eE][-+]?\d+)?$/;
    }
    return { t => 'string', v => $text };
}

sub _media_type {
    my ($ct) = @_;
    return '' unless defined $ct;
    my ($type, @params) = split /\s*;\s*/, lc $ct;
    return ($type // '', join '; ', @params);
}

sub _check_content {
    my ($self, $doc, $res) = @_;
    my $content = $doc->{content};
    my $body = $res->body // '';
    my $head = ($res->{method} // '') eq 'HEAD';
    if (!$content || !%$content) {
        return length $body ? ('a body where the contract documents none: '
                               . substr($body, 0, 100)) : ();
    }
    my $ct = $res->header('Content-Type');
    return ('no Content-Type; documented: ' . join(', ', sort keys %$content))
        unless defined $ct;
    my ($type) = _media_type($ct);
    my ($key) = grep { lc $_ eq lc $ct } keys %$content;
    ($key) = grep { (_media_type($_))[0] eq $type } sort keys %$content
        unless defined $key;
    return ("Content-Type $ct is not documented (documented: "
            . join(', ', sort keys %$content) . ')')
        unless defined $key;
    return () if $head;
    my $schema = $content->{$key}{schema} or return ();
    my $node;
    if ($type eq 'application/json' || $type =~ m{\+json$}) {
        $node = eval { decode_typed($body, 'the body') };
        return ("the body is not JSON: $@") unless $node;
    } else {
        my $text = $body;
        utf8::decode($text);
        $node = { t => 'string', v => $text };
    }
    return $self->validate($schema, $node, '$');
}

#----------------------------------------------------------------------
# the JSON Schema validator

# validate($schema, $node, [$where]) -> errors ("$.invoices.0.amount: ...")
sub validate {
    my ($self, $schema, $node, $where) = @_;
    $where //= '$';
    if (ref $schema ne 'HASH') {
        # a boolean schema: true allows everything, false nothing
        croak "validate: a schema at $where is neither an object nor a boolean"
            unless ref $schema eq 'JSON::PP::Boolean';
        return _is_true($schema) ? () : ("$where: the schema false allows nothing");
    }
    my @e;
    my $t = $node->{t};

    for my $k (sort keys %$schema) {
        next if $ANNOTATION{$k};
        my $s = $schema->{$k};
        if ($k eq '$ref') {
            push @e, $self->validate($self->pointer($s), $node, $where);
        } elsif ($k eq 'type') {
            my @want = ref $s eq 'ARRAY' ? @$s : ($s);
            push @want, 'null' if _is_true($schema->{nullable});
            push @e, "$where: is $t (" . _short($node) . "), not " . join(' or ', @want)
                unless grep { $_ eq $t || ($_ eq 'number' && $t eq 'integer') } @want;
        } elsif ($k eq 'nullable') {
            # with type
        } elsif ($k eq 'const') {
            push @e, "$where: is " . _short($node) . ", not the const " . canon(typed($s))
                unless canon($node) eq canon(typed($s));
        } elsif ($k eq 'enum') {
            my $c = canon($node);
            push @e, "$where: " . _short($node) . " is not one of "
                     . join(', ', map { canon(typed($_)) } @$s)
                unless grep { canon(typed($_)) eq $c } @$s;
        } elsif ($k eq 'properties') {
            next unless $t eq 'object';
            for my $name (sort keys %$s) {
                next unless exists $node->{v}{$name};
                push @e, $self->validate($s->{$name}, $node->{v}{$name}, "$where.$name");
            }
        } elsif ($k eq 'required') {
            next unless $t eq 'object';
            push @e, map { "$where: required property $_ is absent" }
                     grep { !exists $node->{v}{$_} } @$s;
        } elsif ($k eq 'additionalProperties') {
            next unless $t eq 'object';
            my $props = $schema->{properties} || {};
            for my $name (sort keys %{ $node->{v} }) {
                next if exists $props->{$name};
                if (ref $s eq 'HASH') {
                    push @e, $self->validate($s, $node->{v}{$name}, "$where.$name");
                } elsif (!_is_true($s)) {
                    push @e, "$where: property $name is not in the schema "
                             . "(additionalProperties: false)";
                }
            }
        } elsif ($k eq 'items') {
            next unless $t eq 'array';
            my $i = 0;
            push @e, $self->validate($s, $_, "$where." . $i++) for @{ $node->{v} };
        } elsif ($k eq 'minItems' || $k eq 'maxItems') {
            next unless $t eq 'array';
            my $n = @{ $node->{v} };
            push @e, "$where: $n items, $k is $s"
                if $k eq 'minItems' ? $n < $s : $n > $s;
        } elsif ($k eq 'minLength' || $k eq 'maxLength') {
            next unless $t eq 'string';
            my $n = length $node->{v};
            push @e, "$where: $n characters, $k is $s"
                if $k eq 'minLength' ? $n < $s : $n > $s;
        } elsif ($k eq 'pattern') {
            next unless $t eq 'string';
            my $re = eval { qr/$s/ } or croak "pattern $s: $@";
            push @e, "$where: " . _short($node) . " does not match $s"
                unless $node->{v} =~ $re;
        } elsif ($k =~ /^(?:minimum|maximum|exclusiveMinimum|exclusiveMaximum)$/) {
            next unless $t eq 'integer' || $t eq 'number';
            my $v = $node->{v};
            my $bad = $k eq 'minimum' ? $v < $s
                    : $k eq 'maximum' ? $v > $s
                    : $k eq 'exclusiveMinimum' ? $v <= $s
                    : $v >= $s;
            push @e, "$where: $v, $k is $s" if $bad;
        } elsif ($k eq 'format') {
            next unless $t eq 'string' && $s eq 'date-time';
            push @e, "$where: " . _short($node) . " is not a date-time"
                unless $node->{v} =~ $DATE_TIME;
        } elsif ($k eq 'allOf') {
            push @e, $self->validate($_, $node, $where) for @$s;
        } elsif ($k eq 'anyOf' || $k eq 'oneOf') {
            my @why;
            my $ok = 0;
            for my $i (0 .. $#$s) {
                my @sub = $self->validate($s->[$i], $node, $where);
                @sub ? push(@why, "[$i] " . join('; ', @sub)) : $ok++;
            }
            if ($k eq 'anyOf' && !$ok) {
                push @e, "$where: matches none of anyOf: " . join(' | ', @why);
            } elsif ($k eq 'oneOf' && $ok != 1) {
                push @e, $ok ? "$where: matches $ok of oneOf, not exactly one"
                             : "$where: matches none of oneOf: " . join(' | ', @why);
            }
        } elsif ($k eq 'not') {
            push @e, "$where: matches the schema of not"
                unless $self->validate($s, $node, $where);
        } else {
            croak "validate: the keyword $k (at $where) is not supported; "
                . "add it to t/lib/Invoices/Test/OpenAPI.pm";
        }
    }
    return @e;
}

sub _is_true {
    my ($v) = @_;
    return 0 unless defined $v;
    return $v ? 1 : 0;
}

sub _short {
    my ($node) = @_;
    my $s = canon($node);
    return length $s > 80 ? substr($s, 0, 77) . '...' : $s;
}

1;
