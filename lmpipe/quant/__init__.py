"""Low-bit weights: ternarization, BitLinear layers, packed formats and their loading."""
