"""The privdl version: one place, read by the package, reports, manifests and files."""

__version__ = "0.1.0"
