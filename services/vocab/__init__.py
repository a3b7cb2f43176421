"""The vocab service: versioned WordPiece vocabularies, drift measurement and dynamic updates."""
