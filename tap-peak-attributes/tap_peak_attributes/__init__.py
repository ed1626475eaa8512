"""tap-peak-attributes."""
