"""Storage: the tables, the async engine, the unit of work and the alembic migrations."""
