"""What the Dagster instance (dagster.yaml) plugs in: the run coordinator and the run launchers."""
