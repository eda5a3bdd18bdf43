"""The server: start-up, listeners, workers, reload and stop, logs, systemd."""
