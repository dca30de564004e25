"""SQLite storage: the database file, its schema and durability settings."""
