"""Audit database: SQLAlchemy models, migrations, repositories taking the caller's session."""
