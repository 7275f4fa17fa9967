"""The notifier: POSTs matching events to the manifest's `notifications` webhooks, signed."""
