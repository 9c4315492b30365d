"""pcclog_server: the anyio runtime, HTTP endpoints, Docker source and CLI."""
