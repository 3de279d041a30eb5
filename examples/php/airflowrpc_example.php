<?php
// Drive Airflow through txairflowrpc with PHP's xmlrpc extension (xmlrpc-epi).
//
//   export AIRFLOWRPC_URL=https://localhost:8443/RPC2 AIRFLOWRPC_CA=ca.pem
//   export AIRFLOWRPC_CERT=client.pem AIRFLOWRPC_KEY=client.key   # or AIRFLOWRPC_TOKEN=arpc_...
//   php airflowrpc_example.php nightly-2026-11-26
//
// (apt-get install php-cli php-xmlrpc.) It triggers example_hello with the
// run id given (safe to retry), waits for the run, prints its task log and
// shows how a fault's code is read. It prints one JSON object per line.

final class Fault extends Exception {}

/** Call METHOD with PARAMS; its result, or a Fault. */
function rpc(string $method, array $params) {
    // UTF-8 and markup escaping: without them non-ASCII text is stored double-encoded.
    $request = xmlrpc_encode_request($method, $params,
        ["encoding" => "UTF-8", "escaping" => "markup"]);
    $headers = ["Content-Type: text/xml"];
    if (getenv("AIRFLOWRPC_TOKEN")) {
        $headers[] = "Authorization: Bearer " . getenv("AIRFLOWRPC_TOKEN");
    }
    $ssl = ["cafile" => getenv("AIRFLOWRPC_CA"), "verify_peer" => true];
    if (getenv("AIRFLOWRPC_CERT")) {
        $ssl["local_cert"] = getenv("AIRFLOWRPC_CERT");
        $ssl["local_pk"] = getenv("AIRFLOWRPC_KEY");
    }
    $context = stream_context_create([
        // Longer than the longest wait_dag_run; answers other than 200 are read too.
        "http" => ["method" => "POST", "header" => implode("\r\n", $headers),
                   "content" => $request, "timeout" => 600, "ignore_errors" => true],
        "ssl" => $ssl,
    ]);
    $body = @file_get_contents(getenv("AIRFLOWRPC_URL"), false, $context);
    if ($body === false) {
        throw new RuntimeException("$method: no answer from the gateway");
    }
    $status = $http_response_header[0] ?? "";
    if (!preg_match('#^HTTP/\S+ 200 #', $status)) {
        throw new RuntimeException("$method: $status");   // e.g. 401: not let in
    }
    $result = xmlrpc_decode($body, "UTF-8");
    if (is_array($result) && xmlrpc_is_fault($result)) {
        throw new Fault($result["faultString"], $result["faultCode"]);
    }
    return $result;
}

function show(string $step, array $fields): void {
    echo json_encode(["step" => $step] + $fields, JSON_UNESCAPED_SLASHES), "\n";
}

$runId = $argv[1] ?? getenv("AIRFLOWRPC_RUN_ID");
if (!$runId) {
    fwrite(STDERR, "usage: php airflowrpc_example.php DAG_RUN_ID\n");
    exit(2);
}
$dag = "example_hello";
$task = "say_hello";

$me = rpc("whoami", []);
show("whoami", ["principal" => $me["principal"], "authenticated_by" => $me["authenticated_by"]]);

// With a dag_run_id a trigger may be retried: the retry finds the run
// (created is false) instead of starting a second one.
foreach (["trigger", "retry"] as $step) {
    $run = rpc("trigger_dag", [$dag, ["who" => "php"], ["dag_run_id" => $runId]]);
    show($step, ["dag_run_id" => $run["dag_run_id"], "created" => $run["created"]]);
}

$run = rpc("wait_dag_run", [$dag, $runId, 300]);
show("wait", ["dag_run_id" => $run["dag_run_id"], "state" => $run["state"],
              "finished" => $run["finished"]]);
show("log", ["task_id" => $task, "log" => rpc("get_task_log", [$dag, $runId, $task])]);

try {
    rpc("get_dag", ["no_such_dag"]);
    fwrite(STDERR, "get_dag: expected a fault\n");
    exit(1);
} catch (Fault $fault) {
    show("fault", ["method" => "get_dag", "code" => $fault->getCode(),
                   "message" => $fault->getMessage()]);
}
