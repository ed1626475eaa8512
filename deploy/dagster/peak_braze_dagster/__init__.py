"""A Dagster code location running the Peak -> Braze pipeline, one job per Braze workspace."""
