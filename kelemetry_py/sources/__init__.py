"""Sources: everything that observes the cluster (audit webhook, audit log files, watchers, plugin sources)."""
