"""What a user drives: specs, sweeps, the sweep loop, reports and the CLI."""
