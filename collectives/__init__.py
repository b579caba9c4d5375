"""How ranks talk and how time is measured (backends, injectors, timing, workloads)."""
