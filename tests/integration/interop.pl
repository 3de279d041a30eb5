#!/usr/bin/perl
# Calls the gateway with Perl's RPC::XML::Client over mutual TLS and prints
# one "key=value" line per check, for tests/integration/test_interop.py.
use strict;
use warnings;
use RPC::XML;
use RPC::XML::Client;

my ($url, $ca, $cert, $key, $run_id) = @ARGV;
my $client = RPC::XML::Client->new(
    $url,
    useragent => [ssl_opts => {
        SSL_ca_file => $ca, SSL_cert_file => $cert, SSL_key_file => $key,
        verify_hostname => 1,
    }],
    error_handler => sub { print "transport_error=$_[0]\n"; exit 2 },
    fault_handler => sub { return $_[0] },
);

sub call { my $r = $client->send_request(@_); return $r }

my $r = call('ping');
print "ping=", $r->value, "\n";
$r = call('whoami');
print "principal=", $r->value->{principal}, "\n";
$r = call('list_dags', RPC::XML::struct->new(limit => RPC::XML::int->new(100)));
print "dags=", join(",", sort map { $_->{dag_id} } @{ $r->value->{dags} }), "\n";
$r = call('trigger_dag', RPC::XML::string->new('example_hello'),
    RPC::XML::struct->new(who => RPC::XML::string->new('perl')),
    RPC::XML::struct->new(dag_run_id => RPC::XML::string->new($run_id)));
print "created=", ($r->value->{created} ? 1 : 0), "\n";
$r = call('wait_dag_run', RPC::XML::string->new('example_hello'),
    RPC::XML::string->new($run_id), RPC::XML::int->new(180));
print "state=", $r->value->{state}, "\n";
$r = call('get_dag', RPC::XML::string->new('no_such_dag'));
print "fault=", $r->code, "\n";
$r = call('system.methodSignature', RPC::XML::string->new('wait_dag_run'));
print "signatures=", scalar(@{ $r->value }), "\n";
