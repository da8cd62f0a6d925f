package Invoices::Test::Blocks;

# The data-block parser (Test::Nginx's format, our own small code).
#
#     === title of the block
#     --- name: inline value
#     --- name
#     a value of
#     several lines
#     --- name eval
#     "perl code whose result is the value\r\n"
#
# Text before the first "===" is ignored.  A multi-line value ends at the
# next "--- " or "=== " line; its trailing blank lines are dropped and its
# lines are joined with "\n" (no final newline).  Modifiers after the
# name: "eval" (the value is Perl code, run in package main).  Section
# names are checked against a list, so a typo is an error, not a check
# that silently checks nothing.

use strict;
use warnings;
use Carp qw(croak);
use Exporter 'import';

our @EXPORT_OK = qw(parse_blocks);

our %KNOWN = map { $_ => 1 } qw(
    request request_body raw_request more_headers no_default_headers
    error_code response_headers response_headers_like
    response_body response_body_like response_body_unlike json_path
    error_log no_error_log setup setup_sql db_unchanged timeout
    response_time_max stripe_requests skip todo ONLY
);

sub parse_blocks {
    my ($text, %opt) = @_;
    my $file = $opt{file} // 'DATA';
    my $lineno = $opt{first_line} // 1;
    my (@blocks, $block, $section);

    my $finish_section = sub {
        return unless $section;
        if (!$section->{inline}) {
            my @l = @{ $section->{lines} };
            pop @l while @l && $l[-1] =~ /^\s*$/;
            $section->{value} = join "\n", @l;
        }
        if ($section->{mods}{eval}) {
            my $code = $section->{value};
            my $v = eval "package main; no strict 'vars'; $code";
            croak "$file line $section->{line}: eval of --- $section->{name} failed: $@"
                if $@;
            $section->{value} = $v;
        }
        delete $section->{lines};
        $block->{sections}{ $section->{name} } = $section;
        push @{ $block->{order} }, $section->{name};
        undef $section;
    };

    for my $line (split /\n/, $text, -1) {
        if ($line =~ /^===\s*(.*?)\s*$/) {
            $finish_section->();
            $block = { name => $1, line => $lineno, sections => {}, order => [] };
            croak "$file line $lineno: block without a title" unless length $1;
            push @blocks, $block;
        } elsif ($line =~ /^---\s+(\w+)((?:\s+\w+)*)\s*(?::\s?(.*))?$/ && $block) {
            $finish_section->();
            my ($name, $mods, $inline) = ($1, $2, $3);
            croak "$file line $lineno: unknown section '--- $name'"
                unless $KNOWN{$name} || ($opt{known} && $opt{known}{$name});
            croak "$file line $lineno: section '--- $name' given twice in one block"
                if exists $block->{sections}{$name};
            my %mods = map { $_ => 1 } grep { length } split /\s+/, $mods // '';
            for (keys %mods) {
                croak "$file line $lineno: unknown modifier '$_'" unless $_ eq 'eval';
            }
            $section = { name => $name, mods => \%mods, line => $lineno, lines => [] };
            if (defined $inline) {
                $inline =~ s/\s+$//;
                $section->{value} = $inline;
                $section->{inline} = 1;
            }
        } elsif ($section && !$section->{inline}) {
            push @{ $section->{lines} }, $line;
        } elsif ($block && $line =~ /\S/ && $line !~ /^\s*#/) {
            croak "$file line $lineno: text outside a section: '$line'";
        }
        $lineno++;
    }
    $finish_section->();
    return @blocks;
}

1;
