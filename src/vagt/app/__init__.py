"""What ties the stages together: command line, configuration, database, metrics, lifecycle."""
