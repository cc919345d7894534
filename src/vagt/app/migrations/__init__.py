"""Numbered SQL migrations, applied by vagt.app.db.migrate."""
