"""Model specs, the registry of known models, fetching from package registries, and backends."""
