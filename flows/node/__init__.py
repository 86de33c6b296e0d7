"""The running node: the embedded service and the Prefect deployments of server mode."""
