"""Connect code generated from proto/metering/v1 by scripts/gen_proto.py; do not edit."""
