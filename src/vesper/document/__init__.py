"""JSON documents: validation, equality and JSON Merge Patch."""
