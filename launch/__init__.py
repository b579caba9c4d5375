"""How processes start (launcher detection, bootstrap, commands, worker)."""
