"""The DuckDB store: index run folders, read them, group seed replicates."""
