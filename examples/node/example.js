// Drive Airflow through txairflowrpc from Node.js with the xmlrpc package.
//
//   npm ci
//   export AIRFLOWRPC_URL=https://localhost:8443/RPC2 AIRFLOWRPC_CA=ca.pem
//   export AIRFLOWRPC_CERT=client.pem AIRFLOWRPC_KEY=client.key   # or AIRFLOWRPC_TOKEN=arpc_...
//   node example.js nightly-2026-11-26
//
// Triggers example_hello with the run id given (safe to retry), waits for the
// run, prints its task log and shows how a fault's code is read.  Prints one
// JSON object per line.
'use strict'
const fs = require('fs')
const xmlrpc = require('xmlrpc')

const DAG = 'example_hello'
const TASK = 'say_hello'
const env = process.env
const runId = process.argv[2] || env.AIRFLOWRPC_RUN_ID

// The options go to https.request as they are: ca, cert and key included.
const options = { url: env.AIRFLOWRPC_URL, ca: fs.readFileSync(env.AIRFLOWRPC_CA), headers: {} }
if (env.AIRFLOWRPC_CERT) {
  options.cert = fs.readFileSync(env.AIRFLOWRPC_CERT)
  options.key = fs.readFileSync(env.AIRFLOWRPC_KEY)
}
if (env.AIRFLOWRPC_TOKEN) options.headers.Authorization = `Bearer ${env.AIRFLOWRPC_TOKEN}`
const client = xmlrpc.createSecureClient(options)

// A fault rejects with an Error carrying faultCode and faultString; an HTTP
// refusal (401, 403, ...) with an Error whose res.statusCode says which.
function call (method, ...params) {
  return new Promise((resolve, reject) => {
    client.methodCall(method, params, (err, value) => (err ? reject(err) : resolve(value)))
  })
}

function show (step, fields) {
  console.log(JSON.stringify({ step, ...fields }))
}

async function main () {
  if (!runId) throw new Error('usage: node example.js DAG_RUN_ID')
  const me = await call('whoami')
  show('whoami', { principal: me.principal, authenticated_by: me.authenticated_by })

  // With a dag_run_id a trigger may be retried: the retry finds the run
  // (created is false) instead of starting a second one.
  for (const step of ['trigger', 'retry']) {
    const run = await call('trigger_dag', DAG, { who: 'node' }, { dag_run_id: runId })
    show(step, { dag_run_id: run.dag_run_id, created: run.created })
  }

  const run = await call('wait_dag_run', DAG, runId, 300)
  show('wait', { dag_run_id: run.dag_run_id, state: run.state, finished: run.finished })
  show('log', { task_id: TASK, log: await call('get_task_log', DAG, runId, TASK) })

  try {
    await call('get_dag', 'no_such_dag')
  } catch (err) {
    if (err.faultCode === undefined) throw err
    show('fault', { method: 'get_dag', code: err.faultCode, message: err.faultString })
  }
}

main().catch((err) => {
  console.error(err.res ? `HTTP ${err.res.statusCode}: ${err.message}` : err)
  process.exit(1)
})
