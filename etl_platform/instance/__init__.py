"""What the Dagster instance's dagster.yaml plugs in."""
