"""Synthesis: normals x masks x generator -> a dataset with exact annotations."""
