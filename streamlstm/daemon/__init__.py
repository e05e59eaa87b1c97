"""The long-running service: config, wiring of sources -> detector -> sinks, signals, snapshots, metrics."""
