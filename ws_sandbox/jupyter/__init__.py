"""A Jupyter Server compatible kernel endpoint over our sessions.

Jupyter clients (Open WebUI's code interpreter and its Run button among them) create a
kernel over REST and talk to it over a WebSocket in the Jupyter messaging protocol. Each
kernel is one of our sessions, with all its limits: this package is an adapter over the
session core, not a second engine.

Modules: :mod:`~ws_sandbox.jupyter.messages` (protocol 5.3 messages),
:mod:`~ws_sandbox.jupyter.specs` (kernelspecs), :mod:`~ws_sandbox.jupyter.kernel` (one
kernel: frames in, messages out), :mod:`~ws_sandbox.jupyter.kernels` (the registry),
:mod:`~ws_sandbox.jupyter.auth` (token, password and XSRF) and
:mod:`~ws_sandbox.jupyter.routes` (the Starlette routes).
"""
