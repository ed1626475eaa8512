"""target-braze."""
