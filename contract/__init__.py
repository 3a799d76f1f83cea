"""edgekit.contract: the one contract between host and device.

Both sides import it; it imports neither (Python 3.8, stdlib only):

- ``manifest``: the bundle's ``manifest.json`` (records, the one validator)
- ``result``: the agent's result JSON (records, the one validator)
- ``specs``: the preprocess and postprocess specs inside the manifest
- ``agent_command``: the agent's command line, built by the host, parsed by the agent
- ``agent_events``: the agent's progress events on stderr
- ``words``: every shared word list (tasks, precisions, layouts, backends)
- ``errors``: the one user-facing error type
"""
