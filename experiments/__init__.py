"""What a user drives: specs, sweeps, runner, reports and the CLI."""
