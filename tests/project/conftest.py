"""The project layer: the manifest, what init renders from it, and validate's checks."""
