#!/usr/bin/perl
# Drive Airflow through txairflowrpc with Perl's RPC::XML (Debian: librpc-xml-perl,
# liblwp-protocol-https-perl).
#
#   export AIRFLOWRPC_URL=https://localhost:8443/RPC2 AIRFLOWRPC_CA=ca.pem
#   export AIRFLOWRPC_CERT=client.pem AIRFLOWRPC_KEY=client.key   # or AIRFLOWRPC_TOKEN=arpc_...
#   perl airflowrpc_example.pl nightly-2026-11-26
#
# Triggers example_hello with the run id given (safe to retry), waits for the
# run, prints its task log and shows how a fault's code is read.  Prints one
# JSON object per line.
use strict;
use warnings;
use JSON::PP;
use RPC::XML;
use RPC::XML::Client;

my ($DAG, $TASK) = ('example_hello', 'say_hello');
my $run_id = $ARGV[0] // $ENV{AIRFLOWRPC_RUN_ID} // die "usage: $0 DAG_RUN_ID\n";

my %ssl = (SSL_ca_file => $ENV{AIRFLOWRPC_CA}, verify_hostname => 1);
if ($ENV{AIRFLOWRPC_CERT}) {
    @ssl{qw(SSL_cert_file SSL_key_file)} = @ENV{qw(AIRFLOWRPC_CERT AIRFLOWRPC_KEY)};
}
my $client = RPC::XML::Client->new(
    $ENV{AIRFLOWRPC_URL},
    # LWP gives up after 180 s of silence by default; wait_dag_run may be longer.
    useragent => [ssl_opts => \%ssl, timeout => 600],
    error_handler => sub { die "transport error: $_[0]\n" },
    fault_handler => sub { $_[0] },    # hand faults back as RPC::XML::fault objects
);
$client->request->header(Authorization => "Bearer $ENV{AIRFLOWRPC_TOKEN}")
    if $ENV{AIRFLOWRPC_TOKEN};

sub call {
    my $r = $client->send_request(@_);
    die sprintf("fault %d: %s\n", $r->code, $r->string) if $r->is_fault;
    return $r->value;
}
sub show { print JSON::PP->new->canonical->encode({step => shift, @_}), "\n" }
sub bool { $_[0] ? JSON::PP::true : JSON::PP::false }

my $me = call('whoami');
show(whoami => principal => $me->{principal}, authenticated_by => $me->{authenticated_by});

# RPC::XML sends a string that looks like a number as an <int>: say which it is.
my $id = RPC::XML::string->new($run_id);

# With a dag_run_id a trigger may be retried: the retry finds the run
# (created is false) instead of starting a second one.
for my $step (qw(trigger retry)) {
    my $run = call('trigger_dag', $DAG, {who => 'perl'}, {dag_run_id => $id});
    show($step, dag_run_id => $run->{dag_run_id}, created => bool($run->{created}));
}

my $run = call('wait_dag_run', $DAG, $id, 300);
show(wait => dag_run_id => $run->{dag_run_id}, state => $run->{state},
     finished => bool($run->{finished}));
show(log => task_id => $TASK, log => call('get_task_log', $DAG, $id, $TASK));

# A fault's code is a Perl string: add 0 where a number must come out.
my $fault = $client->send_request('get_dag', 'no_such_dag');
show(fault => method => 'get_dag', code => 0 + $fault->code, message => $fault->string)
    if $fault->is_fault;
