"""Revisions (version vectors), hybrid logical clocks and changesets."""
