"""The notifier: signed webhook deliveries, retried, once per event id."""
