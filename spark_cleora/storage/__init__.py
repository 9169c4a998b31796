"""Where data lives: paths, reading inputs, writing outputs atomically and safely, catalog tables."""
