"""Configuration: settings from the environment and the operator's files
(catalog, access, webhook endpoints, Stripe mapping), each checked completely."""
