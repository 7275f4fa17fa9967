"""The project layer: the manifest, what is rendered from it (nginx.conf, docker-compose.yml),
the rollout record, host figures and the validate checks. Imports the kernel, never the client."""
