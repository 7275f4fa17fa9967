"""The kernel every service and the client use: stream names, the event catalogue, the bus
client, consumer groups, the worker and its runner, health and logs. Imports nothing above it."""
