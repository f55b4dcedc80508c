"""Small pure helpers with no internal dependencies beyond core.errors."""
