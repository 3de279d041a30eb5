/*
 * Drive Airflow through txairflowrpc with the C library xmlrpc-c.
 *
 *     export AIRFLOWRPC_URL=https://localhost:8443/RPC2 AIRFLOWRPC_CA=ca.pem
 *     export AIRFLOWRPC_CERT=client.pem AIRFLOWRPC_KEY=client.key
 *     # or AIRFLOWRPC_TOKEN=arpc_... AIRFLOWRPC_PRINCIPAL=ci-bot
 *     ./airflowrpc-example nightly-2026-11-26
 *
 * Build it against Debian's copy (apt-get install libxmlrpc-core-c3-dev):
 *
 *     cc -o airflowrpc-example airflowrpc_example.c $(xmlrpc-c-config client --libs)
 *
 * xmlrpc-c sends no header of the caller's choosing, so a token goes out as
 * basic auth: the principal's name and the token.  It triggers example_hello
 * with the run id given (safe to retry), waits for the run, prints its task
 * log and shows how a fault's code is read.  It prints one JSON object per
 * line (written by xmlrpc-c's own JSON serializer, put on one line).
 */

#include <stdio.h>
#include <stdlib.h>

#include <xmlrpc-c/base.h>
#include <xmlrpc-c/client.h>
#include <xmlrpc-c/json.h>

#define DAG "example_hello"
#define TASK "say_hello"

static const char *
need(const char * const name) {
    const char * const value = getenv(name);
    if (value == NULL || value[0] == '\0') {
        fprintf(stderr, "%s is not set\n", name);
        exit(2);
    }
    return value;
}

/* Stop on any fault or transport error (a refused request is one: 401). */
static void
check(xmlrpc_env * const envP, const char * const what) {
    if (envP->fault_occurred) {
        fprintf(stderr, "%s: %s (%d)\n", what, envP->fault_string, envP->fault_code);
        exit(1);
    }
}

/* Print {"step": STEP, ...FIELDS} as one line of JSON; takes FIELDS. */
static void
show(xmlrpc_env * const envP, const char * const step, xmlrpc_value * const fieldsP) {
    xmlrpc_value * const stepP = xmlrpc_string_new(envP, step);
    xmlrpc_mem_block * const jsonP = XMLRPC_MEMBLOCK_NEW(char, envP, 0);
    size_t i;
    check(envP, "show");
    xmlrpc_struct_set_value(envP, fieldsP, "step", stepP);
    xmlrpc_serialize_json(envP, fieldsP, jsonP);
    check(envP, "show");
    /* The serializer indents over several lines; a line break inside a
       string is escaped, so each one here is layout: make it a space. */
    for (i = 0; i < XMLRPC_MEMBLOCK_SIZE(char, jsonP); ++i) {
        const char c = XMLRPC_MEMBLOCK_CONTENTS(char, jsonP)[i];
        fputc(c == '\n' ? ' ' : c, stdout);
    }
    fputc('\n', stdout);
    fflush(stdout);
    XMLRPC_MEMBLOCK_FREE(char, jsonP);
    xmlrpc_DECREF(stepP);
    xmlrpc_DECREF(fieldsP);
}

/* Call METHOD with PARAMS (an array; taken) and return its result. */
static xmlrpc_value *
call(xmlrpc_env * const envP, xmlrpc_client * const clientP,
     const xmlrpc_server_info * const serverP, const char * const method,
     xmlrpc_value * const paramsP) {
    xmlrpc_value * resultP = NULL;
    check(envP, method);
    xmlrpc_client_call2(envP, clientP, serverP, method, paramsP, &resultP);
    xmlrpc_DECREF(paramsP);
    return resultP;
}

