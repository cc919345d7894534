"""The operator REST API: `create_app(pool, policy)` gives the FastAPI application."""
