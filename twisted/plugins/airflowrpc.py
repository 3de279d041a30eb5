# The twistd plugin: `twistd airflowrpc`.  Imports nothing of the gateway
# until the command is chosen.
from twisted.application.service import ServiceMaker

airflowrpc = ServiceMaker(
    "txairflowrpc",
    "txairflowrpc.service.tap",
    "XML-RPC gateway to Apache Airflow over mutual TLS",
    "airflowrpc",
)
