"""The local stack as a pytest plugin: one fixture module per piece, plus per-test environment isolation.

Enable it with `pytest_plugins = ["devstack.testing"]` (the devstack's own tests and the product's
tests both do, in their conftest.py). Fixtures, all started on free ports with temporary state:

| fixture | module | what |
|---|---|---|
| `azurite` (session) | azurite.py | Azurite: Blob, Queue, Table (`AzuriteInfo`) |
| `aml` (session), `ml_client` | aml.py | the Azure ML emulator (`AmlInfo`) and a real MLClient on it |
| `eventgrid` (session) | eventgrid.py | the local Event Grid, delivering to a recording `Receiver` |
| `start_function_host`, `sample_host` (session) | host.py | local Functions hosts; the sample app in `sample_app/` |

`isolation.py` gives each test the environment of the stack it uses, whatever order tests run in.
`workloads.py` holds ready-made emulator workloads (a scoring model, a two-step pipeline).
"""

pytest_plugins = [
    "devstack.testing.azurite",
    "devstack.testing.aml",
    "devstack.testing.eventgrid",
    "devstack.testing.host",
    "devstack.testing.isolation",
]
