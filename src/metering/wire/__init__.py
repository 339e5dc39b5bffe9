"""Domain values in their wire form, shared by both edges: the inbound gRPC edge
(api/) and the outbound deliveries (delivery/). One place per wire format:
timestamps and money here, a notification's message and webhook body in
notifications.py; the rest of the request and response mapping is api/convert.py."""
