"""Pure dlt sources, one module per source kind. No Dagster imports here."""
