"""Numbered SQL migrations, applied by vagt.app.db.migrate.

There is no 0021: the number was kept for a change that needed no migration. Never use it:
the migrator applies every number it has not recorded, so a 0021 written now would run after
0022 on the databases that have 0022 and before it on new ones.
"""