int
main(int const argc, const char ** const argv) {
    xmlrpc_env env;
    xmlrpc_client * clientP;
    xmlrpc_server_info * serverP;
    xmlrpc_value * resultP;
    const char * const runId = argc > 1 ? argv[1] : need("AIRFLOWRPC_RUN_ID");
    const char * const url = need("AIRFLOWRPC_URL");
    const char * const token = getenv("AIRFLOWRPC_TOKEN");
    const char * const certFile = getenv("AIRFLOWRPC_CERT");
    /* Zero members are libcurl's defaults: the peer and its name are checked. */
    struct xmlrpc_curl_xportparms curl = {0};
    struct xmlrpc_clientparms parms = {0};
    const char * const steps[] = {"trigger", "retry"};
    int i;

    xmlrpc_env_init(&env);
    xmlrpc_client_setup_global_const(&env);
    check(&env, "setup");
    /* xmlrpc-c refuses answers over 512 KiB by default; a task log may hold
       up to 16 Mi characters, more once written as XML. */
    xmlrpc_limit_set(XMLRPC_XML_SIZE_LIMIT_ID, 64 * 1024 * 1024);

    curl.cainfo = need("AIRFLOWRPC_CA");
    if (certFile != NULL && certFile[0] != '\0') {
        curl.ssl_cert = certFile;
        curl.sslkey = need("AIRFLOWRPC_KEY");
    }
    curl.timeout = 600 * 1000;  /* ms: longer than the longest wait_dag_run */
    parms.transport = "curl";
    parms.transportparmsP = &curl;
    parms.transportparm_size = XMLRPC_CXPSIZE(timeout);
    xmlrpc_client_create(&env, XMLRPC_CLIENT_NO_FLAGS, "airflowrpc-example", "1.0",
                         &parms, XMLRPC_CPSIZE(transportparm_size), &clientP);
    check(&env, "client");

    serverP = xmlrpc_server_info_new(&env, url);
    if (token != NULL && token[0] != '\0') {
        xmlrpc_server_info_set_user(&env, serverP, need("AIRFLOWRPC_PRINCIPAL"), token);
        xmlrpc_server_info_allow_auth_basic(&env, serverP);
    }
    check(&env, "server");

    {
        const char * principal;
        const char * authenticatedBy;
        resultP = call(&env, clientP, serverP, "whoami", xmlrpc_array_new(&env));
        check(&env, "whoami");
        xmlrpc_decompose_value(&env, resultP, "{s:s,s:s,*}", "principal", &principal,
                               "authenticated_by", &authenticatedBy);
        check(&env, "whoami");
        show(&env, "whoami", xmlrpc_build_value(&env, "{s:s,s:s}", "principal", principal,
                                                "authenticated_by", authenticatedBy));
        free((void *)principal);
        free((void *)authenticatedBy);
        xmlrpc_DECREF(resultP);
    }

    /* With a dag_run_id a trigger may be retried: the retry finds the run
       (created is false) instead of starting a second one. */
    for (i = 0; i < 2; ++i) {
        const char * id;
        xmlrpc_bool created;
        resultP = call(&env, clientP, serverP, "trigger_dag",
                       xmlrpc_build_value(&env, "(s{s:s}{s:s})", DAG, "who", "c",
                                          "dag_run_id", runId));
        check(&env, "trigger_dag");
        xmlrpc_decompose_value(&env, resultP, "{s:s,s:b,*}", "dag_run_id", &id,
                               "created", &created);
        check(&env, "trigger_dag");
        show(&env, steps[i], xmlrpc_build_value(&env, "{s:s,s:b}", "dag_run_id", id,
                                                "created", created));
        free((void *)id);
        xmlrpc_DECREF(resultP);
    }

    {
        const char * id;
        const char * state;
        xmlrpc_bool finished;
        resultP = call(&env, clientP, serverP, "wait_dag_run",
                       xmlrpc_build_value(&env, "(ssi)", DAG, runId, 300));
        check(&env, "wait_dag_run");
        xmlrpc_decompose_value(&env, resultP, "{s:s,s:s,s:b,*}", "dag_run_id", &id,
                               "state", &state, "finished", &finished);
        check(&env, "wait_dag_run");
        show(&env, "wait", xmlrpc_build_value(&env, "{s:s,s:s,s:b}", "dag_run_id", id,
                                              "state", state, "finished", finished));
        free((void *)id);
        free((void *)state);
        xmlrpc_DECREF(resultP);
    }

    {
        const char * log;
        resultP = call(&env, clientP, serverP, "get_task_log",
                       xmlrpc_build_value(&env, "(sss)", DAG, runId, TASK));
        check(&env, "get_task_log");
        xmlrpc_read_string(&env, resultP, &log);
        check(&env, "get_task_log");
        show(&env, "log", xmlrpc_build_value(&env, "{s:s,s:s}", "task_id", TASK, "log", log));
        free((void *)log);
        xmlrpc_DECREF(resultP);
    }

    /* A fault leaves its code and text in the environment. */
    resultP = call(&env, clientP, serverP, "get_dag",
                   xmlrpc_build_value(&env, "(s)", "no_such_dag"));
    if (!env.fault_occurred) {
        fprintf(stderr, "get_dag: expected a fault\n");
        return 1;
    }
    {
        xmlrpc_env out;
        xmlrpc_env_init(&out);
        show(&out, "fault", xmlrpc_build_value(&out, "{s:s,s:i,s:s}", "method", "get_dag",
                                               "code", env.fault_code,
                                               "message", env.fault_string));
        xmlrpc_env_clean(&out);
    }

    xmlrpc_env_clean(&env);
    xmlrpc_server_info_free(serverP);
    xmlrpc_client_destroy(clientP);
    xmlrpc_client_teardown_global_const();
    return 0;
}
