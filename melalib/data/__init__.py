"""Data: the sources of the canonical table (`sources`, picked by `load`; CSVs read by
`csvread`), synthetic data, image cache, datasets."""
