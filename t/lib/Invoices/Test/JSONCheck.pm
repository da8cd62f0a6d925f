package Invoices::Test::JSONCheck;

# Typed JSON checks.  A decoded document is turned at once into a typed
# tree (so that "3300" and 3300 stay different however Perl treats the
# scalars later), and checks are written one a line:
#
#     PATH = JSON          equal, types included ({"a":1} != {"a":"1"})
#     PATH != JSON
#     PATH ~ REGEX         a string or number whose text matches
#     PATH !~ REGEX
#     PATH : TYPE[|TYPE]   string integer number boolean null object array
#     PATH exists
#     PATH absent
#
# PATH is "$" (the document), or keys and array indexes joined with dots,
# optionally after "$.": error.param, invoices.0.user._id.  A last
# segment "#" is the length of an array (or the number of keys of an
# object, or the length of a string); "@keys" is the sorted key list.
# Blank lines and lines starting with "#" are ignored.

use strict;
use warnings;

use JSON::PP ();
use Carp qw(croak);
use Exporter 'import';

our @EXPORT_OK = qw(typed decode_typed canon parse_check_lines run_check
                    json_type plain);

my $ENC = JSON::PP->new->allow_nonref->canonical;

# typed($perl_value) -> node.  Call it on freshly decoded data.
sub typed {
    my ($v) = @_;
    if (!defined $v) { return { t => 'null' } }
    my $r = ref $v;
    if ($r eq 'HASH') {
        return { t => 'object', v => { map { $_ => typed($v->{$_}) } keys %$v } };
    }
    if ($r eq 'ARRAY') {
        return { t => 'array', v => [ map { typed($_) } @$v ] };
    }
    if ($r eq 'JSON::PP::Boolean') {
        return { t => 'boolean', v => ($v ? 1 : 0) };
    }
    croak "typed: unexpected reference $r" if $r;
    # JSON::PP decides number or string from the scalar's flags; ask it
    # before anything stringifies the value.
    my $text = $ENC->encode($v);
    if ($text =~ /^"/) {
        return { t => 'string', v => $v };
    }
    return { t => ($text =~ /^-?\d+$/ ? 'integer' : 'number'), v => $text };
}

