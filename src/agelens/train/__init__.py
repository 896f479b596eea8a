"""Training heads on cached embeddings (`agelens train`, extra `[train]`)."""
