"""Services: orchestration of one feature each (usage, entitlements, reporting,
invoicing), with neither gRPC nor SQL. They call the pure domain and the ledger's
stores and return domain objects to the inbound edges (api/)."""
