/*
 * Drive Airflow through txairflowrpc with Java and aXMLRPC.
 *
 *   export AIRFLOWRPC_URL=https://localhost:8443/RPC2 AIRFLOWRPC_CA=ca.pem
 *   # a client certificate: Java reads its key from a PKCS#12 file, not a PEM one
 *   openssl pkcs12 -export -in client.pem -inkey client.key -out client.p12 -passout pass:changeit
 *   export AIRFLOWRPC_KEYSTORE=client.p12 AIRFLOWRPC_KEYSTORE_PASSWORD=changeit
 *   # or a token: export AIRFLOWRPC_TOKEN=arpc_...
 *   java -cp /usr/share/java/axmlrpc.jar AirflowRpcExample.java nightly-2026-11-26
 *
 * (apt-get install libaxmlrpc-java; Java 11 or later runs the source file as
 * it is.)  It triggers example_hello with the run id given (safe to retry),
 * waits for the run, prints its task log and shows how a fault's code is
 * read.  It prints one JSON object per line.
 */

import de.timroes.axmlrpc.XMLRPCClient;
import de.timroes.axmlrpc.XMLRPCServerException;

import java.io.FileInputStream;
import java.io.InputStream;
import java.net.URL;
import java.security.KeyStore;
import java.security.cert.Certificate;
import java.security.cert.CertificateFactory;
import java.util.LinkedHashMap;
import java.util.Map;
import javax.net.ssl.KeyManagerFactory;
import javax.net.ssl.TrustManagerFactory;

public class AirflowRpcExample {
    static final String DAG = "example_hello", TASK = "say_hello";

    static String env(String name) {
        String value = System.getenv(name);
        return value == null || value.isEmpty() ? null : value;
    }

    static XMLRPCClient connect() throws Exception {
        // aXMLRPC's writer uses the platform's default charset (ASCII in a C
        // locale before Java 18): start the JVM with -Dfile.encoding=UTF-8 to
        // send text beyond ASCII.  Wait up to 10 minutes: longer than the
        // longest wait_dag_run.
        XMLRPCClient client = new XMLRPCClient(new URL(env("AIRFLOWRPC_URL")), "airflowrpc-example",
                XMLRPCClient.FLAGS_STRICT | XMLRPCClient.FLAGS_NIL);
        client.setTimeout(600);

        // Trust only the gateway's CA (a PEM file).
        KeyStore roots = KeyStore.getInstance(KeyStore.getDefaultType());
        roots.load(null, null);
        try (InputStream in = new FileInputStream(env("AIRFLOWRPC_CA"))) {
            int i = 0;
            for (Certificate ca : CertificateFactory.getInstance("X.509").generateCertificates(in)) {
                roots.setCertificateEntry("ca" + i++, ca);
            }
        }
        TrustManagerFactory trust = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        trust.init(roots);
        client.installCustomTrustManagers(trust.getTrustManagers());

        String keystore = env("AIRFLOWRPC_KEYSTORE");
        if (keystore != null) {
            char[] password = env("AIRFLOWRPC_KEYSTORE_PASSWORD").toCharArray();
            KeyStore keys = KeyStore.getInstance("PKCS12");
            try (InputStream in = new FileInputStream(keystore)) {
                keys.load(in, password);
            }
            KeyManagerFactory kmf = KeyManagerFactory.getInstance(KeyManagerFactory.getDefaultAlgorithm());
            kmf.init(keys, password);
            client.installCustomKeyManagers(kmf.getKeyManagers());
        }
        String token = env("AIRFLOWRPC_TOKEN");
        if (token != null) {
            client.setCustomHttpHeader("Authorization", "Bearer " + token);
        }
        return client;
    }

    /** Print {"step": STEP, FIELDS...} as one line of JSON. */
    static void show(String step, Object... fields) {
        StringBuilder out = new StringBuilder("{\"step\": ").append(quote(step));
        for (int i = 0; i < fields.length; i += 2) {
            Object value = fields[i + 1];
            out.append(", ").append(quote((String) fields[i])).append(": ")
               .append(value instanceof String ? quote((String) value) : String.valueOf(value));
        }
        System.out.println(out.append('}'));
    }

    static String quote(String text) {
        StringBuilder out = new StringBuilder("\"");
        for (char c : text.toCharArray()) {
            if (c == '"' || c == '\\') out.append('\\').append(c);
            else if (c < 0x20) out.append(String.format("\\u%04x", (int) c));
            else out.append(c);
        }
        return out.append('"').toString();
    }

    @SuppressWarnings("unchecked")
    static Map<String, Object> struct(Object value) {
        return (Map<String, Object>) value;
    }

    public static void main(String[] args) throws Exception {
        String runId = args.length > 0 ? args[0] : env("AIRFLOWRPC_RUN_ID");
        if (runId == null) {
            System.err.println("usage: AirflowRpcExample DAG_RUN_ID");
            System.exit(2);
        }
        XMLRPCClient rpc = connect();

        Map<String, Object> me = struct(rpc.call("whoami"));
        show("whoami", "principal", me.get("principal"), "authenticated_by", me.get("authenticated_by"));

        // With a dag_run_id a trigger may be retried: the retry finds the run
        // (created is false) instead of starting a second one.
        Map<String, Object> conf = new LinkedHashMap<>(Map.of("who", "java"));
        Map<String, Object> options = new LinkedHashMap<>(Map.of("dag_run_id", runId));
        for (String step : new String[] {"trigger", "retry"}) {
            Map<String, Object> run = struct(rpc.call("trigger_dag", DAG, conf, options));
            show(step, "dag_run_id", run.get("dag_run_id"), "created", run.get("created"));
        }

        Map<String, Object> run = struct(rpc.call("wait_dag_run", DAG, runId, 300));
        show("wait", "dag_run_id", run.get("dag_run_id"), "state", run.get("state"),
             "finished", run.get("finished"));
        show("log", "task_id", TASK, "log", rpc.call("get_task_log", DAG, runId, TASK));

        try {
            rpc.call("get_dag", "no_such_dag");
            System.err.println("get_dag: expected a fault");
            System.exit(1);
        } catch (XMLRPCServerException fault) {
            show("fault", "method", "get_dag", "code", fault.getErrorNr(), "message", fault.getMessage());
        }
    }
}
