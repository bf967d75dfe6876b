"""Start-up: options, settings, wiring, the running services, signals and --workers."""
