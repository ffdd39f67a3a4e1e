"""Evergreen's Function App: wiring only. Each trigger family lives in its own blueprint."""

import azure.functions as func

from functions.ingest import bp as ingest
from functions.monitor import bp as monitor
from functions.promote import bp as promote
from functions.reconcile import bp as reconcile
from functions.retention import bp as retention
from functions.retrain import bp as retrain
from functions.status import bp as status
from shared.composition import load_configuration
from shared.telemetry import configure as configure_telemetry

# Tracing first (a no-op unless APPLICATIONINSIGHTS_CONNECTION_STRING or EVERGREEN_TRACE_FILE is set), then
# read and validate settings and the policy file, so a bad deployment fails at start-up with one error
# that lists every problem (instead of failing on the first event).
configure_telemetry()
load_configuration()

app = func.FunctionApp()
app.register_functions(ingest)
app.register_functions(retrain)
app.register_functions(promote)
app.register_functions(retention)
app.register_functions(reconcile)
app.register_functions(monitor)
app.register_functions(status)
