// Command airflowrpc-example drives Airflow through txairflowrpc with
// github.com/kolo/xmlrpc.
//
//	export AIRFLOWRPC_URL=https://localhost:8443/RPC2 AIRFLOWRPC_CA=ca.pem
//	export AIRFLOWRPC_CERT=client.pem AIRFLOWRPC_KEY=client.key   # or AIRFLOWRPC_TOKEN=arpc_...
//	./airflowrpc-example nightly-2026-11-26
//
// Build it offline against Debian's copy of the library
// (apt-get install golang-go golang-github-kolo-xmlrpc-dev):
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o airflowrpc-example main.go
//
// or, with modules: go mod init example && go get github.com/kolo/xmlrpc && go build.
//
// It triggers example_hello with the run id given (safe to retry), waits for
// the run, prints its task log and shows how a fault's code is read.  It
// prints one JSON object per line.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net/http"
	"net/rpc"
	"os"

	"github.com/kolo/xmlrpc"
)

const dagID, taskID = "example_hello", "say_hello"

// Run holds the members of a run struct that this program reads; kolo
// ignores the others.
type Run struct {
	DagRunID string `xmlrpc:"dag_run_id"`
	State    string `xmlrpc:"state"`
	Created  bool   `xmlrpc:"created"`
	Finished bool   `xmlrpc:"finished"`
}

// bearer adds the token to every request: kolo's client has no header option.
type bearer struct {
	token string
	next  http.RoundTripper
}

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.next.RoundTrip(r)
}

func connect() (*xmlrpc.Client, error) {
	ca, err := os.ReadFile(os.Getenv("AIRFLOWRPC_CA"))
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(ca) {
		return nil, errors.New("AIRFLOWRPC_CA holds no PEM certificate")
	}
	config := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	if certFile := os.Getenv("AIRFLOWRPC_CERT"); certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, os.Getenv("AIRFLOWRPC_KEY"))
		if err != nil {
			return nil, err
		}
		config.Certificates = []tls.Certificate{cert}
	}
	var transport http.RoundTripper = &http.Transport{TLSClientConfig: config}
	if token := os.Getenv("AIRFLOWRPC_TOKEN"); token != "" {
		transport = bearer{token, transport}
	}
	return xmlrpc.NewClient(os.Getenv("AIRFLOWRPC_URL"), transport)
}

// faultCode reads the code of an XML-RPC fault.  kolo's Client hands a fault
// back as an rpc.ServerError holding the text of an xmlrpc.FaultError,
// "Fault(404): ...", not as the FaultError itself.
func faultCode(err error) (int, bool) {
	var fault xmlrpc.FaultError
	if errors.As(err, &fault) {
		return fault.Code, true
	}
	var text rpc.ServerError
	var code int
	if errors.As(err, &text) {
		if _, e := fmt.Sscanf(string(text), "Fault(%d):", &code); e == nil {
			return code, true
		}
	}
	return 0, false
}

func show(step string, fields map[string]interface{}) {
	fields["step"] = step
	if err := json.NewEncoder(os.Stdout).Encode(fields); err != nil {
		log.Fatal(err)
	}
}

func main() {
	runID := os.Getenv("AIRFLOWRPC_RUN_ID")
	if len(os.Args) > 1 {
		runID = os.Args[1]
	}
	if runID == "" {
		log.Fatal("usage: airflowrpc-example DAG_RUN_ID")
	}
	client, err := connect()
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	var me struct {
		Principal       string `xmlrpc:"principal"`
		AuthenticatedBy string `xmlrpc:"authenticated_by"`
	}
	if err := client.Call("whoami", nil, &me); err != nil {
		log.Fatal(err)
	}
	show("whoami", map[string]interface{}{"principal": me.Principal, "authenticated_by": me.AuthenticatedBy})

	// With a dag_run_id a trigger may be retried: the retry finds the run
	// (Created is false) instead of starting a second one.
	conf := map[string]interface{}{"who": "go"}
	options := map[string]interface{}{"dag_run_id": runID}
	for _, step := range []string{"trigger", "retry"} {
		var run Run
		if err := client.Call("trigger_dag", []interface{}{dagID, conf, options}, &run); err != nil {
			log.Fatal(err)
		}
		show(step, map[string]interface{}{"dag_run_id": run.DagRunID, "created": run.Created})
	}

	var run Run
	if err := client.Call("wait_dag_run", []interface{}{dagID, runID, 300}, &run); err != nil {
		log.Fatal(err)
	}
	show("wait", map[string]interface{}{"dag_run_id": run.DagRunID, "state": run.State, "finished": run.Finished})

	var taskLog string
	if err := client.Call("get_task_log", []interface{}{dagID, runID, taskID}, &taskLog); err != nil {
		log.Fatal(err)
	}
	show("log", map[string]interface{}{"task_id": taskID, "log": taskLog})

	err = client.Call("get_dag", "no_such_dag", nil)
	if code, ok := faultCode(err); ok {
		show("fault", map[string]interface{}{"method": "get_dag", "code": code, "message": err.Error()})
	} else {
		log.Fatalf("get_dag: expected a fault, got %v", err)
	}
}
