"""The HTTP edge: the MeteringService over the Connect protocol and gRPC-Web, beside gRPC.

`app` is the ASGI application of the HTTP port, `edge` the handlers that call
the gRPC servicer's RPC bodies, `idempotency` the `Idempotency-Key` header and
`v1` the Connect code generated from proto/ (scripts/gen_proto.py). The server
that runs the application on the service's event loop is the runtime's
(metering.runtime.http).
"""
