"""Command-line tools and helpers (model tables, attention maps, dense-prediction visualisation ...)."""
