"""The long-running service: config, sources -> detector -> sinks, signals, snapshots, metrics."""
