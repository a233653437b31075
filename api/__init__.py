"""HTTP API of rlhf-service: routes stay thin, services own transactions."""
