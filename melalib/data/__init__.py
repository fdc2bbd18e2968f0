"""Data: adapters to the canonical table, synthetic data, image cache, datasets."""