sub decode_typed {
    my ($text, $what) = @_;
    my $v = eval { JSON::PP->new->utf8->allow_nonref->decode($text) };
    croak(($what // 'JSON') . " is not valid JSON: $@") if $@;
    return typed($v);
}

# The type name of a node, as used by ": TYPE" ("integer" is also a
# "number").
sub json_type { $_[0]{t} }

# canon(node): a canonical JSON text, for equality.
sub canon {
    my ($n) = @_;
    my $t = $n->{t};
    return 'null' if $t eq 'null';
    return $n->{v} ? 'true' : 'false' if $t eq 'boolean';
    return $ENC->encode("$n->{v}") if $t eq 'string';
    return $n->{v} if $t eq 'integer';
    return sprintf('%.17g', $n->{v}) if $t eq 'number';
    return '[' . join(',', map { canon($_) } @{ $n->{v} }) . ']' if $t eq 'array';
    return '{' . join(',', map { $ENC->encode("$_") . ':' . canon($n->{v}{$_}) }
                           sort keys %{ $n->{v} }) . '}';
}

# plain(node): back to Perl data (strings and numbers as plain scalars).
sub plain {
    my ($n) = @_;
    my $t = $n->{t};
    return undef if $t eq 'null';
    return [ map { plain($_) } @{ $n->{v} } ] if $t eq 'array';
    return { map { $_ => plain($n->{v}{$_}) } keys %{ $n->{v} } } if $t eq 'object';
    return $n->{v};
}

my %TYPES = map { $_ => 1 } qw(string integer number boolean null object array);

# parse_check_lines($text) -> list of checks; dies on a malformed line,
# so a typo in a test never turns into a check that checks nothing.
sub parse_check_lines {
    my ($text) = @_;
    my @checks;
    for my $line (split /\n/, $text) {
        next if $line =~ /^\s*(?:#.*)?$/;
        $line =~ s/^\s+|\s+$//g;
        my ($path, $op, $arg);
        if ($line =~ /^(\S+)\s+(exists|absent)$/) {
            ($path, $op) = ($1, $2);
        } elsif ($line =~ /^(\S+)\s+(=|!=|~|!~|:)\s*(.*)$/) {
            ($path, $op, $arg) = ($1, $2, $3);
        } else {
            croak "json check: cannot parse '$line'";
        }
        my $c = { line => $line, path => $path, op => $op,
                  segs => _segments($path) };
        if ($op eq '=' || $op eq '!=') {
            $c->{want} = decode_typed(_utf8($arg), "expected value in '$line'");
        } elsif ($op eq '~' || $op eq '!~') {
            $c->{re} = eval { qr/$arg/ } or croak "json check: bad regex in '$line': $@";
        } elsif ($op eq ':') {
            my @t = split /\|/, $arg;
            $TYPES{$_} or croak "json check: unknown type '$_' in '$line'" for @t;
            $c->{types} = \@t;
        }
        push @checks, $c;
    }
    return @checks;
}

sub _utf8 {
    my ($s) = @_;
    utf8::encode($s) if utf8::is_utf8($s);
    return $s;
}

sub _segments {
    my ($path) = @_;
    return [] if $path eq '$';
    $path =~ s/^\$\.//;
    return [ split /\./, $path, -1 ];
}

# lookup(node, segs) -> (node) or () when absent; dies never.
sub _lookup {
    my ($n, $segs) = @_;
    for my $i (0 .. $#$segs) {
        my $s = $segs->[$i];
        if ($i == $#$segs && $s eq '#') {
            my $len = $n->{t} eq 'array'  ? scalar @{ $n->{v} }
                    : $n->{t} eq 'object' ? scalar keys %{ $n->{v} }
                    : $n->{t} eq 'string' ? length $n->{v}
                    : return ();
            return { t => 'integer', v => "$len" };
        }
        if ($i == $#$segs && $s eq '@keys') {
            return () unless $n->{t} eq 'object';
            return { t => 'array',
                     v => [ map { { t => 'string', v => $_ } } sort keys %{ $n->{v} } ] };
        }
        if ($n->{t} eq 'object') {
            return () unless exists $n->{v}{$s};
            $n = $n->{v}{$s};
        } elsif ($n->{t} eq 'array') {
            return () unless $s =~ /^\d+$/ && $s < @{ $n->{v} };
            $n = $n->{v}[$s];
        } else {
            return ();
        }
    }
    return $n;
}

# run_check($doc_node, $check) -> (ok, diagnostic)
sub run_check {
    my ($doc, $c) = @_;
    my @found = _lookup($doc, $c->{segs});
    my $op = $c->{op};

    if ($op eq 'absent') {
        return (!@found, @found ? "present: " . canon($found[0]) : '');
    }
    return (0, "$c->{path} is absent") unless @found;
    my $n = $found[0];

    if ($op eq 'exists') {
        return (1, '');
    }
    if ($op eq '=') {
        my ($got, $want) = (canon($n), canon($c->{want}));
        return ($got eq $want, "got $got\nwant $want");
    }
    if ($op eq '!=') {
        my $got = canon($n);
        return ($got ne canon($c->{want}), "got $got");
    }
    if ($op eq '~' || $op eq '!~') {
        return (0, "$c->{path} is $n->{t}, not a string or number: " . canon($n))
            unless $n->{t} =~ /^(?:string|integer|number)$/;
        my $m = $n->{v} =~ $c->{re} ? 1 : 0;
        $m = !$m if $op eq '!~';
        return ($m, "value " . canon($n));
    }
    if ($op eq ':') {
        my $t = $n->{t};
        my $ok = grep { $_ eq $t || ($_ eq 'number' && $t eq 'integer') }
                 @{ $c->{types} };
        return ($ok ? 1 : 0, "type is $t: " . canon($n));
    }
    return (0, "unknown op $op");
}

1;
