"""Download scripts for NTNG's published assets (C4 subset, irreducible losses)."""
