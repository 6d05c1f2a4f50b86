"""`echo-sim` and its subcommands (run, sweep, recommend)."""
