"""The query language: expressions, sorting, cursors, projections and the index planner."""
