"""The billing sync to Stripe: closed hours of the rollups reported as Stripe
Billing meter events (mapping: what is exported; plan: the pure rules;
exporter: the task inside `metering serve`)."""
