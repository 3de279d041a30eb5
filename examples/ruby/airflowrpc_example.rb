#!/usr/bin/env ruby
# Drive Airflow through txairflowrpc with Ruby's xmlrpc gem (Debian: ruby-xmlrpc).
#
#   export AIRFLOWRPC_URL=https://localhost:8443/RPC2 AIRFLOWRPC_CA=ca.pem
#   export AIRFLOWRPC_CERT=client.pem AIRFLOWRPC_KEY=client.key   # or AIRFLOWRPC_TOKEN=arpc_...
#   ruby airflowrpc_example.rb nightly-2026-11-26
#
# Triggers example_hello with the run id given (safe to retry), waits for the
# run, prints its task log and shows how a fault's code is read.  Prints one
# JSON object per line.
require "json"
require "openssl"
require "xmlrpc/client"

DAG = "example_hello"
TASK = "say_hello"
run_id = ARGV[0] || ENV.fetch("AIRFLOWRPC_RUN_ID")

# The third argument is the read timeout: its default of 30 s would cut
# wait_dag_run short.
client = XMLRPC::Client.new2(ENV.fetch("AIRFLOWRPC_URL"), nil, 600)
# TLS settings go on the Net::HTTP object the client exposes.
client.http.ca_file = ENV.fetch("AIRFLOWRPC_CA")
client.http.verify_mode = OpenSSL::SSL::VERIFY_PEER
if ENV["AIRFLOWRPC_CERT"]
  client.http.cert = OpenSSL::X509::Certificate.new(File.read(ENV["AIRFLOWRPC_CERT"]))
  client.http.key = OpenSSL::PKey.read(File.read(ENV.fetch("AIRFLOWRPC_KEY")))
end
if ENV["AIRFLOWRPC_TOKEN"]
  client.http_header_extra = { "Authorization" => "Bearer #{ENV["AIRFLOWRPC_TOKEN"]}" }
end

def show(step, fields)
  puts JSON.generate({ step: step }.merge(fields))
  $stdout.flush
end

me = client.call("whoami")
show("whoami", principal: me["principal"], authenticated_by: me["authenticated_by"])

# With a dag_run_id a trigger may be retried: the retry finds the run
# (created is false) instead of starting a second one.
%w[trigger retry].each do |step|
  run = client.call("trigger_dag", DAG, { "who" => "ruby" }, { "dag_run_id" => run_id })
  show(step, dag_run_id: run["dag_run_id"], created: run["created"])
end

run = client.call("wait_dag_run", DAG, run_id, 300)
show("wait", dag_run_id: run["dag_run_id"], state: run["state"], finished: run["finished"])
show("log", task_id: TASK, log: client.call("get_task_log", DAG, run_id, TASK))

begin
  client.call("get_dag", "no_such_dag")
rescue XMLRPC::FaultException => e
  show("fault", method: "get_dag", code: e.faultCode, message: e.faultString)
end
